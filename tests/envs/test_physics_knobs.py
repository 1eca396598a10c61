"""Tests of the optional physics knobs of :mod:`research.envs.physics` (damping, dry friction, torque noise, walls).

Each knob against its formula on hand-chosen states, gradients through the smooth knobs, and the guarantee that
every knob at its default runs today's Gymnasium step bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch

from research.envs.physics import (
    DEFAULT_PARAMS,
    GYMNASIUM_FEATURES,
    GYMNASIUM_FIELDS,
    KNOB_FIELDS,
    PendulumParams,
    PhysicsFeatures,
    angle_normalize,
    pendulum_step,
    physics_features,
    sample_initial_state,
    sample_params,
    step_constants,
    to_wall_range,
    validate_params,
)
from research.policies import make_policy
from research.rollout import fused_rollout, initial_state, simulate

F64 = torch.float64
DT = DEFAULT_PARAMS["dt"]
PHI = math.pi / 4
ALL_FEATURES = PhysicsFeatures(*([True] * 6))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def gymnasium_step(th, thdot, torque, params):
    """A frozen copy of the step before the knobs existed (Gymnasium's formula, the same fused ops)."""
    gravity = 3.0 * params.g / (2.0 * params.l)
    inverse_inertia = 3.0 / (params.m * params.l**2)
    sin_th = torch.sin(th)
    u = torch.clamp(torque, -params.max_torque, params.max_torque)
    wrapped = angle_normalize(th)
    cost = torch.addcmul(torch.addcmul(wrapped * wrapped, thdot, thdot, value=0.1), u, u, value=0.001)
    accel = torch.addcmul(gravity * sin_th, inverse_inertia, u)
    next_thdot = torch.clamp(torch.addcmul(thdot, accel, params.dt), -params.max_speed, params.max_speed)
    next_th = torch.addcmul(th, next_thdot, params.dt)
    return next_th, next_thdot, -cost


def hand_step(th, thdot, torque, tau_extra=0.0, g=10.0, m=1.0, length=1.0, max_torque=2.0):
    """Gymnasium's step in plain Python floats with an extra torque ``tau_extra`` added to the clipped one."""
    u = min(max(torque, -max_torque), max_torque)
    thdot_next = thdot + (3 * g / (2 * length) * math.sin(th) + 3 / (m * length**2) * (u + tau_extra)) * DT
    thdot_next = min(max(thdot_next, -8.0), 8.0)
    return th + thdot_next * DT, thdot_next


def random_batch(n: int = 4096, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    th = (torch.rand(n, generator=gen, dtype=dtype) - 0.5) * 20.0
    thdot = (torch.rand(n, generator=gen, dtype=dtype) - 0.5) * 16.0
    torque = (torch.rand(n, generator=gen, dtype=dtype) - 0.5) * 6.0
    return th, thdot, torque


# ---------------------------------------------------------------------------------------------- defaults: parity
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_knob_at_its_default_is_todays_step_bit_for_bit(dtype):
    th, thdot, torque = random_batch(dtype=dtype)
    params = PendulumParams.default((th.numel(),), dtype=dtype)
    expected = gymnasium_step(th, thdot, torque, params)
    assert physics_features(params) == GYMNASIUM_FEATURES
    for out in (
        pendulum_step(th, thdot, torque, params),
        pendulum_step(th, thdot, torque, step_constants(params)),
        # every optional term computed, each at its neutral value (a wall at +inf, zero coefficients)
        pendulum_step(th, thdot, torque, params, noise=torch.randn(th.shape, dtype=dtype), features=ALL_FEATURES),
        # the knobs as Python floats (a tuple built from the six Gymnasium fields)
        pendulum_step(th, thdot, torque, PendulumParams(*params[:6])),
    ):
        for a, b in zip(out, expected, strict=True):
            assert torch.equal(a, b)


def test_default_rollouts_are_todays_rollouts_bit_for_bit():
    torch.manual_seed(0)
    policy = make_policy([16])
    th, thdot = sample_initial_state((64,), torch.Generator().manual_seed(1))
    params = PendulumParams.default((64,))
    rewards, s_th, s_thdot = [], th, thdot
    with torch.no_grad():
        for _ in range(30):
            action = policy(torch.stack((s_th.cos(), s_th.sin(), s_thdot), dim=-1)).squeeze(-1)
            s_th, s_thdot, reward = gymnasium_step(s_th, s_thdot, action, params)
            rewards.append(reward)
        out = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 30, native=False)  # the torch loop
    assert torch.equal(out.rewards, torch.stack(rewards, dim=-1))
    assert torch.equal(out.state.state[..., 0], s_th) and torch.equal(out.state.state[..., 1], s_thdot)


def test_features_are_read_from_values_or_python_floats():
    assert physics_features(PendulumParams.default((3,), damping=0.1)) == PhysicsFeatures(damping=True)
    mixed = PendulumParams.default((2,))._replace(friction=t(0.5, 0.5), friction_width=t(0.0, 0.2))
    assert physics_features(mixed) == PhysicsFeatures(friction_sign=True, friction_smooth=True)
    # friction_width without friction, stiffness without a wall: nothing to compute
    assert physics_features(PendulumParams.default(friction_width=0.3, wall_stiffness=5.0)) == GYMNASIUM_FEATURES
    walls = PendulumParams.default((3,))._replace(wall_angle=t(PHI, PHI, math.inf), wall_stiffness=t(0.0, 50.0, 0.0))
    assert physics_features(walls) == PhysicsFeatures(hard_wall=True, soft_wall=True)
    floats = PendulumParams(*PendulumParams.default()[:6], torque_noise=0.3, wall_angle=1.0)
    assert physics_features(floats) == PhysicsFeatures(noise=True, hard_wall=True)
    assert PhysicsFeatures(damping=True) | PhysicsFeatures(noise=True) == PhysicsFeatures(damping=True, noise=True)
    assert ALL_FEATURES.wall and ALL_FEATURES.friction and not GYMNASIUM_FEATURES.wall


# ---------------------------------------------------------------------------------------------- each knob
def test_damping_subtracts_b_thdot():
    params = PendulumParams.default((3,), dtype=F64, damping=0.1)
    th, thdot, torque = t(0.3, -2.0, 2.5), t(2.0, -1.0, 4.0), t(0.5, 0.0, 3.0)
    next_th, next_thdot, reward = pendulum_step(th, thdot, torque, params)
    for i in range(3):
        exp_th, exp_thdot = hand_step(th[i].item(), thdot[i].item(), torque[i].item(), -0.1 * thdot[i].item())
        assert next_thdot[i].item() == pytest.approx(exp_thdot, abs=1e-12)
        assert next_th[i].item() == pytest.approx(exp_th, abs=1e-12)
    assert torch.equal(reward, gymnasium_step(th, thdot, torque, PendulumParams.default(dtype=F64))[2])


def test_coulomb_friction_is_the_exact_sign_with_sign_zero_at_rest():
    params = PendulumParams.default((3,), dtype=F64, friction=0.5)
    th, thdot, torque = t(1.0, 1.0, 1.0), t(0.0, 1.5, -1.5), t(0.3, 0.3, 0.3)
    _, next_thdot, _ = pendulum_step(th, thdot, torque, params)
    free = pendulum_step(th, thdot, torque, PendulumParams.default(dtype=F64))[1]
    assert next_thdot[0].item() == free[0].item()  # sign(0) = 0: no friction at rest (eps = 0)
    assert next_thdot[1].item() == pytest.approx(hand_step(1.0, 1.5, 0.3, -0.5)[1], abs=1e-12)
    assert next_thdot[2].item() == pytest.approx(hand_step(1.0, -1.5, 0.3, +0.5)[1], abs=1e-12)


def test_smooth_friction_is_tanh_and_batches_may_mix_sign_and_tanh():
    th, thdot, torque = t(1.0, 1.0, -0.4), t(0.05, 0.05, -2.0), t(0.3, 0.3, 1.0)
    params = PendulumParams.default((3,), dtype=F64)._replace(friction=t(0.5, 0.5, 0.5), friction_width=t(0.1, 0.0, 0.1))
    _, next_thdot, _ = pendulum_step(th, thdot, torque, params)
    expected = [
        hand_step(1.0, 0.05, 0.3, -0.5 * math.tanh(0.05 / 0.1))[1],
        hand_step(1.0, 0.05, 0.3, -0.5)[1],  # eps = 0 in that pendulum: the exact sign
        hand_step(-0.4, -2.0, 1.0, -0.5 * math.tanh(-2.0 / 0.1))[1],
    ]
    assert next_thdot.tolist() == pytest.approx(expected, abs=1e-12)


def test_torque_noise_is_added_before_the_clip_and_not_charged():
    params = PendulumParams.default((3,), dtype=F64, torque_noise=0.5)
    th, thdot, torque, noise = t(0.5, 0.5, 0.5), t(0.0, 0.0, 0.0), t(1.0, 1.9, -3.0), t(-1.0, 1.0, 2.0)
    next_th, next_thdot, reward = pendulum_step(th, thdot, torque, params, noise=noise)
    # applied torques 0.5, clip(2.4) = 2, clip(-3 + 1) = -2; the cost charges clip(torque) = 1, 1.9, -2
    for i, applied in enumerate((0.5, 2.0, -2.0)):
        assert next_thdot[i].item() == pytest.approx(hand_step(0.5, 0.0, applied)[1], abs=1e-12)
    noiseless = pendulum_step(th, thdot, torque, PendulumParams.default(dtype=F64))
    assert torch.equal(reward, noiseless[2])
    with pytest.raises(ValueError, match="noise must be a standard-normal sample"):
        pendulum_step(th, thdot, torque, params)


def test_noise_is_ignored_at_sigma_zero():
    th, thdot, torque = random_batch(64, F64)
    params = PendulumParams.default((64,), dtype=F64)
    base = pendulum_step(th, thdot, torque, params)
    for features in (None, ALL_FEATURES):
        out = pendulum_step(th, thdot, torque, params, noise=torch.randn(64, dtype=F64) * 100, features=features)
        for a, b in zip(out, base, strict=True):
            assert torch.equal(a, b)


def test_hard_wall_reflects_a_crossing_and_leaves_a_grazing_step_alone():
    e = 0.5
    params = PendulumParams.default((3,), dtype=F64, wall_angle=PHI, wall_restitution=e)
    lo = PHI - 2 * math.pi
    # a hit at phi, a step that ends just short of phi, and a hit at the lower face lo = phi - 2 pi
    th, thdot, torque = t(0.7, 0.7, lo + 0.05), t(3.0, 0.5, -3.0), t(0.0, 0.0, 0.0)
    next_th, next_thdot, _ = pendulum_step(th, thdot, torque, params)

    free_th, free_thdot = hand_step(0.7, 3.0, 0.0)
    assert free_th > PHI
    assert next_th[0].item() == pytest.approx(PHI - e * (free_th - PHI), abs=1e-12)
    assert next_thdot[0].item() == pytest.approx(-e * free_thdot, abs=1e-12)

    graze_th, graze_thdot = hand_step(0.7, 0.5, 0.0)
    assert PHI - 0.05 < graze_th < PHI
    assert next_th[1].item() == pytest.approx(graze_th, abs=1e-12)
    assert next_thdot[1].item() == pytest.approx(graze_thdot, abs=1e-12)

    low_th, low_thdot = hand_step(lo + 0.05, -3.0, 0.0)
    assert low_th < lo
    assert next_th[2].item() == pytest.approx(lo + e * (lo - low_th), abs=1e-12)
    assert next_thdot[2].item() == pytest.approx(-e * low_thdot, abs=1e-12)


def test_inelastic_hard_wall_stops_the_pendulum_on_the_wall():
    params = PendulumParams.default(dtype=F64, wall_angle=PHI)  # e = 0
    next_th, next_thdot, _ = pendulum_step(t(0.7), t(3.0), t(0.0), params)
    assert next_th.item() == pytest.approx(PHI, abs=1e-15) and next_thdot.item() == 0.0


def test_soft_wall_is_a_penalty_torque_from_the_state_before_the_step():
    k = 100.0
    params = PendulumParams.default((3,), dtype=F64, wall_angle=PHI, wall_stiffness=k)
    lo = PHI - 2 * math.pi
    th, thdot, torque = t(PHI + 0.1, lo - 0.05, 0.7), t(1.0, -1.0, 3.0), t(0.2, 0.2, 0.2)
    next_th, next_thdot, _ = pendulum_step(th, thdot, torque, params)
    expected = [
        hand_step(PHI + 0.1, 1.0, 0.2, -k * 0.1),
        hand_step(lo - 0.05, -1.0, 0.2, +k * 0.05),
        hand_step(0.7, 3.0, 0.2),  # not yet in contact: no penalty, and it may cross phi
    ]
    for i, (exp_th, exp_thdot) in enumerate(expected):
        assert next_thdot[i].item() == pytest.approx(exp_thdot, abs=1e-9)
        assert next_th[i].item() == pytest.approx(exp_th, abs=1e-9)  # no reflection, even past phi
    assert next_th[2].item() > PHI


def test_a_batch_may_mix_hard_soft_and_no_wall():
    th, thdot, torque = t(0.7, PHI + 0.1, 0.7), t(3.0, 1.0, 3.0), t(0.0, 0.0, 0.0)
    params = PendulumParams.default((3,), dtype=F64)._replace(
        wall_angle=t(PHI, PHI, math.inf), wall_restitution=t(0.5, 0.5, 0.5), wall_stiffness=t(0.0, 100.0, 0.0)
    )
    batched = pendulum_step(th, thdot, torque, params)
    for i in range(3):
        one = pendulum_step(th[i], thdot[i], torque[i], PendulumParams(*(p[i] for p in params)))
        for a, b in zip(batched, one, strict=True):
            assert a[i].item() == pytest.approx(b.item(), abs=1e-12)
    assert batched[0][2].item() == pytest.approx(hand_step(0.7, 3.0, 0.0)[0], abs=1e-12)  # no wall: passes phi


def test_no_wall_at_infinity_produces_no_nan_in_values_or_gradients():
    th, thdot, torque = (x.requires_grad_() for x in random_batch(256, F64))
    knobs = {name: torch.full((256,), DEFAULT_PARAMS[name], dtype=F64, requires_grad=True) for name in KNOB_FIELDS}
    params = PendulumParams.default((256,), dtype=F64)._replace(**knobs)
    noise = torch.randn(256, dtype=F64, requires_grad=True)
    out = pendulum_step(th, thdot, torque, params, noise=noise, features=ALL_FEATURES)
    assert all(torch.isfinite(x).all() for x in out)
    grads = torch.autograd.grad(sum(x.sum() for x in out), [th, thdot, torque, noise, *knobs.values()])
    assert all(torch.isfinite(grad).all() for grad in grads)


# ---------------------------------------------------------------------------------------------- gradients
def test_gradcheck_through_the_smooth_knobs():
    """Damping, tanh friction, the soft wall and the noise (with its scale) as inputs, against finite differences."""
    th = t(0.3, -1.2, PHI + 0.05, PHI - 2 * math.pi - 0.03).requires_grad_()
    thdot = t(1.0, -2.0, 0.5, -0.7).requires_grad_()
    torque = t(0.4, -0.6, 0.2, 0.1).requires_grad_()
    noise = t(0.3, -1.1, 0.8, -0.2).requires_grad_()
    damping, friction, width, sigma, stiffness, phi = (
        torch.full((4,), v, dtype=F64, requires_grad=True) for v in (0.1, 0.4, 0.3, 0.5, 60.0, PHI)
    )
    base = PendulumParams.default((4,), dtype=F64)

    def step(th, thdot, torque, noise, damping, friction, width, sigma, stiffness, phi):
        params = base._replace(damping=damping, friction=friction, friction_width=width, torque_noise=sigma,
                               wall_stiffness=stiffness, wall_angle=phi)
        return pendulum_step(th, thdot, torque, params, noise=noise)

    inputs = (th, thdot, torque, noise, damping, friction, width, sigma, stiffness, phi)
    assert physics_features(base._replace(friction=friction, friction_width=width, wall_stiffness=stiffness,
                                          wall_angle=phi, damping=damping, torque_noise=sigma)) == PhysicsFeatures(
        damping=True, friction_smooth=True, noise=True, soft_wall=True)
    assert step(*inputs)[1].abs().max() < 7.0  # away from the speed clip
    assert torch.autograd.gradcheck(step, inputs)


def test_gradcheck_through_a_hard_wall_hit():
    """Away from the kink (a clear crossing), the reflection is smooth in the state, e and phi."""
    th, thdot = t(0.7, -5.4).requires_grad_(), t(3.0, -3.0).requires_grad_()
    e = t(0.5, 0.3).requires_grad_()
    phi = t(PHI, PHI).requires_grad_()
    base = PendulumParams.default((2,), dtype=F64)

    def step(th, thdot, e, phi):
        return pendulum_step(th, thdot, torch.zeros(2, dtype=F64), base._replace(wall_restitution=e, wall_angle=phi))

    assert torch.autograd.gradcheck(step, (th, thdot, e, phi))


# ---------------------------------------------------------------------------------------------- wall range, checks
def test_to_wall_range_keeps_physical_angles_and_in_range_values():
    th = torch.linspace(-3 * math.pi, 3 * math.pi, 1001, dtype=F64)
    out = to_wall_range(th, PHI)
    assert out.min() >= PHI - 2 * math.pi and out.max() <= PHI
    torch.testing.assert_close(out.cos(), th.cos())
    torch.testing.assert_close(out.sin(), th.sin())
    inside = (th >= PHI - 2 * math.pi) & (th <= PHI)
    assert torch.equal(out[inside], th[inside])  # bit for bit
    assert torch.equal(to_wall_range(th, math.inf), th)
    per_env = to_wall_range(t(1.0, 1.0), t(PHI, math.inf))
    assert per_env.tolist() == pytest.approx([1.0 - 2 * math.pi, 1.0])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"damping": -0.1}, r"params\.damping must be >= 0"),
        ({"friction": -1.0}, r"params\.friction must be >= 0"),
        ({"friction_width": -1.0}, r"params\.friction_width must be >= 0"),
        ({"torque_noise": -0.5}, r"params\.torque_noise must be >= 0"),
        ({"wall_stiffness": -1.0}, r"params\.wall_stiffness must be >= 0"),
        ({"wall_restitution": 1.5}, r"params\.wall_restitution must be <= 1"),
        ({"wall_restitution": -0.5}, r"params\.wall_restitution must be >= 0"),
        ({"wall_angle": 4.0}, r"params\.wall_angle must be in \(0, pi\) or \+inf"),
        ({"wall_angle": 0.0}, r"params\.wall_angle must be in \(0, pi\) or \+inf"),
        ({"wall_angle": -math.inf}, r"params\.wall_angle contains NaN or inf other than \+inf"),
        ({"wall_angle": math.nan}, r"params\.wall_angle contains NaN or inf other than \+inf"),
        ({"damping": math.inf}, r"params\.damping contains NaN or inf"),
    ],
)
def test_knob_domains_are_checked(override, match):
    with pytest.raises(ValueError, match=match):
        validate_params(PendulumParams.default((2,), **override))


