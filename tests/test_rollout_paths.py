"""The rollout paths agree: eager ``fused_rollout``, ``fused_rollout(compile=True)``, ``simulate`` and
``simulate(compile=True)`` give the same returns (and the two ``fused_rollout`` paths the same policy gradients), on
Gymnasium's physics and on a knob-heavy variant (the wall preset with damping, smooth friction and torque noise on top,
one fixed noise block for every path).

The compiled cases are ``slow`` (a cold ``torch.compile`` of a chunk takes tens of seconds on a 2-core CPU); their
shapes are tiny and shared (8 pendulums, 12 steps: one full chunk of :data:`research.rollout.COMPILE_CHUNK` steps
and one short one, so chunk boundaries are crossed) to keep the compiles few.
"""

from __future__ import annotations

import pytest
import torch

import research.linear as linear_module
import research.native as native_module
from research.envs.physics import is_upright
from research.envs.presets import Physics, get_physics
from research.evaluation import (
    SUCCESS_ANGLE,
    SUCCESS_SPEED,
    evaluate_policy,
    evaluation_noise,
    evaluation_params,
    evaluation_states,
    summarize_returns,
)
from research.policies import make_policy
from research.rollout import COMPILE_CHUNK, fused_rollout, initial_state, simulate

BATCH = 8


@pytest.fixture(autouse=True)
def _torch_paths_only(monkeypatch):
    """These tests are about the torch paths; research.native's C loop has its own (tests/test_native.py)."""
    monkeypatch.setattr(native_module, "ENABLED", False)

HORIZON = COMPILE_CHUNK + 2
#: Every optional term at once: hard wall at pi/4 (restitution 0.5), damping, smooth Coulomb friction, torque noise.
KNOBS = {"damping": 0.05, "friction": 0.2, "friction_width": 0.1, "torque_noise": 0.3}
PHYSICS = {"default": lambda: get_physics("default"), "knobs": lambda: get_physics("wall", overrides=KNOBS)}


def _case(physics: Physics, batch: int = BATCH, horizon: int = HORIZON, seed: int = 0):
    """A policy, start states (in the wall's range with a wall), parameters and a fixed noise block (or None)."""
    torch.manual_seed(seed)
    policy = make_policy([8])
    gen = torch.Generator().manual_seed(seed + 1)
    params = physics.params((batch,), generator=gen)
    th, thdot = physics.initial_angles((batch,), generator=gen)
    noise = torch.randn((batch, horizon), generator=gen) if physics.features.noise else None
    return policy, th, thdot, params, noise


def _grads(returns: torch.Tensor, policy: torch.nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(returns.sum(), list(policy.parameters())))


def _assert_grads_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    """Float32 gradients of a 12-step return: equal to 1e-4 of the largest gradient entry."""
    scale = max(g.abs().max().item() for g in expected)
    assert scale > 0
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


