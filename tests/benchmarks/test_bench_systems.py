"""Every registered system (:data:`research.systems.SYSTEMS`: the pendulum, the cart-pole, the acrobot, ...): its
simulation throughput and one BPTT iteration, so a new system gets its speed measured by ``make bench``.

Questions ``simulate-<system>`` and ``bptt-<system>`` (one group per system and batch size, so
``scripts/bench_report.py`` compares each system with its own peers: gymnax's ``CartPole-v1`` and ``Acrobot-v1`` in
``test_bench_peers.py``). Cases, for each system at its default physics:

- ``simulate-<system>`` / ``fused``: :func:`research.rollout.simulate` (no gradients) of a ``SquashedMLP``
  ``obs_dim``-64-64-``action_dim`` tanh policy squashed to the system's action bound, from the system's reset
  distribution, B = 64 and 4096, the system's evaluation horizon (200 steps), torch loop (``native=False``);
  ``native``: the same through :mod:`research.native`'s C loop, for systems it implements (the pendulum);
- ``bptt-<system>`` / ``fused`` (and ``native``): one BPTT iteration, B = 32 and 1024: reset states, a
  :func:`research.rollout.fused_rollout` of H = 64 steps, ``-mean(reward)`` backward, gradient clip, Adam step, on
  the seed recipe's ``obs_dim``-64-64-64-``action_dim`` network.

Under ``--benchmark-disable`` (``make test``) each case runs once on 2-3 steps, at the smaller batch size only.
"""

from __future__ import annotations

import pytest
import torch

from research.policies import make_policy
from research.rollout import fused_rollout, initial_state, simulate
from research.systems import SYSTEMS, System, make

from .conftest import BPTT_HIDDEN, DEVICES, SIM_HIDDEN

SIM_BATCHES = [64, 4096]
BPTT_BATCHES = [32, 1024]
BPTT_HORIZON = 64
LR = 2e-3
CASES = {"eager": "fused", "native": "native"}
#: (system, mode): every system on the torch loop, and through the C loop those that research.native implements.
SYSTEM_MODES = [pytest.param(name, mode, id=f"{name}-{mode}") for name, cls in SYSTEMS.items()
                for mode in ("eager", "native") if mode == "eager" or cls.native]


def _setup(name: str, mode: str, device: str, hidden: tuple[int, ...], smoke: bool, large: bool
           ) -> tuple[System, torch.nn.Module]:
    if smoke and large:
        pytest.skip("smoke run: the smaller batch covers the code path")
    if mode == "native" and device != "cpu":
        pytest.skip("research.native runs on the CPU")
    system = make(name)
    torch.manual_seed(0)
    policy = make_policy(hidden, max_torque=system.max_action, device=device, obs_dim=system.obs_dim,
                         act_dim=system.action_dim)
    return system, policy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", SIM_BATCHES)
@pytest.mark.parametrize(("name", "mode"), SYSTEM_MODES)
def test_simulate(measure, smoke, name, mode, batch, device):
    system, policy = _setup(name, mode, device, SIM_HIDDEN, smoke, batch > SIM_BATCHES[0])
    horizon = 2 if smoke else system.horizon
    gen = torch.Generator(device=device).manual_seed(0)
    state = system.initial_state((batch,), generator=gen, device=device)
    params = system.params((batch,), device=device)
    native = mode == "native"
    result = measure(lambda: simulate(policy, state, params, horizon, system=system, native=native),
                     question=f"simulate-{name}", case=CASES[mode], batch=batch, horizon=horizon, device=device,
                     env_steps=batch * horizon, rounds=3 if batch * horizon >= 1_000_000 else 10)
    assert result.returns.shape == (batch,) and torch.isfinite(result.returns).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BPTT_BATCHES)
@pytest.mark.parametrize(("name", "mode"), SYSTEM_MODES)
def test_bptt(measure, smoke, name, mode, batch, device):
    system, policy = _setup(name, mode, device, BPTT_HIDDEN, smoke, batch > BPTT_BATCHES[0])
    horizon = 3 if smoke else BPTT_HORIZON
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    gen = torch.Generator(device=device).manual_seed(0)
    params = system.params((batch,), device=device)
    native = mode == "native"

    def iteration() -> torch.Tensor:
        start = initial_state(system.initial_state((batch,), generator=gen, device=device))
        loss = -fused_rollout(policy, start, params, horizon, system=system, native=native).rewards.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    loss = measure(iteration, question=f"bptt-{name}", case=CASES[mode], batch=batch, horizon=horizon, device=device,
                   env_steps=batch * horizon, rounds=10 if batch <= 32 else 5)
    assert torch.isfinite(loss)