def test_sample_params_fixed_values_and_ranges_of_knobs():
    gen = torch.Generator().manual_seed(0)
    params = sample_params((64,), {"damping": (0.0, 0.2)}, generator=gen, fixed={"wall_angle": PHI, "g": 9.0})
    assert params.damping.min() >= 0 and params.damping.max() <= 0.2 and params.damping.std() > 0
    assert torch.all(params.wall_angle == torch.tensor(PHI)) and torch.all(params.g == 9.0)
    assert torch.all(params.friction == 0.0) and torch.all(params.wall_angle.isfinite())
    with pytest.raises(ValueError, match=r"unknown physical parameter.*'wal_angle'.*in fixed"):
        sample_params((2,), fixed={"wal_angle": 1.0})


def test_mappings_may_leave_the_knobs_out():
    mapping = {name: torch.ones(2) for name in GYMNASIUM_FIELDS}
    params = PendulumParams.from_mapping(mapping)
    assert params.wall_angle == math.inf and params.damping == 0.0
    validate_params(mapping)


# ---------------------------------------------------------------------------------------------- rollouts
def _knob_params(n: int, dtype: torch.dtype = torch.float32) -> PendulumParams:
    return PendulumParams.default((n,), dtype=dtype, damping=0.05, friction=0.2, friction_width=0.1,
                                  torque_noise=0.3, wall_angle=PHI, wall_restitution=0.5)


