"""Question 2: one BPTT iteration (reset, rollout of H = 100 steps, backward, gradient clip, Adam step).

Every case trains the same 3-64-64-64-1 tanh MLP (the seed recipe's size) with loss ``-mean(reward)``:

- ``fused``: :func:`research.rollout.fused_rollout` on its torch loop, eager (``native=False``);
- ``fused-compiled``: the same with ``compile=True`` (forward and backward compiled in chunks);
- ``native``: the same through :mod:`research.native`'s C loop and its adjoint (CPU; what ``fused_rollout`` runs by
  default for this network);
- ``env.rollout``: our :class:`research.envs.PendulumEnv` (``validate=False``) through TorchRL's ``env.rollout``;
- ``torchrl-seed``: the seed recipe's loop (TorchRL's pendulum tutorial, described in ``docs/protocol.md``) on
  torchrl's built-in ``PendulumEnv`` with the tutorial's transforms, verbatim
  (``env.rollout(100, policy, tensordict=env.reset(env.gen_params(batch_size=[B])), auto_reset=False)``), with the
  seed's network (``nn.Sequential`` of ``Linear``/``Tanh``, explicit sizes instead of ``LazyLinear``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from research.envs import PendulumEnv, PendulumParams, sample_initial_state
from research.policies import make_actor, make_policy
from research.rollout import fused_rollout, initial_state

from .conftest import BPTT_HIDDEN, DEVICES, make_seed_env

BATCHES = [32, 1024]
HORIZON = 100
LR = 2e-3


def _update(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The seed recipe's update: backward, clip the gradient norm to 1, Adam step, zero the gradients."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


def _rounds(batch: int) -> int:
    return 10 if batch <= 32 else 5


def _measure(measure: Callable, smoke: bool, case: str, batch: int, device: str, iteration: Callable) -> float:
    horizon = 3 if smoke else HORIZON
    loss = measure(lambda: iteration(horizon), question="bptt", case=case, batch=batch, horizon=horizon,
                   device=device, env_steps=batch * horizon, rounds=_rounds(batch))
    assert torch.isfinite(loss)
    return loss


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mode", ["eager", "compiled", "native"])
def test_fused(measure, smoke, batch, device, mode):
    compile, use_native = mode == "compiled", mode == "native"
    if compile and smoke and batch != BATCHES[0]:
        pytest.skip("smoke run: one batch size covers the compiled path")
    if use_native:
        if device != "cpu":
            pytest.skip("the native loop runs on the CPU")
    torch.manual_seed(0)
    policy = make_policy(BPTT_HIDDEN, device=device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    gen = torch.Generator(device=device).manual_seed(0)
    params = PendulumParams.default((batch,), device=device)

    def iteration(horizon: int) -> torch.Tensor:
        th, thdot = sample_initial_state((batch,), gen, device)
        rewards = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, horizon, compile=compile,
                                native=use_native).rewards
        loss = -rewards.mean()
        _update(loss, policy, optimizer)
        return loss.detach()

    _measure(measure, smoke, {"eager": "fused", "compiled": "fused-compiled", "native": "native"}[mode], batch, device,
             iteration)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
def test_env_rollout(measure, smoke, batch, device):
    torch.manual_seed(0)
    policy = make_policy(BPTT_HIDDEN, device=device)
    actor = make_actor(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    env = PendulumEnv(device=device, seed=0, validate=False)

    def iteration(horizon: int) -> torch.Tensor:
        start = env.reset(env.gen_params(batch_size=[batch]), set_state=False)
        loss = -env.rollout(horizon, actor, tensordict=start, auto_reset=False)["next", "reward"].mean()
        _update(loss, policy, optimizer)
        return loss.detach()

    _measure(measure, smoke, "env.rollout", batch, device, iteration)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES)
def test_seed_loop(measure, smoke, batch, device):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    ).to(device)
    policy = TensorDictModule(net, in_keys=["observation"], out_keys=["action"])
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    env = make_seed_env(device)

    def iteration(horizon: int) -> torch.Tensor:
        init_td = env.reset(env.gen_params(batch_size=[batch], device=device), set_state=False)
        rollout = env.rollout(horizon, policy, tensordict=init_td, auto_reset=False)
        traj_return = rollout["next", "reward"].mean()
        _update(-traj_return, net, optimizer)
        return traj_return.detach()

    _measure(measure, smoke, "torchrl-seed", batch, device, iteration)
