"""research.native: the C loops agree with the torch paths on returns, rewards, final states and every gradient,
and the callers fall back to torch wherever the C loop does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import research.native as native
from research.envs.physics import GYMNASIUM_FEATURES, sample_initial_state, sample_params, step_constants
from research.envs.presets import get_physics
from research.policies import SquashedMLP, make_policy
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


def _x(th, thdot):
    """The rollouts' state ``[B, 2]``."""
    return torch.stack((th, thdot), -1)


@pytest.fixture(autouse=True)
def _needs_a_compiler():
    policy, params, th, _ = _case()
    if not native.supported(policy, step_constants(params, GYMNASIUM_FEATURES), th, BATCH):
        pytest.skip("research.native is unavailable here (no C compiler or not an x86/CPU build)")


def _assert_agrees(ours, ref, exact, rtol, atol):
    """``ours`` (native) within ``atol + rtol |ref|`` of ``ref`` (the torch loop in float32), plus twice the distance
    of ``ref`` from ``exact`` (the torch loop in float64): over 60 steps a few rows amplify float32 rounding far
    beyond the tolerance, in the torch loop as much as in the native one."""
    slack = 2 * (ref.double() - exact).abs()
    diff = (ours.double() - ref.double()).abs()
    bad = diff > atol + rtol * ref.double().abs() + slack
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} differ, by up to {diff[bad].max():.3g}"


def _check_simulate(activation, hidden):
    policy, params, th, thdot = _case(activation, hidden)
    ours = simulate(policy, _x(th, thdot), params, 60, native=True)
    ref = simulate(policy, _x(th, thdot), params, 60, native=False)
    params64 = type(params)(*(p.double() for p in params))
    exact = simulate(policy.double(), _x(th, thdot).double(), params64, 60, native=False)
    _assert_agrees(ours.returns, ref.returns, exact.returns, rtol=1e-5, atol=1e-3)
    _assert_agrees(ours.state, ref.state, exact.state, rtol=1e-5, atol=1e-4)  # th and thdot


def _check_rollout_and_gradients(activation, hidden):
    policy, params, th, thdot = _case(activation, hidden)
    weights = torch.randn(BATCH, 40, generator=torch.Generator().manual_seed(5))

    def run(use_native):
        th0, thdot0 = th.clone().requires_grad_(), thdot.clone().requires_grad_()
        out = fused_rollout(policy, initial_state(_x(th0, thdot0)), params, 40, native=use_native)
        loss = (out.rewards * weights).sum() + (out.state.state * torch.tensor([0.3, -0.2])).sum()
        grads = torch.autograd.grad(loss, [th0, thdot0, *policy.parameters()])
        return out, grads

    (ours, ours_grads), (ref, ref_grads) = run(True), run(False)
    torch.testing.assert_close(ours.rewards, ref.rewards, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.state.state[:, 0], ref.state.state[:, 0], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.state.step_count, ref.state.step_count)
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_simulate_agrees_with_the_torch_loop(activation):
    _check_simulate(activation, (16, 16))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rollout_rewards_and_every_gradient_agree_with_autograd(activation):
    _check_rollout_and_gradients(activation, (16, 16, 16))


# widths that are not multiples of the vector width (16 with AVX-512, 8 with AVX) take the kernels' other code paths:
# plain loops instead of vector groups (8, 24, 100 at 16 lanes), a scalar reduction for the output layer, and in the
# backward the weight gradient of a narrow input into a vector multiple (24 -> 16), the reverse (16 -> 8)
ODD_WIDTHS = [(8, 8), (24, 24), (100, 24), (24, 16, 8)]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("hidden", ODD_WIDTHS, ids=lambda h: "-".join(map(str, h)))
def test_odd_widths_agree_with_the_torch_loop(hidden, activation):
    _check_simulate(activation, hidden)
    _check_rollout_and_gradients(activation, hidden)


# every optional term of the pendulum's physics, alone and mixed: per-row knobs, angles in the wall's range
PRESET_CASES = ["damped", "coulomb", "coulomb_smooth", "wall", "wall_soft", "noisy", "mixed"]  # (weak, randomized:
# Gymnasium's terms with other per-row constants, which _case covers)