def test_rollout_noise_comes_from_the_generator_and_is_required():
    torch.manual_seed(0)
    policy = make_policy([8])
    params = _knob_params(16)
    th, thdot = sample_initial_state((16,), torch.Generator().manual_seed(0))
    th = to_wall_range(th, PHI)
    with pytest.raises(ValueError, match="generator .* is required when torque_noise > 0"):
        fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 5)
    runs = [fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 20, generator=torch.Generator().manual_seed(s))
            for s in (3, 3, 4)]
    assert torch.equal(runs[0].rewards, runs[1].rewards) and not torch.equal(runs[0].rewards, runs[2].rewards)
    noise = torch.randn((16, 20), generator=torch.Generator().manual_seed(3))
    given = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 20, noise=noise)
    assert torch.equal(given.rewards, runs[0].rewards)  # the block is drawn at the start, [*B, H]
    with pytest.raises(ValueError, match=r"noise must have shape \[\*B, H\] = \[16, 20\]"):
        fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 20, noise=noise[:, :5])
    with torch.no_grad():
        sim = simulate(policy, torch.stack((th, thdot), -1), params, 20, noise=noise, tile=5)
    torch.testing.assert_close(sim.returns, given.rewards.sum(-1).detach(), rtol=1e-5, atol=1e-4)


