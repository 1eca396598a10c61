"""Tests of the pure Pendulum-v1 physics in :mod:`research.envs.physics`.

Parity with the real Gymnasium Pendulum-v1 (fixture ``gymnasium_reference`` in ``tests/conftest.py``), gradients
(``torch.autograd.gradcheck`` in float64), purity, parameter validation and sampling.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from research.envs.physics import (
    DEFAULT_PARAMS,
    REWARD_MIN,
    PendulumParams,
    angle_normalize,
    is_upright,
    observation,
    pendulum_step,
    sample_initial_state,
    sample_params,
    validate_params,
)


def max_angle_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``|a - b|`` modulo ``2 pi``, computed in float64."""
    return angle_normalize(a.double() - b.double()).abs().max().item()


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def reference_tensors(ref: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(value).to(dtype) for key, value in ref.items()}


# ---------------------------------------------------------------------------------------------- Gymnasium parity
def test_reference_covers_the_hard_cases(gymnasium_reference):
    """The parity data really exercises wrapped angles, the speed limit and the torque clip."""
    ref = gymnasium_reference
    assert ref["th"].shape == (256, 201) and ref["action"].shape == (256, 200)
    assert (abs(ref["th"][:, 0]) > math.pi).mean() > 0.5
    assert (abs(ref["thdot"]) == 8.0).sum() > 32  # pinned initial speeds plus speeds clipped during the rollout
    assert (abs(ref["action"]) > 2.0).mean() > 0.25
    assert ref["action"].min() < -2.9 and ref["action"].max() > 2.9


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_every_step_matches_gymnasium(gymnasium_reference, dtype, tol):
    """All 256 x 200 transitions, each started from Gymnasium's own state, in one batched call."""
    ref = reference_tensors(gymnasium_reference, dtype)
    th, thdot = ref["th"][:, :-1], ref["thdot"][:, :-1]  # [256, 200]
    params = PendulumParams.default(dtype=dtype)  # scalars broadcast against the [256, 200] batch
    next_th, next_thdot, reward = pendulum_step(th, thdot, ref["action"], params)

    assert next_th.dtype == next_thdot.dtype == reward.dtype == dtype
    assert next_th.shape == next_thdot.shape == reward.shape == (256, 200)
    assert max_angle_error(next_th, ref["th"][:, 1:]) < tol
    assert max_error(next_thdot, ref["thdot"][:, 1:]) < tol
    assert max_error(reward, ref["reward"]) < tol


def test_float64_trajectories_match_gymnasium(gymnasium_reference):
    """Our own 20-step rollouts (no resync to Gymnasium's state) stay within 1e-5 of Gymnasium's."""
    ref = reference_tensors(gymnasium_reference, torch.float64)
    params = PendulumParams.default(dtype=torch.float64)
    th, thdot = ref["th"][:, 0], ref["thdot"][:, 0]
    for t in range(20):
        th, thdot, reward = pendulum_step(th, thdot, ref["action"][:, t], params)
        assert max_angle_error(th, ref["th"][:, t + 1]) < 1e-5, f"angle diverged at step {t}"
        assert max_error(thdot, ref["thdot"][:, t + 1]) < 1e-5, f"speed diverged at step {t}"
        assert max_error(reward, ref["reward"][:, t]) < 1e-5, f"reward diverged at step {t}"


def test_angle_is_not_wrapped_like_gymnasium():
    """Gymnasium keeps integrating ``th`` without wrapping; so do we (observations and rewards agree anyway)."""
    th = torch.tensor([3.1], dtype=torch.float64)
    next_th, _, _ = pendulum_step(
        th, torch.tensor([8.0], dtype=torch.float64), torch.zeros(1), PendulumParams.default()
    )
    assert next_th.item() > math.pi


