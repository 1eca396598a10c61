"""The one training loop: every algorithm supplies its state and one step; the harness does everything else.

An algorithm is a class (one file under ``research/algos/``) built as ``Algorithm(config, run)`` from its config and
the :class:`RunContext` the harness prepared (device, dtype, seeded generator, budget, guards). It exposes

- ``policy``: the deterministic :class:`~research.policies.SquashedMLP` the shared evaluator scores and
  ``policy.pt`` stores;
- ``iterations``: how many times the harness calls :meth:`step` (at most);
- ``step(iteration) -> metrics``: one iteration (collect or roll out -> loss -> gradient -> update); it counts the
  environment steps it simulates with ``run.budget.add_steps`` and returns its ``train/...`` metrics as floats or
  0-d tensors (the harness moves them to the host in one transfer);
- optionally ``summary() -> dict`` (extra fields for ``summary.json``), ``close()``, and ``state_dict()`` /
  ``load_state_dict(state)`` (its whole training state, for checkpoints; below).

:func:`train` then owns what every method must do the same way (``docs/protocol.md``): seeding, the evaluation
schedule (once before training, then each time ``eval.interval_env_steps`` more environment steps were simulated,
and once at the end), the metric rows, the progress bar, the time limit, the final evaluation and the summary.
Wall-clock is training time: the evaluator's own seconds are kept apart (``eval_time_s``), and so are the seconds
spent writing checkpoints (``checkpoint_time_s``).

Checkpoints. With a run directory (a :class:`research.runs.RunWriter`) and ``config.checkpoint_every_s > 0``,
:func:`train` writes the run's whole state to ``<run dir>/checkpoint.pt`` after the first iteration that ends
``checkpoint_every_s`` seconds after the last checkpoint, and once more when training ends (before the final
evaluation): ``{"format", "algo", "config_hash", "iteration", "algo_state": algo.state_dict(), "harness": counters
(iteration, env steps, training and evaluation seconds, the evaluator's schedule and latest result, the skip guards'
counts), "rng": torch's global RNG (and CUDA's), the run's generator, "writer": the metric rows so far}``, through
``torch.save``, a temporary file, ``fsync`` and a rename (:func:`research.rundir.atomic_write_bytes`), so a kill at
any moment leaves the previous checkpoint or the new one. :func:`train` on a run directory that holds a checkpoint
written under the same config hash continues from it: the algorithm is built as usual, then its state, the harness's
counters, the RNG states and the rows are put back (``metrics.csv`` is rewritten to end at the checkpoint), and the
loop goes on from the next iteration. On CPU the resumed run's metrics, summary (but its wall-clock fields) and
policy equal an uninterrupted run's exactly (``tests/test_checkpoint.py``). A checkpoint written under another
config is ignored with a warning (the run starts again and overwrites it), the final checkpoint of a finished run
with a log line (``summary.json`` present: training it again means from scratch); one that cannot be read is an error
(:class:`CheckpointError`, one line naming the file: delete it to start again). An algorithm opts in by
``state_dict() -> dict`` and ``load_state_dict(dict)`` (:class:`Checkpointable` builds both from a list of attribute
names); one without them, or whose ``checkpoint_unsupported`` holds a reason (TorchRL's Collector, on Gymnasium or
with OU noise), is not checkpointed and restarts from zero.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from research.config import ConfigError, config_hash
from research.evaluation import evaluate_policy
from research.rollout import RolloutState, initial_state
from research.rundir import EVAL_PREFIX, atomic_write_bytes
from research.systems import System

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NonFiniteUpdateError(RuntimeError):
    """Raised after too many consecutive updates had a non-finite loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``; a :class:`ConfigError` naming the field when it is malformed or CUDA is absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device is {name!r} but no CUDA GPU is available here; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


