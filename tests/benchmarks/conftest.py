"""Shared pieces of the speed benchmarks: the timing fixture, thread settings, and the peers built as the seed built them.

``make bench`` runs these with pytest-benchmark and writes ``results/bench/`` (see ``scripts/bench_report.py``);
``make test`` runs each case once with ``--benchmark-disable`` and tiny horizons, so the code paths never rot.

Every case records in ``extra_info``: ``question`` (simulate, bptt, ddpg), ``case`` (the implementation), ``batch``,
``horizon``, ``device`` (and on CUDA ``device_name``, the GPU's), ``threads``, ``env_steps`` per call (or ``updates`` for DDPG's gradient steps) and, after
timing, ``env_steps_per_s`` (or ``updates_per_s``) from the median round (the machine is shared: the median shrugs
off the rounds another job slowed down, the mean does not). Groups are one question at one batch size on one device
and thread count, so pytest-benchmark's own comparison table lines up the peers of each question.

``BENCH_THREADS`` sets torch's CPU threads for every case (default: torch's own default, all cores); ``make bench``
runs the suite once with all cores and once with one thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.data import Bounded
from torchrl.envs import CatTensors, Transform, TransformedEnv, UnsqueezeTransform
from torchrl.envs import PendulumEnv as TorchRLPendulumEnv
from torchrl.envs.transforms.transforms import _apply_to_composite

#: The seed recipe's policy network (docs/protocol.md) for the BPTT question: three hidden tanh layers of 64.
BPTT_HIDDEN = (64, 64, 64)
#: The project's default policy network (3-64-64-1), used for the simulation question.
SIM_HIDDEN = (64, 64)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """Records ``code_dirty``: uncommitted changes outside ``results/`` (pytest-benchmark's own ``dirty`` flag also
    counts the benchmark's outputs, which ``make bench`` itself rewrites under ``results/bench/``)."""
    import subprocess

    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results"],
                                capture_output=True, text=True, check=True, cwd=config.rootpath).stdout
    except (OSError, subprocess.CalledProcessError):
        return
    machine_info["code_dirty"] = bool(status.strip())


def bench_threads() -> int:
    """Torch CPU threads for the benchmarks: ``BENCH_THREADS`` or torch's default."""
    return int(os.environ.get("BENCH_THREADS", "0")) or torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads():
    """Every case runs with the same number of CPU threads (restored afterwards for the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(bench_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture
def smoke(benchmark) -> bool:
    """``True`` under ``--benchmark-disable`` (``make test``): cases then run once on tiny horizons."""
    return benchmark.disabled


@pytest.fixture
def measure(benchmark) -> Callable[..., Any]:
    """``measure(fn, question=, case=, batch=, horizon=, device=, env_steps= | updates=, rounds=)`` times ``fn``.

    ``benchmark.pedantic`` with one warm-up round (compilation, caches, allocator) and ``rounds`` timed rounds of
    one call each; on CUDA the timed function synchronises before it returns. Returns ``fn``'s last result.
    """

    def run(fn: Callable[[], Any], *, question: str, case: str, batch: int, horizon: int, device: str,
            env_steps: int = 0, updates: int = 0, rounds: int = 5, warmup_rounds: int = 1) -> Any:
        cuda = torch.device(device).type == "cuda"

        def timed() -> Any:
            out = fn()
            if cuda:
                torch.cuda.synchronize()
            return out

        threads = torch.get_num_threads()
        benchmark.group = f"{question} B={batch} {device} threads={threads}"
        benchmark.extra_info.update(question=question, case=case, batch=batch, horizon=horizon, device=device,
                                    threads=threads, env_steps=env_steps, updates=updates)
        if cuda:
            benchmark.extra_info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        result = benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        if not benchmark.disabled:
            median = benchmark.stats.stats.median
            if env_steps:
                benchmark.extra_info["env_steps_per_s"] = env_steps / median
            if updates:
                benchmark.extra_info["updates_per_s"] = updates / median
        return result

    return run


# ---------------------------------------------------------------------------------------------------------------- peers
class TrigTransform(Transform):
    """The seed recipe's ``SinTransform`` / ``CosTransform`` (``fn`` is ``torch.sin`` or ``torch.cos``), on current
    torchrl names."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_keys: list, out_keys: list) -> None:
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.fn = fn

    def _apply_transform(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fn(obs)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    @_apply_to_composite
    def transform_observation_spec(self, observation_spec):
        return Bounded(low=-1, high=1, shape=observation_spec.shape, dtype=observation_spec.dtype,
                       device=observation_spec.device)


def make_seed_env(device: str = "cpu", seed: int = 0) -> TransformedEnv:
    """torchrl's built-in ``PendulumEnv`` with the seed recipe's transforms: ``observation = [sin, cos, thdot]``."""
    env = TransformedEnv(
        TorchRLPendulumEnv(device=device),
        UnsqueezeTransform(dim=-1, in_keys=["th", "thdot"], in_keys_inv=["th", "thdot"]),
    )
    env.append_transform(TrigTransform(torch.sin, in_keys=["th"], out_keys=["sin"]))
    env.append_transform(TrigTransform(torch.cos, in_keys=["th"], out_keys=["cos"]))
    env.append_transform(CatTensors(in_keys=["sin", "cos", "thdot"], dim=-1, out_key="observation", del_keys=False))
    env.set_seed(seed)
    return env