# ---------------------------------------------------------------------------------------------- gradients
def test_gradcheck_one_step():
    """Analytic gradients w.r.t. state, action and g, m, l, dt equal finite differences (away from the clips)."""
    gen = torch.Generator().manual_seed(0)
    n = 6

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()

    # Angles on both sides of the origin and beyond pi, kept away from the wrap of angle_normalize at odd pi.
    th = torch.tensor([-2.5, -0.7, 0.1, 1.9, 4.0, -4.5], dtype=torch.float64, requires_grad=True)
    thdot, torque = uniform(-3.0, 3.0), uniform(-1.5, 1.5)
    g, m, length, dt = uniform(8.0, 12.0), uniform(0.8, 1.2), uniform(0.8, 1.2), uniform(0.03, 0.07)
    max_speed = torch.full((n,), 8.0, dtype=torch.float64)
    max_torque = torch.full((n,), 2.0, dtype=torch.float64)

    def step(th, thdot, torque, g, m, length, dt):
        return pendulum_step(th, thdot, torque, PendulumParams(g, m, length, dt, max_speed, max_torque))

    next_thdot = step(th, thdot, torque, g, m, length, dt)[1]
    assert next_thdot.abs().max() < 7.0  # the speed clip is not active, so the check is about the smooth physics
    assert torch.autograd.gradcheck(step, (th, thdot, torque, g, m, length, dt))


