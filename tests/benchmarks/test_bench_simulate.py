"""Question 1: simulation without gradients, the MLP policy in the loop, against the peers.

Cases, each from the same start states with the same policy (``SquashedMLP`` 3-64-64-1):

- ``fused``: :func:`research.rollout.simulate` on its torch loop (eager, ``native=False``);
- ``fused-compiled``: the same in ``torch.compile``-d chunks (CUDA graphs on CUDA);
- ``native``: the same through :mod:`research.native`'s C loop (CPU, batches up to 4096; what ``simulate`` runs by
  default for this network);
- ``env.rollout``: our :class:`research.envs.PendulumEnv` (``validate=False``) through TorchRL's ``env.rollout``;
- ``torchrl``: torchrl's built-in ``PendulumEnv`` with the seed recipe's transforms (TorchRL's pendulum tutorial,
  ``docs/protocol.md``) through ``env.rollout``;
- ``gymnasium``: Gymnasium's vectorised Pendulum-v1 (``SyncVectorEnv``; Pendulum has no native vector env), numpy
  stepping with the torch policy called on each batch of observations. Capped at batch 4096: at 65536 one round
  would take minutes.
"""

from __future__ import annotations

import pytest
import torch

from research.envs import PendulumEnv, PendulumParams, sample_initial_state
from research.policies import make_actor, make_policy
from research.rollout import simulate

from .conftest import DEVICES, SIM_HIDDEN, make_seed_env

BATCHES = [1, 64, 4096, 65536]
HORIZON = 100
#: Gymnasium steps ~0.1M env-steps/s in numpy: larger batches would take minutes per round.
GYMNASIUM_MAX_BATCH = 4096


def _rounds(batch: int, horizon: int) -> int:
    return 3 if batch * horizon >= 1_000_000 else 10


def _policy(device: str):
    torch.manual_seed(0)
    return make_policy(SIM_HIDDEN, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mode", ["eager", "compiled", "native"])
def test_fused(measure, smoke, batch, device, mode):
    compile = mode == "compiled"
    if compile and smoke and batch not in (1, 4096):
        pytest.skip("smoke run: the compiled path is exercised at batch 1 (module) and 4096 (oneDNN kernels)")
    if mode == "native":
        if device != "cpu" or batch > 4096:
            pytest.skip("the native loop runs on the CPU; above 4096 rows it is not measured")
    horizon = 2 if smoke else HORIZON
    policy = _policy(device)
    gen = torch.Generator(device=device).manual_seed(0)
    th, thdot = sample_initial_state((batch,), gen, device)
    params = PendulumParams.default((batch,), device=device)
    use_native = mode == "native"
    case = {"eager": "fused", "compiled": "fused-compiled", "native": "native"}[mode]
    result = measure(lambda: simulate(policy, torch.stack((th, thdot), -1), params, horizon, compile=compile, native=use_native),
                     question="simulate", case=case, batch=batch,
                     horizon=horizon, device=device, env_steps=batch * horizon, rounds=_rounds(batch, horizon))
    assert result.returns.shape == (batch,) and torch.isfinite(result.returns).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
def test_env_rollout(measure, smoke, batch, device):
    horizon = 2 if smoke else HORIZON
    actor = make_actor(_policy(device))
    env = PendulumEnv(device=device, seed=0, validate=False)
    start = env.reset(env.gen_params(batch_size=[batch]), set_state=False)

    def run():
        with torch.no_grad():
            return env.rollout(horizon, actor, tensordict=start, auto_reset=False)

    rollout = measure(run, question="simulate", case="env.rollout", batch=batch, horizon=horizon, device=device,
                      env_steps=batch * horizon, rounds=_rounds(batch, horizon))
    assert rollout["next", "reward"].shape == (batch, horizon, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
def test_torchrl_pendulum(measure, smoke, batch, device):
    horizon = 2 if smoke else HORIZON
    actor = make_actor(_policy(device))
    env = make_seed_env(device)
    start = env.reset(env.gen_params(batch_size=[batch], device=device), set_state=False)

    def run():
        with torch.no_grad():
            return env.rollout(horizon, actor, tensordict=start, auto_reset=False)

    rollout = measure(run, question="simulate", case="torchrl", batch=batch, horizon=horizon, device=device,
                      env_steps=batch * horizon, rounds=_rounds(batch, horizon))
    assert rollout["next", "reward"].shape == (batch, horizon, 1)


@pytest.mark.parametrize("batch", [b for b in BATCHES if b <= GYMNASIUM_MAX_BATCH])
def test_gymnasium_vector(measure, smoke, batch):
    gymnasium = pytest.importorskip("gymnasium")
    if smoke and batch > 64:
        pytest.skip("smoke run: creating thousands of Gymnasium envs is the slow part, batch 64 covers the code")
    horizon = 2 if smoke else HORIZON
    policy = _policy("cpu")
    envs = gymnasium.make_vec("Pendulum-v1", num_envs=batch, vectorization_mode="sync")
    observation, _ = envs.reset(seed=0)
    state = {"observation": observation}

    def run():
        obs = state["observation"]
        with torch.no_grad():
            for _ in range(horizon):
                action = policy(torch.from_numpy(obs)).numpy()
                obs, reward, terminated, truncated, _ = envs.step(action)
        state["observation"] = obs
        return reward

    try:
        reward = measure(run, question="simulate", case="gymnasium", batch=batch, horizon=horizon, device="cpu",
                         env_steps=batch * horizon, rounds=2 if batch * horizon >= 100_000 else 5)
    finally:
        envs.close()
    assert reward.shape == (batch,)