# ---------------------------------------------------------------------------------------------------- eager paths
@pytest.mark.parametrize("name", list(PHYSICS))
def test_simulate_agrees_with_the_eager_rollout(name):
    physics = PHYSICS[name]()
    policy, th, thdot, params, noise = _case(physics)
    eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, HORIZON, features=physics.features, noise=noise)
    assert eager.rewards.shape == (BATCH, HORIZON)
    sim = simulate(policy, torch.stack((th, thdot), -1), params, HORIZON, features=physics.features, noise=noise)
    torch.testing.assert_close(sim.returns, eager.rewards.sum(-1).detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(sim.state[..., 0], eager.state.state[..., 0].detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sim.state[..., 1], eager.state.state[..., 1].detach(), rtol=1e-6, atol=1e-6)
    # features read from the parameters (one host sync) and tiles smaller than the batch change nothing
    tiled = simulate(policy, torch.stack((th, thdot), -1), params, HORIZON, noise=noise, tile=3)
    torch.testing.assert_close(tiled.returns, sim.returns, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list(PHYSICS))
def test_simulate_through_onednn_agrees_with_the_eager_rollout_on_aten(name, monkeypatch):
    """The policy's oneDNN kernels (:mod:`research.linear`, forced here on 8 rows) against the eager rollout with
    every product on ATen: the same returns and final states to float tolerance."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    physics = PHYSICS[name]()
    policy, th, thdot, params, noise = _case(physics)
    monkeypatch.setattr(linear_module, "ENABLED", False)
    eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, HORIZON, features=physics.features, noise=noise)
    monkeypatch.setattr(linear_module, "ENABLED", True)
    monkeypatch.setattr(linear_module, "MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "MIN_ROWS_TANH", 1)
    calls = []
    onednn_linear = linear_module.onednn_linear
    monkeypatch.setattr(linear_module, "onednn_linear", lambda *args: calls.append(1) or onednn_linear(*args))
    sim = simulate(policy, torch.stack((th, thdot), -1), params, HORIZON, features=physics.features, noise=noise)
    assert len(calls) == HORIZON  # the hidden layer of every step ran in oneDNN (the 8 -> 1 output never does)
    torch.testing.assert_close(sim.returns, eager.rewards.sum(-1).detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sim.state[..., 0], eager.state.state[..., 0].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(PHYSICS))
def test_simulate_sums_the_returns_as_the_rollout_does(name):
    """Same kernels on the same rows (eager, one tile): the same returns, bit for bit."""
    physics = PHYSICS[name]()
    policy, th, thdot, params, noise = _case(physics, horizon=200)
    with torch.no_grad():
        eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 200, features=physics.features, noise=noise)
    sim = simulate(policy, torch.stack((th, thdot), -1), params, 200, features=physics.features, noise=noise)
    assert torch.equal(sim.returns, eager.rewards.sum(-1))
    assert torch.equal(sim.state[..., 0], eager.state.state[..., 0]) and torch.equal(sim.state[..., 1], eager.state.state[..., 1])


@pytest.mark.parametrize("name", ["default", "noisy"])
def test_the_evaluator_agrees_with_the_eager_rollout_on_the_protocol(name):
    """evaluate_policy (simulate, oneDNN kernels at 1000 rows) against the eager fused_rollout on the protocol's
    1000 states, 200 steps, parameters and noise block: the statistics agree to float tolerance."""
    physics = get_physics(name)
    torch.manual_seed(0)
    policy = make_policy([64, 64])
    params = evaluation_params(physics)
    th, thdot = evaluation_states(physics=physics, params=params).unbind(-1)
    noise = evaluation_noise(physics)
    assert (noise is not None) == (name == "noisy")
    with torch.no_grad():
        eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 200, features=physics.features, noise=noise)
    expected = summarize_returns(eager.rewards.sum(-1), is_upright(eager.state.state[..., 0], eager.state.state[..., 1], SUCCESS_ANGLE,
                                                                   SUCCESS_SPEED), eager.state.state[..., 0])
    result = evaluate_policy(policy, physics=physics)
    assert result.keys() == expected.keys() and result["episodes"] == 1000
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-3), key


# ---------------------------------------------------------------------------------------------------- compiled paths
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PHYSICS))
def test_compiled_rollout_agrees_with_eager_on_returns_and_gradients(name):
    physics = PHYSICS[name]()
    policy, th, thdot, params, noise = _case(physics)
    start = initial_state(torch.stack((th, thdot), -1))
    eager = fused_rollout(policy, start, params, HORIZON, features=physics.features, noise=noise)
    compiled = fused_rollout(policy, start, params, HORIZON, features=physics.features, noise=noise, compile=True)
    assert compiled.rewards.shape == eager.rewards.shape == (BATCH, HORIZON)
    torch.testing.assert_close(compiled.rewards, eager.rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.state.state[..., 0], eager.state.state[..., 0], rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled.state.step_count, eager.state.step_count)
    _assert_grads_close(_grads(compiled.rewards.sum(-1), policy), _grads(eager.rewards.sum(-1), policy))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PHYSICS))
def test_compiled_simulate_agrees_with_eager_paths(name):
    physics = PHYSICS[name]()
    policy, th, thdot, params, noise = _case(physics)
    eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, HORIZON, features=physics.features, noise=noise)
    sim = simulate(policy, torch.stack((th, thdot), -1), params, HORIZON, features=physics.features, noise=noise)
    compiled = simulate(policy, torch.stack((th, thdot), -1), params, HORIZON, features=physics.features, noise=noise, compile=True)
    torch.testing.assert_close(compiled.returns, eager.rewards.sum(-1).detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(compiled.returns, sim.returns, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(compiled.state[..., 0], sim.state[..., 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.state[..., 1], sim.state[..., 1], rtol=1e-5, atol=1e-5)