def test_clips_have_zero_gradient_where_active():
    """A saturated torque or speed passes no gradient (Gymnasium's clip, kept for parity)."""
    params = PendulumParams.default(dtype=torch.float64)
    torque = torch.tensor([2.5, -3.0, 1.0], dtype=torch.float64, requires_grad=True)
    thdot = torch.tensor([7.99, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    th = torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)  # gravity pushes sample 0 past the speed limit
    _, next_thdot, _ = pendulum_step(th, thdot, torque, params)
    grad_torque, grad_thdot = torch.autograd.grad(next_thdot.sum(), (torque, thdot))
    assert next_thdot[0].item() == 8.0
    assert grad_torque.tolist() == [0.0, 0.0, pytest.approx(3.0 * DEFAULT_PARAMS["dt"])]
    assert grad_thdot.tolist() == [0.0, 1.0, 1.0]


def test_gradcheck_return_of_a_20_step_rollout_wrt_policy_parameters():
    """d(return)/d(policy weights) through 20 steps of physics equals finite differences."""
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    names = [name for name, _ in policy.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_() for p in policy.parameters())
    params = PendulumParams.default(dtype=torch.float64)
    th0, thdot0 = sample_initial_state([4], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    max_speed_seen = []

    def episode_return(*weights: torch.Tensor) -> torch.Tensor:
        th, thdot, total = th0, thdot0, torch.zeros((), dtype=torch.float64)
        for _ in range(20):
            # 2 tanh(.) lies strictly inside the torque range: the torque clip never hits its kink.
            torque = 2.0 * torch.tanh(
                functional_call(policy, dict(zip(names, weights, strict=True)), observation(th, thdot))
            )
            th, thdot, reward = pendulum_step(th, thdot, torque.squeeze(-1), params)
            total = total + reward.sum()
            max_speed_seen.append(thdot.abs().max().item())
        return total

    assert torch.autograd.gradcheck(episode_return, weights)
    assert max(max_speed_seen) < 7.5  # the speed clip stayed inactive along the rollout
    grads = torch.autograd.grad(episode_return(*weights), weights)
    assert all(torch.isfinite(grad).all() and grad.abs().sum() > 0 for grad in grads)


# ---------------------------------------------------------------------------------------------- pure function
def test_step_is_pure_and_broadcasts_any_batch_shape():
    gen = torch.Generator().manual_seed(0)
    th = torch.randn(2, 3, 4, generator=gen)
    thdot = torch.randn(2, 3, 4, generator=gen)
    torque = torch.randn(2, 3, 4, generator=gen)
    params = PendulumParams.default(batch_shape=[3, 1])  # broadcasts against [2, 3, 4]
    copies = [t.clone() for t in (th, thdot, torque, *params)]

    out1 = pendulum_step(th, thdot, torque, params)
    out2 = pendulum_step(th, thdot, torque, params)
    for a, b in zip(out1, out2, strict=True):
        assert a.shape == (2, 3, 4)
        assert torch.equal(a, b)  # deterministic: no RNG inside
    for before, after in zip(copies, (th, thdot, torque, *params), strict=True):
        assert torch.equal(before, after)  # no in-place writes to the inputs

    single = pendulum_step(th[1, 2, 3], thdot[1, 2, 3], torque[1, 2, 3], PendulumParams.default())
    for batched, one in zip(out1, single, strict=True):
        torch.testing.assert_close(batched[1, 2, 3], one)


def test_step_works_under_vmap():
    th, thdot, torque = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    params = PendulumParams.default()
    vmapped = torch.func.vmap(pendulum_step, in_dims=(0, 0, 0, None))(th, thdot, torque, params)
    for a, b in zip(vmapped, pendulum_step(th, thdot, torque, params), strict=True):
        torch.testing.assert_close(a, b)


def test_torque_clip_and_non_finite_torques():
    """Torques beyond the limit, including +-inf, act like +-max_torque; NaN propagates (documented behaviour)."""
    params = PendulumParams.default(dtype=torch.float64)
    th = torch.full((4,), 0.3, dtype=torch.float64)
    thdot = torch.full((4,), -0.5, dtype=torch.float64)
    big = pendulum_step(th, thdot, torch.tensor([3.0, -7.0, math.inf, -math.inf], dtype=torch.float64), params)
    clipped = pendulum_step(th, thdot, torch.tensor([2.0, -2.0, 2.0, -2.0], dtype=torch.float64), params)
    for a, b in zip(big, clipped, strict=True):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)

    nan = pendulum_step(th[:1], thdot[:1], torch.tensor([math.nan], dtype=torch.float64), params)
    assert all(torch.isnan(x).all() for x in nan)


def test_reward_bounds_and_upright_optimum():
    gen = torch.Generator().manual_seed(0)
    th = (torch.rand(10_000, generator=gen, dtype=torch.float64) - 0.5) * 20.0
    thdot = (torch.rand(10_000, generator=gen, dtype=torch.float64) - 0.5) * 16.0
    torque = (torch.rand(10_000, generator=gen, dtype=torch.float64) - 0.5) * 10.0
    _, _, reward = pendulum_step(th, thdot, torque, PendulumParams.default(dtype=torch.float64))
    assert reward.min() >= REWARD_MIN and reward.max() <= 0.0
    assert REWARD_MIN == pytest.approx(-16.2736044)
    zero = torch.zeros(1, dtype=torch.float64)
    assert pendulum_step(zero, zero, zero, PendulumParams.default(dtype=torch.float64))[2].item() == 0.0


def test_angle_normalize_matches_gymnasium_formula():
    x = torch.linspace(-20.0, 20.0, 1001, dtype=torch.float64)
    wrapped = angle_normalize(x)
    assert wrapped.min() >= -math.pi and wrapped.max() < math.pi
    torch.testing.assert_close(torch.cos(wrapped), torch.cos(x))
    torch.testing.assert_close(torch.sin(wrapped), torch.sin(x))
    assert angle_normalize(torch.tensor(math.pi, dtype=torch.float64)).item() == pytest.approx(-math.pi)
    assert angle_normalize(torch.tensor(2 * math.pi + 0.5, dtype=torch.float64)).item() == pytest.approx(0.5)


def test_observation_and_is_upright():
    th = torch.tensor([[0.0, math.pi / 2], [math.pi, 2 * math.pi + 0.05]])
    thdot = torch.tensor([[0.5, -1.0], [2.0, 0.2]])
    obs = observation(th, thdot)
    assert obs.shape == (2, 2, 3)
    torch.testing.assert_close(obs, torch.stack((th.cos(), th.sin(), thdot), dim=-1))
    torch.testing.assert_close(obs[0, 1], torch.tensor([0.0, 1.0, -1.0]))
    assert is_upright(th, thdot).tolist() == [[True, False], [False, True]]
    assert is_upright(torch.tensor(0.0), torch.tensor(1.5)).item() is False


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["dt", "m", "l", "max_torque"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_validate_params_rejects_non_positive(name, value):
    params = PendulumParams.default(batch_shape=[5])._asdict()
    params[name] = params[name].clone().index_fill(0, torch.tensor([2]), value)
    with pytest.raises(ValueError, match=rf"params\.{name} must be > 0"):
        validate_params(params)


@pytest.mark.parametrize("name", list(PendulumParams._fields))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_validate_params_rejects_non_finite(name, value):
    params = PendulumParams.default(batch_shape=[5])._replace(**{name: torch.tensor([1.0, 1.0, value, 1.0, 1.0])})
    if name == "wall_angle" and value == math.inf:
        validate_params(params)  # +inf is the one non-finite value allowed: no wall (a batch may mix walls)
        return
    with pytest.raises(ValueError, match=rf"params\.{name} contains NaN or inf"):
        validate_params(params)


@pytest.mark.parametrize("name", ["g", "max_speed"])
def test_validate_params_rejects_negative_gravity_and_speed_limit(name):
    with pytest.raises(ValueError, match=rf"params\.{name} must be >= 0"):
        validate_params(PendulumParams.default(**{name: -1.0}))
    validate_params(PendulumParams.default(**{name: 0.0}))  # zero gravity / a locked pendulum are allowed


def test_validate_params_rejects_missing_key_and_wrong_shape():
    params = PendulumParams.default(batch_shape=[4])._asdict()
    del params["l"]
    with pytest.raises(ValueError, match=r"missing \['l'\]"):
        validate_params(params)
    params = PendulumParams.default(batch_shape=[4])._replace(m=torch.ones(3))
    with pytest.raises(ValueError, match=r"params\.m has shape \[3\]"):
        validate_params(params, batch_shape=[4])
    validate_params(PendulumParams.default(batch_shape=[4]), batch_shape=[4])
    validate_params(PendulumParams.default(), batch_shape=[7, 2])  # scalars broadcast to any batch


def test_unknown_parameter_names_are_rejected():
    with pytest.raises(ValueError, match="unknown physical parameter.*'gravity'"):
        sample_params([3], {"gravity": (8.0, 12.0)})
    with pytest.raises(ValueError, match="unknown physical parameter.*'mass'"):
        PendulumParams.default(mass=2.0)


@pytest.mark.parametrize("bad_range", [(12.0, 8.0), (8.0, math.inf), (math.nan, 1.0)])
def test_sample_params_rejects_bad_ranges(bad_range):
    with pytest.raises(ValueError, match=r"ranges\['g'\]"):
        sample_params([3], {"g": bad_range})


def test_sample_params_rejects_ranges_that_reach_invalid_values():
    with pytest.raises(ValueError, match=r"params\.m must be > 0"):
        sample_params([64], {"m": (-1.0, 1.0)}, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- sampling
def test_sample_params_domain_randomisation():
    params = sample_params([64], {"g": (8.0, 12.0), "m": (0.5, 0.5)}, generator=torch.Generator().manual_seed(0))
    assert params.g.shape == (64,) and params.g.dtype == torch.float32
    assert params.g.min() >= 8.0 and params.g.max() <= 12.0 and params.g.std() > 0.5
    assert torch.all(params.m == 0.5)  # a degenerate range pins the value
    for name in ("l", "dt", "max_speed", "max_torque"):
        assert torch.all(getattr(params, name) == DEFAULT_PARAMS[name])
    again = sample_params([64], {"g": (8.0, 12.0), "m": (0.5, 0.5)}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(params.g, again.g)  # the generator alone decides the draw


def test_sample_initial_state_is_gymnasiums_reset_distribution():
    gen = torch.Generator().manual_seed(0)
    th, thdot = sample_initial_state([100, 50], generator=gen, dtype=torch.float64)
    assert th.shape == thdot.shape == (100, 50) and th.dtype == torch.float64
    assert th.abs().max() <= math.pi and th.abs().max() > 3.1
    assert thdot.abs().max() <= 1.0 and thdot.abs().max() > 0.99
    assert abs(th.mean().item()) < 0.05 and abs(thdot.mean().item()) < 0.02
    th2, _ = sample_initial_state([100, 50], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(th, th2)