def _preset_case(name, horizon, seed=0):
    torch.manual_seed(seed)
    policy = make_policy([16, 16], "tanh", max_torque=2.0)
    gen = torch.Generator().manual_seed(seed + 1)
    if name == "mixed":  # sign and tanh friction in one batch, damping, noise and both walls on different rows
        from research.systems.pendulum import Pendulum
        system = Pendulum("mixed", {"damping": 0.05, "friction": 0.3, "torque_noise": 0.3, "wall_angle": 0.9},
                          ranges={"friction_width": (0.0, 0.2), "wall_stiffness": (0.0, 150.0),
                                  "wall_restitution": (0.0, 0.8)})
        params = system.params((BATCH,), gen)
        params = params._replace(friction_width=torch.where(torch.arange(BATCH) % 2 == 0, 0.0, params.friction_width),
                                 wall_stiffness=torch.where(torch.arange(BATCH) % 3 == 0, 0.0, params.wall_stiffness))
    else:
        system = get_physics(name)
        params = system.params((BATCH,), gen)
    x = system.initial_state((BATCH,), gen, params=params)
    x = torch.stack((x[:, 0], x[:, 1] * 3), -1)  # fast starts: walls are hit, speeds clip
    if system.ranges or name == "mixed":
        from research.envs.physics import physics_features
        features = physics_features(params)
    else:
        features = system.features
    noise = torch.randn(BATCH, horizon, 1, generator=gen) if features.noise else None
    return policy, system, params, features, x, noise


@pytest.mark.parametrize("name", PRESET_CASES)
def test_every_physics_term_agrees_with_the_torch_loop(name):
    policy, system, params, features, x, noise = _preset_case(name, 40)
    constants = step_constants(params, features)
    assert native.supported(policy, constants, x[:, 0], BATCH)
    sims = [simulate(policy, x, params, 60 if noise is None else 40, system=system, features=features, native=flag,
                     noise=noise) for flag in (True, False)]
    torch.testing.assert_close(sims[0].returns, sims[1].returns, rtol=1e-4, atol=2e-2)

    weights = torch.randn(BATCH, 40, generator=torch.Generator().manual_seed(5))

    def run(use_native):
        x0 = x.clone().requires_grad_()
        out = fused_rollout(policy, initial_state(x0), params, 40, system=system, features=features,
                            native=use_native, noise=noise)
        loss = (out.rewards * weights).sum() + (out.state.state * torch.tensor([0.3, -0.2])).sum()
        return out, torch.autograd.grad(loss, [x0, *policy.parameters()])

    (ours, ours_grads), (ref, ref_grads) = run(True), run(False)
    torch.testing.assert_close(ours.rewards, ref.rewards, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.state.state, ref.state.state, rtol=1e-4, atol=1e-3)
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_action_noise_and_observations_agree_with_the_torch_loop():
    """Randomised smoothing (pre-squash noise, drawn once for the rollout) and the observations the squash penalty
    reads: the same rewards, observations and gradients natively as on the torch loop, from the same draws."""
    policy, params, th, thdot = _case("tanh", (16, 16))

    def run(use_native):
        th0 = th.clone().requires_grad_()
        out = fused_rollout(policy, initial_state(_x(th0, thdot)), params, 30, native=use_native, action_noise=0.3,
                            keep_observations=True, generator=torch.Generator().manual_seed(3))
        grads = torch.autograd.grad(out.rewards.sum(), [th0, *policy.parameters()])
        return out, grads

    (ours, ours_grads), (ref, ref_grads) = run(True), run(False)
    torch.testing.assert_close(ours.rewards, ref.rewards, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.observations, ref.observations, rtol=1e-5, atol=1e-4)
    assert ours.observations.shape == (BATCH, 30, 3) and not ours.observations.requires_grad
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    # the noise is there: a different draw gives different rewards
    other = fused_rollout(policy, initial_state(_x(th, thdot)), params, 30, action_noise=0.3,
                          generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other.rewards, ref.rewards)
    with pytest.raises(ValueError, match="action_noise needs a squashed policy"):
        fused_rollout(lambda obs: obs[..., :1], initial_state(_x(th, thdot)), params, 5, action_noise=0.3)


