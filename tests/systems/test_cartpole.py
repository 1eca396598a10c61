"""Tests of the cart-pole swing-up (:mod:`research.systems.cartpole`).

Parity with Gymnasium's own ``CartPoleEnv.step`` in float64 (its discrete force replaced per step by our continuous
one), batch shapes, gradients (``torch.autograd.gradcheck``), the cost, the reset distribution, parameter
validation, the picture and the reference swing-up controller's feasibility within the horizon.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import research.systems as systems
from research.systems.cartpole import (
    COST_FORCE,
    PRESETS,
    CartPole,
    CartPoleParams,
    reference_controller,
)
from research.systems.pendulum import angle_normalize

DEFAULT = PRESETS["default"]


# ---------------------------------------------------------------------------------------------- Gymnasium parity
def gymnasium_rollout(start: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """Gymnasium CartPole-v1's own step from ``start`` [4] under ``forces`` [T] (continuous, already clipped):
    ``force_mag`` is set to ``|f|`` and the action to its sign before each step. Returns the states [T + 1, 4]."""
    cartpole = pytest.importorskip("gymnasium.envs.classic_control.cartpole")
    env = cartpole.CartPoleEnv()
    env.reset(seed=0)
    env.state = np.array(start, dtype=np.float64)
    states = [env.state.copy()]
    for f in forces:
        env.force_mag = abs(float(f))
        env.steps_beyond_terminated = None  # the swing-up never terminates; keep Gymnasium from warning
        env.step(1 if f >= 0 else 0)
        assert env.state.dtype == np.float64
        states.append(env.state.copy())
    return np.stack(states)


def parity_starts() -> np.ndarray:
    rng = np.random.default_rng(7)
    fixed = [
        [0.0, 0.0, math.pi, 0.0],  # hanging at rest
        [0.0, 0.0, 0.0, 0.0],  # upright at rest
        [0.3, -0.5, 0.2, 1.0],  # near upright, moving
        [-1.0, 2.0, -2.5, -6.0],  # fast, past horizontal
        [2.0, 1.0, 7.0, 9.0],  # beyond the track, angle beyond 2 pi
    ]
    random = np.column_stack([rng.uniform(-2, 2, 5), rng.uniform(-3, 3, 5), rng.uniform(-4, 4, 5),
                              rng.uniform(-8, 8, 5)])
    return np.concatenate([np.array(fixed), random])


def test_every_state_matches_gymnasium_float64():
    """Ten starts, 50 steps each, forces uniform in [-13, 13] (the clip at 10 N is hit): every state to 1e-10."""
    starts = parity_starts()
    rng = np.random.default_rng(11)
    forces = rng.uniform(-13.0, 13.0, size=(len(starts), 50))
    state = torch.as_tensor(starts, dtype=torch.float64)
    ours = [state]
    for t in range(forces.shape[1]):
        state, _ = DEFAULT.step(state, torch.as_tensor(forces[:, t : t + 1]))
        ours.append(state)
    ours = torch.stack(ours, dim=1).numpy()  # [10, 51, 4]
    assert (abs(forces) > 10).mean() > 0.15
    worst = 0.0
    for i, start in enumerate(starts):
        theirs = gymnasium_rollout(start, np.clip(forces[i], -10.0, 10.0))
        worst = max(worst, float(np.abs(ours[i] - theirs).max()))
    assert worst < 1e-10, worst


def test_reward_is_the_documented_cost():
    """The reward against an independent numpy evaluation of the docstring's formula (state before the update)."""
    rng = np.random.default_rng(3)
    s = rng.uniform([-4, -3, -10, -8], [4, 3, 10, 8], size=(64, 4))
    f = rng.uniform(-13, 13, size=(64, 1))
    _, reward = DEFAULT.step(torch.as_tensor(s), torch.as_tensor(f))
    wrapped = (s[:, 2] + math.pi) % (2 * math.pi) - math.pi
    u = np.clip(f[:, 0], -10, 10)
    cost = (wrapped**2 + 0.1 * s[:, 3] ** 2 + 0.05 * s[:, 0] ** 2 + 0.1 * s[:, 1] ** 2 + COST_FORCE * u**2
            + 10.0 * np.maximum(np.abs(s[:, 0]) - 2.4, 0.0) ** 2)
    np.testing.assert_allclose(reward.numpy(), -cost, rtol=1e-12, atol=1e-12)