def test_resets_inside_a_rollout_are_represented_in_the_wall_range():
    policy = make_policy([8], dtype=F64)
    params = PendulumParams.default((256,), dtype=F64, wall_angle=PHI, wall_restitution=0.5)
    gen = torch.Generator().manual_seed(0)
    th, thdot = sample_initial_state((256,), gen, dtype=F64)
    start = initial_state(torch.stack((to_wall_range(th, PHI), thdot), -1))
    out = fused_rollout(policy, start, params, 12, episode_length=3, generator=gen, keep_trajectory=True)
    assert out.truncated.any()
    seen = torch.atan2(out.observations[..., 1], out.observations[..., 0])  # observations agree with any representation
    assert torch.isfinite(seen).all()
    assert out.state.state[..., 0].min() >= PHI - 2 * math.pi and out.state.state[..., 0].max() <= PHI


def test_preset_features_skip_the_host_sync_and_give_the_same_rollout():
    torch.manual_seed(0)
    policy = make_policy([8])
    params = _knob_params(8)
    th, thdot = sample_initial_state((8,), torch.Generator().manual_seed(0))
    start = initial_state(torch.stack((to_wall_range(th, PHI), thdot), -1))
    derived = fused_rollout(policy, start, params, 10, generator=torch.Generator().manual_seed(1))
    given = fused_rollout(policy, start, params, 10, generator=torch.Generator().manual_seed(1),
                          features=physics_features(params) | PhysicsFeatures(soft_wall=True))
    assert torch.equal(derived.rewards, given.rewards)


@pytest.mark.slow
def test_compiled_rollout_and_simulate_agree_with_eager_on_the_knobs():
    torch.manual_seed(0)
    policy = make_policy([8])
    params = _knob_params(8)
    th, thdot = sample_initial_state((8,), torch.Generator().manual_seed(0))
    th = to_wall_range(th, PHI)
    noise = torch.randn((8, 12), generator=torch.Generator().manual_seed(2))
    eager = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 12, noise=noise)
    compiled = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 12, noise=noise, compile=True)
    torch.testing.assert_close(compiled.rewards, eager.rewards, rtol=1e-4, atol=1e-4)
    grads = [torch.autograd.grad(r.rewards.sum(), list(policy.parameters())) for r in (eager, compiled)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        sim = simulate(policy, torch.stack((th, thdot), -1), params, 12, noise=noise, compile=True)
    torch.testing.assert_close(sim.returns, eager.rewards.sum(-1).detach(), rtol=1e-4, atol=1e-3)