@pytest.mark.parametrize("lanes", ["4", "8", "16"])
def test_every_vector_width_agrees_with_the_torch_loop(monkeypatch, lanes):
    """The kernels are generated for the CPU's vector width (16 floats with AVX-512, 8 with AVX, else 4): each
    width compiles and agrees, whichever CPU runs the test (a wider vector than the CPU has is emulated); the CPU's
    own width runs in every other test here."""
    if int(lanes) == native.vector_lanes():
        pytest.skip(f"{lanes} lanes is this CPU's own width, which every other test runs")
    monkeypatch.setenv("RESEARCH_NATIVE_LANES", lanes)
    monkeypatch.setattr(native, "_LIBS", {})
    assert native.vector_lanes() == int(lanes)
    _check_simulate("tanh", (32, 24))
    _check_rollout_and_gradients("tanh", (32, 24))


def test_the_lane_sum_is_a_halving_tree():
    # at 16 lanes the same order as the kernels before the width became a parameter (results unchanged there)
    assert native._lane_sum("a", 4) == "((a[0] + a[2]) + (a[1] + a[3]))"
    assert native._lane_sum("a", 16).startswith("((((a[0] + a[8]) + (a[4] + a[12])) + ((a[2] + a[10])")


def test_a_bad_lane_override_is_one_line(monkeypatch):
    monkeypatch.setenv("RESEARCH_NATIVE_LANES", "6")
    with pytest.raises(ValueError, match="RESEARCH_NATIVE_LANES must be 4, 8 or 16, got '6'"):
        native.vector_lanes()


class _Shifted(SquashedMLP):
    """Its own forward: 0.1 added before the squash (the C loop would silently drop it)."""

    def forward(self, observation):
        return self.max_torque * torch.tanh(self.net(observation) + 0.1)