class SkipGuard:
    """Clips the gradient and keeps non-finite updates away from the parameters, with one host sync per update.

    :meth:`clip` after ``backward()`` and before ``optimizer.step()``: it clips the global gradient norm to
    ``max_norm`` (0 = no clipping; the norm is still measured) and returns the norm before clipping, or ``None``
    when the loss or the gradient is NaN/inf (``clip_grad_norm_``'s total norm is then non-finite): the gradients
    are then dropped and the update must be skipped. After ``max_consecutive`` skips in a row it raises
    :class:`NonFiniteUpdateError`.
    """

    def __init__(self, max_consecutive: int, name: str = "update") -> None:
        self.max_consecutive = max_consecutive
        self.name = name
        self.skipped = 0
        self.consecutive = 0

    def clip(self, loss: Tensor, parameters: Iterable[nn.Parameter], max_norm: float = 0.0) -> float | None:
        parameters = [p for p in parameters if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm or math.inf) if parameters else loss.new_zeros(())
        norm_value, loss_value = torch.stack([norm.detach().to(loss.dtype), loss.detach()]).tolist()
        if math.isfinite(norm_value) and math.isfinite(loss_value):
            self.consecutive = 0
            return norm_value
        for p in parameters:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        log.warning("skipped %s: non-finite loss or gradient (%d in a row)", self.name, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdateError(
                f"{self.consecutive} consecutive {self.name}s had a non-finite loss or gradient "
                f"(max_consecutive_skips={self.max_consecutive}); the parameters were left untouched. "
                "Lower the learning rate, tighten gradient clipping or shorten the horizon."
            )
        return None


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, iterations: int,
                   final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's own scheduler for ``schedule``: ``constant``, ``linear`` or ``cosine`` decay to
    ``final_fraction`` of the initial learning rate over ``iterations`` scheduler steps."""
    if schedule == "cosine":
        eta_min = [group["lr"] * final_fraction for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations, eta_min=eta_min[0])
    if schedule == "linear":
        return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, final_fraction, total_iters=iterations)
    if schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=0)
    raise ConfigError(f"lr_schedule must be 'constant', 'linear' or 'cosine', got {schedule!r}")


def staggered_start(num_envs: int, episode_length: int, system: System, generator: torch.Generator,
                    device: torch.device, dtype: torch.dtype, params: Any = None) -> RolloutState:
    """Fresh states ``[num_envs, state_dim]`` of ``system`` whose episode step counters are spread evenly over
    ``[0, episode_length)``, so that every window of truncated BPTT or SHAC sees every phase of an episode."""
    state = system.initial_state((num_envs,), generator, device, dtype, params=params)
    offsets = torch.arange(num_envs, device=device) * episode_length // num_envs
    return initial_state(state, offsets.to(torch.int64))


def redraw_finished(params: Any, system: System, finished: Tensor, generator: torch.Generator) -> Any:
    """``params`` with the episodes flagged in ``finished [B]`` given fresh draws of ``system.ranges`` (a new
    episode, a new physical system); unchanged when the system draws nothing."""
    if not system.ranges:
        return params
    fresh = system.params(finished.shape, generator, finished.device, params[0].dtype)
    return type(params)(*(torch.where(finished, new, old) for new, old in zip(fresh, params, strict=True)))


class Budget:
    """Environment steps and wall-clock since the run started, counted the same way for every method.

    ``wall_time_s`` is training time: the seconds spent inside the shared evaluator (timed by :class:`Evaluator`)
    are kept apart in ``eval_time_s``, so a method that is evaluated more often, or whose policy network is larger,
    is not charged for it, and time-to-threshold does not depend on the evaluation interval.
    """

    def __init__(self, max_wall_time_s: float = 0.0) -> None:
        self.start = time.perf_counter()
        self.env_steps = 0
        self.eval_time_s = 0.0
        self.checkpoint_time_s = 0.0
        self.max_wall_time_s = max_wall_time_s

    def add_steps(self, n: int) -> None:
        self.env_steps += int(n)

    @property
    def wall_time_s(self) -> float:
        """Seconds since the run started, less the time spent evaluating and writing checkpoints."""
        return time.perf_counter() - self.start - self.eval_time_s - self.checkpoint_time_s

    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "wall_time_s": self.wall_time_s, "eval_time_s": self.eval_time_s,
                "checkpoint_time_s": self.checkpoint_time_s}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues the counts of a checkpoint: its training seconds go on from where they were."""
        self.env_steps = int(state["env_steps"])
        self.eval_time_s = float(state["eval_time_s"])
        self.checkpoint_time_s = float(state["checkpoint_time_s"])
        self.start = time.perf_counter() - float(state["wall_time_s"]) - self.eval_time_s - self.checkpoint_time_s

    def out_of_time(self) -> bool:
        return self.max_wall_time_s > 0 and self.wall_time_s >= self.max_wall_time_s


class Evaluator:
    """Runs the shared evaluator every ``interval_env_steps`` (and every ``interval_s`` training seconds, when set)
    and remembers the latest score.

    With a ``budget``, the time each evaluation takes is added to ``budget.eval_time_s`` (and so left out of its
    training wall-clock). ``physics`` is the system the policy is scored on (default: Pendulum-v1's own).
    """

    def __init__(self, eval_config: Any, device: torch.device, dtype: torch.dtype, budget: Budget | None = None,
                 physics: Any = None) -> None:
        self.config = eval_config
        self.device = device
        self.dtype = dtype
        self.budget = budget
        self.physics = physics
        self.next_at = 0
        self.next_at_s = 0.0
        self.evaluated_at: int | None = None
        self.latest: dict[str, float] | None = None

    def due(self, env_steps: int) -> bool:
        """Whether ``interval_env_steps`` more env steps, or (with ``interval_s`` and a budget) that many more
        training seconds, have passed since the last evaluation."""
        if env_steps >= self.next_at:
            return True
        interval_s = getattr(self.config, "interval_s", 0.0)
        return bool(interval_s) and self.budget is not None and self.budget.wall_time_s >= self.next_at_s

    def __call__(self, policy: nn.Module | Callable[[Tensor], Tensor], env_steps: int) -> dict[str, float]:
        start = time.perf_counter()
        self.latest = evaluate_policy(policy, self.config.episodes, self.config.seed, device=self.device,
                                      dtype=self.dtype, physics=self.physics, noise_seed=self.config.noise_seed,
                                      params_seed=self.config.params_seed)
        if self.budget is not None:
            self.budget.eval_time_s += time.perf_counter() - start
        interval = self.config.interval_env_steps
        self.next_at = (env_steps // interval + 1) * interval
        interval_s = getattr(self.config, "interval_s", 0.0)
        if interval_s and self.budget is not None:
            self.next_at_s = (self.budget.wall_time_s // interval_s + 1) * interval_s
        self.evaluated_at = env_steps
        return self.latest

    @staticmethod
    def as_metrics(result: Mapping[str, float]) -> dict[str, float]:
        return {f"{EVAL_PREFIX}{k}": v for k, v in result.items() if k != "episodes"}

    def state_dict(self) -> dict[str, Any]:
        return {"next_at": self.next_at, "next_at_s": self.next_at_s, "evaluated_at": self.evaluated_at,
                "latest": None if self.latest is None else dict(self.latest)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.next_at, self.evaluated_at = state["next_at"], state["evaluated_at"]
        self.next_at_s = float(state.get("next_at_s", 0.0))  # checkpoints from before interval_s have none
        self.latest = None if state["latest"] is None else dict(state["latest"])


class Writer(Protocol):
    """Where a run's rows and summary go: :class:`research.runs.RunWriter` (files) or :class:`NullWriter`."""

    def log(self, row: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def finish(self, policy: nn.Module, summary: Mapping[str, Any]) -> dict[str, Any]: ...


class NullWriter:
    """A writer that keeps nothing: :func:`train` without a run directory."""

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, policy: nn.Module, summary: Mapping[str, Any]) -> dict[str, Any]:
        return dict(summary)


@dataclass
class RunContext:
    """What the harness prepares for an algorithm before its first step."""

    config: Any
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    budget: Budget
    system: System
    """The training system and its physics variant (``env.system``, ``env.physics``, ``env.params``)."""

    @property
    def physics(self) -> System:
        """The training system (its older name, from when every system was a pendulum)."""
        return self.system
    guards: list[SkipGuard] = field(default_factory=list)

    def guard(self, name: str) -> SkipGuard:
        """A :class:`SkipGuard` for one kind of update; the harness logs the skips of all of them."""
        guard = SkipGuard(self.config.max_consecutive_skips, name)
        self.guards.append(guard)
        return guard

    @property
    def skipped_updates(self) -> int:
        return sum(g.skipped for g in self.guards)


class Algorithm(Protocol):
    """What :func:`train` needs from an algorithm (see the module docstring)."""

    policy: nn.Module
    iterations: int

    def __init__(self, config: Any, run: RunContext) -> None: ...
    def step(self, iteration: int) -> Mapping[str, Any]: ...


CHECKPOINT_FORMAT = 1
"""Version of the layout of ``checkpoint.pt``; a file of another version is refused."""


class CheckpointError(ConfigError):
    """A ``checkpoint.pt`` that cannot be read or does not fit the run (one line, naming the file)."""


def save_state(value: Any) -> Any:
    """What a checkpoint keeps of one attribute: ``state_dict()`` of a module, optimizer, scheduler (or anything with
    one), a generator's state, a detached copy of a tensor, lists and tuples (named tuples too) item by item, plain
    Python values as they are."""
    if hasattr(value, "state_dict"):
        return value.state_dict()
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return [save_state(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}; give it state_dict()/load_state_dict()")


def load_state(current: Any, saved: Any) -> Any:
    """The attribute ``current`` with the state :func:`save_state` kept put back: loaded in place where it has
    ``load_state_dict`` (or is a generator), a tensor on ``current``'s device, tuples rebuilt with their type."""
    if hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
        return current
    if isinstance(current, torch.Generator):
        current.set_state(saved)
        return current
    if isinstance(current, Tensor):
        return saved.to(device=current.device, dtype=current.dtype).clone()
    if isinstance(current, (list, tuple)):
        if len(current) != len(saved):
            raise CheckpointError(f"checkpoint holds {len(saved)} items where the run has {len(current)}")
        items = [load_state(c, v) for c, v in zip(current, saved, strict=True)]
        if isinstance(current, list):
            return items
        return type(current)(*items) if hasattr(current, "_fields") else type(current)(items)
    return saved


class Checkpointable:
    """``state_dict()`` and ``load_state_dict()`` of an algorithm from the attribute names in ``STATE`` (networks,
    optimizers, schedulers, generators, tensors, tuples of them, counters; see :func:`save_state`). A subclass
    extends ``STATE`` or overrides both methods for state of its own."""

    STATE: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        return {name: save_state(getattr(self, name)) for name in self.STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [name for name in self.STATE if name not in state]
        if missing:
            raise CheckpointError(f"checkpoint of {type(self).__name__} lacks {missing}")
        for name in self.STATE:
            setattr(self, name, load_state(getattr(self, name), state[name]))


def rng_state(run: RunContext) -> dict[str, Any]:
    """torch's global RNG (and every CUDA device's, once CUDA is in use) and the run's own generator."""
    state = {"torch": torch.get_rng_state(), "generator": run.generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(run: RunContext, state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    run.generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The contents of ``checkpoint.pt`` (tensors on the CPU); :class:`CheckpointError` (one line naming the file)
    when it cannot be read or is not a checkpoint of this version. ``mmap`` reads tensors only when touched."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, not a torch file: all the same to the caller
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {reason}); delete it to "
                              "start the run from scratch") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a checkpoint of format {CHECKPOINT_FORMAT} (found {found!r}); delete it "
                              "to start the run from scratch")
    return data


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """``algo``, ``config_hash``, ``iteration`` and ``done`` of a readable checkpoint at ``path``; ``None`` when there
    is none or it cannot be read (the experiment runner's test before it resumes a run in place)."""
    if not Path(path).is_file():
        return None
    try:
        data = read_checkpoint(path, mmap=True)
    except CheckpointError:
        return None
    return {key: data.get(key) for key in ("algo", "config_hash", "iteration", "done")}


def _checkpoint_path(config: Any, writer: Any, algo: Any, name: str) -> Path | None:
    """Where this run checkpoints, or ``None`` (no run directory, ``checkpoint_every_s = 0``, an algorithm that
    cannot)."""
    path = getattr(writer, "checkpoint_path", None)
    if path is None or not getattr(config, "checkpoint_every_s", 0.0):
        return None
    reason = getattr(algo, "checkpoint_unsupported", "") or (
        "" if hasattr(algo, "state_dict") and hasattr(algo, "load_state_dict") else "it has no state_dict()")
    if reason:
        log.info("%s is not checkpointed (%s): a stopped run starts again from zero", name or "this run", reason)
        return None
    return Path(path)


def _to_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with every tensor replaced by a float, in a single device-to-host transfer."""
    keys = [k for k, v in metrics.items() if isinstance(v, Tensor)]
    out = dict(metrics)
    if keys:
        values = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in keys]).tolist()
        out.update(zip(keys, values, strict=True))
    return out


def _postfix(row: Mapping[str, Any], evaluation: Mapping[str, float] | None) -> dict[str, str]:
    out = {}
    for key in ("train/episode_return", "train/return"):
        value = row.get(key)
        if isinstance(value, float) and math.isfinite(value):
            out["train"] = f"{value:.1f}"
            break
    if evaluation is not None:
        out["eval"] = f"{evaluation['return_mean']:.1f}"
    return out


def set_threads(count: int) -> Callable[[], None]:
    """Sets torch's CPU threads to ``count`` (0: unchanged); returns the function that restores them."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    return lambda: torch.set_num_threads(previous)


def prepare(config: Any) -> RunContext:
    """Device, dtype, seeds (torch's global RNG and a generator of the run's own) and the budget of a run."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return RunContext(config, device, DTYPES[config.dtype], generator, Budget(config.max_wall_time_s),
                      config.env.to_physics())


def train(config: Any, algorithm: Callable[[Any, RunContext], Algorithm], writer: Writer | None = None,
          quiet: bool = False, name: str = "") -> dict[str, Any]:
    """Trains ``algorithm`` under ``config``; returns the summary (and writes the run files through ``writer``).

    Args:
        config: the algorithm's config (a :class:`research.config.RunConfig`).
        algorithm: the algorithm's class (or any ``(config, run) -> Algorithm`` factory).
        writer: a :class:`research.runs.RunWriter`; default a :class:`NullWriter`.
        quiet: no progress bar.
        name: the algorithm's name in the summary and on the progress bar.
    """
    writer = writer if writer is not None else NullWriter()
    restore_threads = set_threads(getattr(config, "num_threads", 0))
    try:
        run = prepare(config)
        eval_physics = config.eval.to_physics(config.env)
        algo = algorithm(config, run)
        budget = run.budget
        evaluator = Evaluator(config.eval, run.device, run.dtype, budget, eval_physics)
        checkpoint_path = _checkpoint_path(config, writer, algo, name)
        run_hash = config_hash(config)
        last_checkpoint = time.perf_counter()
        resumes: list[int] = []

        def evaluate(iteration: int) -> dict[str, float]:
            result = evaluator(algo.policy, budget.env_steps)
            writer.log({"iteration": iteration, "env_steps": budget.env_steps, "wall_time_s": budget.wall_time_s,
                        "eval_time_s": budget.eval_time_s, **Evaluator.as_metrics(result)})
            writer.flush()
            return result

        def checkpoint(iteration: int, done: bool) -> None:
            nonlocal last_checkpoint
            began = time.perf_counter()
            data = {"format": CHECKPOINT_FORMAT, "algo": name, "config_hash": run_hash, "iteration": iteration,
                    "done": done, "git_commit": getattr(writer, "git_commit", None), "algo_state": algo.state_dict(),
                    "harness": {"budget": budget.state_dict(), "evaluator": evaluator.state_dict(),
                                "guards": [[g.skipped, g.consecutive] for g in run.guards], "resumes": resumes},
                    "rng": rng_state(run), "writer": writer.state_dict()}
            buffer = io.BytesIO()
            torch.save(data, buffer)
            atomic_write_bytes(checkpoint_path, buffer.getbuffer(), fsync=True)
            last_checkpoint = time.perf_counter()
            budget.checkpoint_time_s += last_checkpoint - began

        resumed = None
        if checkpoint_path is not None and checkpoint_path.is_file():
            if getattr(writer, "finished_before", False):
                log.info("%s: the run had finished: training it again from scratch (not from %s)", name or "run",
                         checkpoint_path)
            else:
                resumed = read_checkpoint(checkpoint_path)
                if resumed["config_hash"] != run_hash or resumed["algo"] != name:
                    log.warning("%s was written by another run (%s, config hash %s; this run: %s, %s): ignored, "
                                "starting from scratch (it will be overwritten)", checkpoint_path,
                                resumed["algo"] or "?", resumed["config_hash"], name or "?", run_hash)
                    resumed = None
                elif resumed.get("git_commit") != getattr(writer, "git_commit", None):
                    log.warning("%s was written at commit %s; resuming it with the code at %s", checkpoint_path,
                                resumed.get("git_commit"), getattr(writer, "git_commit", None))
        if resumed is None:
            evaluation = evaluate(0)
            start, done = 0, False
        else:
            start, done = int(resumed["iteration"]), bool(resumed["done"])
            state = resumed["harness"]
            if len(state["guards"]) != len(run.guards):
                raise CheckpointError(f"{checkpoint_path}: holds {len(state['guards'])} skip guards, the run has "
                                      f"{len(run.guards)}; delete it to start the run from scratch")
            algo.load_state_dict(resumed["algo_state"])
            budget.load_state_dict(state["budget"])
            evaluator.load_state_dict(state["evaluator"])
            for guard, (skipped, consecutive) in zip(run.guards, state["guards"], strict=True):
                guard.skipped, guard.consecutive = skipped, consecutive
            writer.load_state_dict(resumed["writer"])
            set_rng_state(run, resumed["rng"])
            resumes = [*state["resumes"], start]
            evaluation = evaluator.latest
            log.info("%s: resuming from %s after iteration %d (%d env steps, %.1f s of training)", name or "run",
                     checkpoint_path, start, budget.env_steps, budget.wall_time_s)
        iteration = start
        bar = tqdm(total=algo.iterations, initial=start, disable=quiet, unit="it", desc=name or None,
                   dynamic_ncols=True, leave=False)
        try:
            for iteration in range(start + 1, 0 if done else algo.iterations + 1):
                steps_before = budget.env_steps
                metrics = _to_host(algo.step(iteration))
                row = {"iteration": iteration, "env_steps": budget.env_steps, "wall_time_s": budget.wall_time_s,
                       **metrics, "train/skipped_updates": run.skipped_updates}
                writer.log(row)
                if evaluator.due(budget.env_steps):
                    evaluation = evaluate(iteration)
                bar.update(1)
                bar.set_postfix(_postfix(row, evaluation))
                if budget.out_of_time():
                    log.info("stopping after %d iterations: max_wall_time_s=%s reached", iteration,
                             config.max_wall_time_s)
                    break
                cap = getattr(config, "max_env_steps", 0)
                if cap and budget.env_steps + (budget.env_steps - steps_before) > cap:
                    log.info("stopping after %d iterations (%d env steps): another would pass max_env_steps=%d",
                             iteration, budget.env_steps, cap)
                    break
                if checkpoint_path is not None and time.perf_counter() - last_checkpoint >= config.checkpoint_every_s:
                    checkpoint(iteration, done=False)
            if checkpoint_path is not None and not done:
                checkpoint(iteration, done=True)  # a kill during the final evaluation loses no training
        finally:
            bar.close()
            close = getattr(algo, "close", None)
            if close is not None:
                close()
        if evaluator.evaluated_at != budget.env_steps:
            evaluation = evaluate(iteration)
        extra = getattr(algo, "summary", dict)()
        summary = {"algo": name, "seed": config.seed, "env_steps": budget.env_steps,
                   "wall_time_s": budget.wall_time_s, "eval": evaluation, "eval_time_s": budget.eval_time_s,
                   "iterations": iteration, "skipped_updates": run.skipped_updates, **extra}
        if checkpoint_path is not None:
            summary["checkpoint_time_s"] = budget.checkpoint_time_s
        if resumes:
            summary["resumed_after"] = resumes
        return writer.finish(algo.policy, summary)
    finally:
        restore_threads()