def test_cost_is_zero_upright_at_rest_and_that_state_is_an_equilibrium():
    state = torch.zeros(4, dtype=torch.float64)
    next_state, reward = DEFAULT.step(state, torch.zeros(1, dtype=torch.float64))
    assert reward.item() == 0.0
    assert torch.equal(next_state, state)
    # hanging down costs pi**2 per step
    hanging = torch.tensor([0.0, 0.0, math.pi, 0.0], dtype=torch.float64)
    assert DEFAULT.step(hanging, torch.zeros(1, dtype=torch.float64))[1].item() == pytest.approx(-math.pi**2)


def test_track_penalty_is_soft_and_can_be_removed():
    x = torch.tensor([[2.4, 0, 0, 0], [3.0, 0, 0, 0], [-3.4, 0, 0, 0]], dtype=torch.float64)
    zero = torch.zeros(3, 1, dtype=torch.float64)
    _, reward = DEFAULT.step(x, zero)
    expected = -(0.05 * x[:, 0] ** 2 + 10.0 * torch.tensor([0.0, 0.6**2, 1.0]))
    torch.testing.assert_close(reward, expected.double())
    _, free = systems.make("cartpole", track_limit=math.inf).step(x, zero)
    torch.testing.assert_close(free, -0.05 * x[:, 0] ** 2)
    # the reward's gradient points back onto the track
    xs = x.clone().requires_grad_(True)
    DEFAULT.step(xs, zero)[1].sum().backward()
    assert xs.grad[1, 0] < 0 and xs.grad[2, 0] > 0


# ---------------------------------------------------------------------------------------------- shapes and params
@pytest.mark.parametrize("batch_shape", [(), (5,), (3, 4)])
def test_batch_shapes_agree(batch_shape):
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(60, 4, generator=gen, dtype=torch.float64) * 3
    force = torch.randn(60, 1, generator=gen, dtype=torch.float64) * 8
    n = math.prod(batch_shape)
    ref_state, ref_reward = DEFAULT.step(flat[:n], force[:n])
    state, reward = DEFAULT.step(flat[:n].reshape(*batch_shape, 4), force[:n].reshape(*batch_shape, 1))
    assert state.shape == (*batch_shape, 4) and reward.shape == batch_shape
    torch.testing.assert_close(state.reshape(n, 4), ref_state, rtol=0, atol=0)
    torch.testing.assert_close(reward.reshape(n), ref_reward, rtol=0, atol=0)
    obs = DEFAULT.observe(flat[:n].reshape(*batch_shape, 4))
    assert obs.shape == (*batch_shape, 5)
    init = DEFAULT.initial_state(batch_shape, generator=gen)
    assert init.shape == (*batch_shape, 4) and init.dtype == torch.float32