def _never_native(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the native loop ran")

    monkeypatch.setattr(native, "native_rollout", refuse)
    monkeypatch.setattr(native, "native_simulate", refuse)


def test_a_subclass_with_its_own_forward_never_runs_native(monkeypatch):
    policy, params, th, thdot = _case()
    shifted = _Shifted([16, 16], "tanh", max_torque=2.5)
    shifted.load_state_dict(policy.state_dict())
    constants = step_constants(params, GYMNASIUM_FEATURES)
    assert policy.native_layers() is not None and shifted.native_layers() is None
    assert not native.supported(shifted, constants, th, BATCH)
    with pytest.raises(ValueError, match="native=True"):
        fused_rollout(shifted, initial_state(_x(th, thdot)), params, 5, native=True)
    # a subclass that computes exactly SquashedMLP's network still opts in
    assert native.supported(type("Same", (SquashedMLP,), {})([16, 16], "tanh"), constants, th, BATCH)

    def run(net, use_native):
        th0 = th.clone().requires_grad_()
        out = fused_rollout(net, initial_state(_x(th0, thdot)), params, 30, native=use_native)
        return out, torch.autograd.grad(out.rewards.sum(), [th0, *net.parameters()])

    plain, _ = run(policy, None)  # the unmodified network runs natively: the shift changes the rewards
    _never_native(monkeypatch)
    (auto, auto_grads), (ref, ref_grads) = run(shifted, None), run(shifted, False)
    assert torch.equal(auto.rewards, ref.rewards) and torch.equal(auto.state.state, ref.state.state)
    assert all(torch.equal(a, b) for a, b in zip(auto_grads, ref_grads, strict=True))
    assert not torch.allclose(auto.rewards, plain.rewards, rtol=1e-3, atol=1e-3)
    # ...and the torch result is that of its own forward, written out step by step
    th_t, thdot_t, rewards = th, thdot, []
    for _ in range(30):
        u = shifted(torch.stack([th_t.cos(), th_t.sin(), thdot_t], -1)).squeeze(-1)
        u = u.clamp(-params.max_torque, params.max_torque)
        w = torch.remainder(th_t + torch.pi, 2 * torch.pi) - torch.pi
        rewards.append(-(w**2 + native.COST_SPEED * thdot_t**2 + native.COST_TORQUE * u**2))
        inertia = params.m * params.l**2 / 3
        thdot_t = (thdot_t + (3 * params.g / (2 * params.l) * th_t.sin() + u / inertia) * params.dt)
        thdot_t = thdot_t.clamp(-params.max_speed, params.max_speed)
        th_t = th_t + thdot_t * params.dt
    torch.testing.assert_close(ref.rewards, torch.stack(rewards, -1), rtol=1e-4, atol=1e-4)
    sim = simulate(shifted, _x(th, thdot), params, 30)
    torch.testing.assert_close(sim.returns, ref.rewards.sum(-1), rtol=1e-5, atol=1e-3)


def test_modified_networks_and_plain_functions_never_run_native(monkeypatch):
    policy, params, th, thdot = _case()
    constants = step_constants(params, GYMNASIUM_FEATURES)
    ref = fused_rollout(policy, initial_state(_x(th, thdot)), params, 20, native=False)

    def function(observation):
        return policy(observation)

    normed = _case()[0]
    normed.net[1] = nn.LayerNorm(16)  # the Identity left where the first tanh was fused into its layer
    hooked = _case()[0]
    hooked.net[2].register_forward_hook(lambda module, args, out: out * 0.5)
    for other in (function, normed, hooked):
        assert not native.supported(other, constants, th, BATCH)
    _never_native(monkeypatch)
    out = fused_rollout(function, initial_state(_x(th, thdot)), params, 20)
    assert torch.equal(out.rewards, ref.rewards)
    assert torch.equal(simulate(function, _x(th, thdot), params, 20).returns,
                       simulate(policy, _x(th, thdot), params, 20, native=False).returns)
    for other in (normed, hooked):
        fused_rollout(other, initial_state(_x(th, thdot)), params, 20)
        simulate(other, _x(th, thdot), params, 20)


def test_unsupported_cases_fall_back_or_say_why():
    policy, params, th, thdot = _case()
    constants = step_constants(params, GYMNASIUM_FEATURES)
    assert not native.supported(make_policy([16], "elu"), constants, th, BATCH)
    assert not native.supported(policy.double(), constants, th.double(), BATCH)
    policy.float()
    assert not native.supported(make_policy([native.NATIVE_MAX_WIDTH + 16]), constants, th, BATCH)
    # parameters that need a gradient stay on the torch loop (the C loop differentiates the policy and the state)
    wall = get_physics("wall")
    wall_params = wall.params((BATCH,))
    wall_params = type(wall_params)(*(p.clone().requires_grad_(i == 0) for i, p in enumerate(wall_params)))
    assert not native.supported(policy, step_constants(wall_params, wall.features), th, BATCH)
    with pytest.raises(ValueError, match="native=True"):
        fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 5, native=True, keep_trajectory=True)
    with pytest.raises(ValueError, match="native=True"):
        simulate(policy, torch.stack((th, thdot), -1), params, 5, native=True, compile=True)
    # the automatic choice keeps the torch loop where it must, with the same results as asking for it
    kept = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 5, keep_trajectory=True)
    assert kept.observations is not None


def test_without_a_compiler_the_torch_paths_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "_LIBS", {})
    monkeypatch.setattr(native, "_WARNED", False)
    monkeypatch.setattr(native, "CACHE", tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    policy, params, th, thdot = _case(hidden=(8,))
    assert not native.supported(policy, step_constants(params, GYMNASIUM_FEATURES), th, BATCH)
    assert "using the torch rollouts" in caplog.text
    ref = simulate(policy, torch.stack((th, thdot), -1), params, 10, native=False)
    assert torch.equal(simulate(policy, torch.stack((th, thdot), -1), params, 10).returns, ref.returns)


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
