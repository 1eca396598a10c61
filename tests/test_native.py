"""research.native: the C loops agree with the torch paths on returns, rewards, final states and every gradient,
and the callers fall back to torch wherever the C loop does not apply."""

from __future__ import annotations

import pytest
import torch

import research.native as native
from research.envs.physics import GYMNASIUM_FEATURES, sample_initial_state, sample_params, step_constants
from research.envs.presets import get_physics
from research.policies import make_policy
from research.rollout import fused_rollout, initial_state, simulate

BATCH = native.ROW_BLOCK + 5  # a partial block of rows too


def _case(activation="tanh", hidden=(16, 16), seed=0):
    torch.manual_seed(seed)
    policy = make_policy(list(hidden), activation, max_torque=2.5)
    gen = torch.Generator().manual_seed(seed + 1)
    # per-pendulum masses, lengths and torque limits: every per-row constant is exercised
    params = sample_params((BATCH,), {"m": (0.7, 1.3), "l": (0.7, 1.3), "max_torque": (1.5, 2.5)}, generator=gen)
    th, thdot = sample_initial_state((BATCH,), gen)
    return policy, params, th * 1.5, thdot * 3  # angles beyond [-pi, pi] as well


@pytest.fixture(autouse=True)
def _needs_a_compiler():
    policy, params, th, _ = _case()
    if not native.supported(policy, step_constants(params, GYMNASIUM_FEATURES), th, BATCH):
        pytest.skip("research.native is unavailable here (no C compiler or not an x86/CPU build)")


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_simulate_agrees_with_the_torch_loop(activation):
    policy, params, th, thdot = _case(activation)
    ours = simulate(policy, (th, thdot), params, 60, native=True)
    ref = simulate(policy, (th, thdot), params, 60, native=False)
    torch.testing.assert_close(ours.returns, ref.returns, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ours.th, ref.th, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.thdot, ref.thdot, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rollout_rewards_and_every_gradient_agree_with_autograd(activation):
    policy, params, th, thdot = _case(activation, hidden=(16, 16, 16))
    weights = torch.randn(BATCH, 40, generator=torch.Generator().manual_seed(5))

    def run(use_native):
        th0, thdot0 = th.clone().requires_grad_(), thdot.clone().requires_grad_()
        out = fused_rollout(policy, initial_state(th0, thdot0), params, 40, native=use_native)
        loss = (out.rewards * weights).sum() + 0.3 * out.state.th.sum() - 0.2 * out.state.thdot.sum()
        grads = torch.autograd.grad(loss, [th0, thdot0, *policy.parameters()])
        return out, grads

    (ours, ours_grads), (ref, ref_grads) = run(True), run(False)
    torch.testing.assert_close(ours.rewards, ref.rewards, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.state.th, ref.state.th, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.state.step_count, ref.state.step_count)
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_unsupported_cases_fall_back_or_say_why():
    policy, params, th, thdot = _case()
    constants = step_constants(params, GYMNASIUM_FEATURES)
    assert not native.supported(make_policy([16], "elu"), constants, th, BATCH)
    assert not native.supported(policy.double(), constants, th.double(), BATCH)
    policy.float()
    assert not native.supported(make_policy([native.NATIVE_MAX_WIDTH + 16]), constants, th, BATCH)
    noisy = get_physics("noisy")
    noisy_constants = step_constants(noisy.params((BATCH,)), noisy.features)
    assert not native.supported(policy, noisy_constants, th, BATCH)
    with pytest.raises(ValueError, match="native=True"):
        fused_rollout(policy, initial_state(th, thdot), params, 5, native=True, keep_trajectory=True)
    with pytest.raises(ValueError, match="native=True"):
        simulate(policy, (th, thdot), params, 5, native=True, compile=True)
    # the automatic choice keeps the torch loop where it must, with the same results as asking for it
    kept = fused_rollout(policy, initial_state(th, thdot), params, 5, keep_trajectory=True)
    assert kept.observations is not None


def test_without_a_compiler_the_torch_paths_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "_LIBS", {})
    monkeypatch.setattr(native, "_WARNED", False)
    monkeypatch.setattr(native, "CACHE", tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    policy, params, th, thdot = _case(hidden=(8,))
    assert not native.supported(policy, step_constants(params, GYMNASIUM_FEATURES), th, BATCH)
    assert "using the torch rollouts" in caplog.text
    ref = simulate(policy, (th, thdot), params, 10, native=False)
    assert torch.equal(simulate(policy, (th, thdot), params, 10).returns, ref.returns)


def test_the_evaluator_on_the_native_loop_agrees_with_the_torch_loop(monkeypatch):
    """The protocol's 1000 states and 200 steps (a 64-64 tanh policy runs natively): the same statistics to float
    tolerance as with research.native turned off."""
    from research.evaluation import evaluate_policy

    torch.manual_seed(0)
    policy = make_policy([64, 64])
    ours = evaluate_policy(policy)
    monkeypatch.setattr(native, "ENABLED", False)
    ref = evaluate_policy(policy)
    assert ours.keys() == ref.keys()
    for key in ("return_mean", "return_median", "return_iqm", "return_min", "return_std"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-3), key