def test_per_episode_params_match_fixed_variants():
    """A Params tuple of [B] tensors (e.g. from a randomized preset) steps each episode like its fixed variant."""
    system = PRESETS["randomized"]
    params = system.params((6,), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = system.initial_state((6,), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    force = torch.linspace(-10, 10, 6, dtype=torch.float64).unsqueeze(-1)
    for constants in (params, system.constants(params)):
        batched, reward = system.step(state, force, constants)
        for i in range(6):
            fixed = systems.make("cartpole", masspole=params.masspole[i].item(), length=params.length[i].item())
            one, r = fixed.step(state[i], force[i])
            torch.testing.assert_close(batched[i], one, rtol=1e-14, atol=1e-14)
            torch.testing.assert_close(reward[i], r, rtol=1e-14, atol=1e-14)


def test_observation_is_continuous_in_the_angle():
    state = torch.tensor([[0.1, 0.2, math.pi - 1e-9, 0.3], [0.1, 0.2, -math.pi + 1e-9, 0.3]], dtype=torch.float64)
    obs = DEFAULT.observe(state)
    torch.testing.assert_close(obs[0], obs[1], rtol=0, atol=1e-8)
    torch.testing.assert_close(obs[0, [0, 1, 4]], state[0, [0, 1, 3]])
    obs2, aux = DEFAULT.observe_for_step(state)
    torch.testing.assert_close(obs2, obs)
    torch.testing.assert_close(DEFAULT.step(state, torch.ones(2, 1, dtype=torch.float64), aux=aux)[0],
                               DEFAULT.step(state, torch.ones(2, 1, dtype=torch.float64))[0], rtol=0, atol=0)


def test_gradients_flow_gradcheck():
    """Three steps, gradients to the state, the forces and the per-episode masspole and length, in float64."""
    gen = torch.Generator().manual_seed(4)
    state = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    forces = (torch.randn(3, 3, 1, generator=gen, dtype=torch.float64) * 4).requires_grad_(True)
    masspole = torch.full((3,), 0.1, dtype=torch.float64, requires_grad=True)
    length = torch.full((3,), 0.5, dtype=torch.float64, requires_grad=True)

    def rollout(s, f, m, half):
        params = DEFAULT.default_params(s)._replace(masspole=m, length=half)
        total = torch.zeros(3, dtype=torch.float64)
        for t in range(3):
            s, r = DEFAULT.step(s, f[t], params)
            total = total + r
        return s, total

    assert torch.autograd.gradcheck(rollout, (state, forces, masspole, length))


# ---------------------------------------------------------------------------------------------- reset, goal, errors
def test_reset_distribution_is_near_hanging_down_and_reproducible():
    s = DEFAULT.initial_state((4096,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    again = DEFAULT.initial_state((4096,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(s, again)
    offset = s - torch.tensor([0.0, 0.0, math.pi, 0.0], dtype=torch.float64)
    assert offset.abs().max() < 0.05 and offset.abs().max() > 0.049  # uniform on (-0.05, 0.05)
    assert offset.mean(0).abs().max() < 0.003
    assert (DEFAULT.goal_error(s) > math.pi - 0.05).all()
    assert not DEFAULT.is_success(s).any()


def test_goal_error_and_success():
    s = torch.tensor([[0.0, 0.0, 2 * math.pi + 0.3, 0.5],  # upright (wrapped), slow: success
                      [0.0, 0.0, 0.3, 1.5],  # too fast
                      [0.0, 0.0, 0.6, 0.0],  # too far from upright
                      [2.5, 0.0, 0.0, 0.0],  # off the track
                      [-2.3, 3.0, -0.4, -0.9]], dtype=torch.float64)  # success (cart speed does not matter)
    torch.testing.assert_close(DEFAULT.goal_error(s), torch.tensor([0.3, 0.3, 0.6, 0.0, 0.4], dtype=torch.float64))
    assert DEFAULT.is_success(s).tolist() == [True, False, False, False, True]


@pytest.mark.parametrize(("field", "value"), [("masspole", -1.0), ("masscart", 0.0), ("length", 0.0),
                                              ("tau", -0.01), ("force_max", math.nan), ("gravity", -9.8),
                                              ("track_limit", -1.0), ("track_penalty", -1.0)])
def test_bad_parameters_raise_one_line_value_errors(field, value):
    with pytest.raises(ValueError, match=field) as info:
        systems.make("cartpole", **{field: value})
    assert "\n" not in str(info.value)


def test_registry_and_class_attributes():
    assert systems.SYSTEMS["cartpole"] is CartPole
    system = systems.make("cartpole", masspole=0.2)
    assert isinstance(system, CartPole) and system.value("masspole") == 0.2
    assert (system.state_dim, system.obs_dim, system.action_dim) == (4, 5, 1)
    assert system.max_action == 10.0 and system.deterministic and not system.needs_noise
    assert CartPole.Params is CartPoleParams and CartPoleParams().gravity == 9.8
    assert systems.get_system("cartpole", "heavy_pole").value("masspole") == 0.5


def test_draw_returns_an_image():
    state = torch.tensor([0.5, 0.0, 0.4, 0.0])
    image = DEFAULT.draw(state, torch.tensor([6.0]), size=96)
    assert image.size == (96, 96) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.min() < 100  # the cart is drawn
    assert not np.array_equal(pixels, np.asarray(DEFAULT.draw(torch.tensor([0.5, 0.0, math.pi, 0.0]), size=96)))


# ---------------------------------------------------------------------------------------------- feasibility
def test_reference_controller_swings_up_within_the_horizon():
    """100 reset states, the full horizon: every episode ends held upright on the track (mean return about -576)."""
    system = DEFAULT
    state = system.initial_state((100,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    total = torch.zeros(100, dtype=torch.float64)
    for _ in range(system.horizon):
        action = reference_controller(system, state)
        assert action.shape == (100, 1) and action.abs().max() <= 10.0
        state, reward = system.step(state, action)
        total = total + reward
    assert system.is_success(state).all()
    assert angle_normalize(state[:, 2]).abs().max() < 0.05
    assert -600.0 < total.mean().item() < -550.0


@pytest.mark.cuda
def test_step_on_cuda_matches_cpu():
    state = DEFAULT.initial_state((256,), generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2
    force = torch.linspace(-12, 12, 256, dtype=torch.float64).unsqueeze(-1)
    cpu = DEFAULT.step(state, force)
    gpu = DEFAULT.step(state.cuda(), force.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)
