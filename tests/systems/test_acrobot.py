"""The acrobot system: parity with Gymnasium Acrobot-v1, batch shapes, gradients, cost, reset, parameters, controller."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import research.systems as systems
from research.systems.acrobot import (
    PRESETS,
    Acrobot,
    AcrobotParams,
    acrobot_step,
    energy,
    reference_controller,
    step_constants,
    wrap_state,
)

gym = pytest.importorskip("gymnasium")
F64 = torch.float64
UPRIGHT = (math.pi, 0.0, 0.0, 0.0)


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` with the two angle columns taken modulo 2 pi (into [-pi, pi))."""
    d = a - b
    d[..., :2] = (d[..., :2] + math.pi) % (2 * math.pi) - math.pi
    return d


def _parity_starts() -> np.ndarray:
    """Hanging near rest (the reset), anywhere at moderate speed, and beyond both speed limits (the clip)."""
    rng = np.random.default_rng(7)
    reset = rng.uniform(-0.1, 0.1, (3, 4))
    anywhere = rng.uniform(-1, 1, (4, 4)) * np.array([math.pi, math.pi, 3.0, 6.0])
    fast = rng.uniform(-1, 1, (3, 4)) * np.array([math.pi, math.pi, 1.3 * 4 * math.pi, 1.3 * 9 * math.pi])
    fast[:, 2:] = np.sign(fast[:, 2:]) * np.maximum(np.abs(fast[:, 2:]), [4 * math.pi, 9 * math.pi])
    upright = np.array([[math.pi - 0.05, 0.1, 0.0, 0.0]])
    return np.concatenate([reset, anywhere, fast, upright])


@pytest.mark.parametrize("torques", [(-1.0, 0.0, 1.0), (-2.0, 0.5, 2.0)])
def test_matches_gymnasium_step_for_step(torques: tuple[float, float, float]) -> None:
    """Every state of 50 steps from 11 starts, modulo 2 pi in the angles, in float64 (batched on our side).

    ``(-1, 0, 1)`` are Gymnasium's own torques; ``(-2, 0.5, 2)`` sets its ``AVAIL_TORQUE`` to our continuous range.
    One step from each of Gymnasium's own states agrees to 1e-13 (measured 2e-15). Whole trajectories agree to
    1e-9 from the reset, moderate-speed and near-upright starts (measured 6e-11 at worst), and to 1e-8 from the three
    starts beyond both speed limits (measured 6e-9): there link 2 spins at 9 pi rad/s, its unwrapped angle grows to
    hundreds of radians (an ulp of 6e-14 against Gymnasium's wrapped angle), and the chaotic dynamics amplify such
    ulp-level differences about 1e5-fold over 50 steps.
    """
    starts = _parity_starts()
    steps = 50
    rng = np.random.default_rng(11)
    actions = rng.integers(0, 3, (len(starts), steps))
    env = gym.make("Acrobot-v1").unwrapped
    env.AVAIL_TORQUE = list(torques)
    env.reset(seed=0)
    reference = np.zeros((len(starts), steps, 4))
    observations = np.zeros((len(starts), steps, 6), dtype=np.float32)
    for i, start in enumerate(starts):
        env.state = start.astype(np.float64).copy()
        for t in range(steps):
            obs, *_ = env.step(int(actions[i, t]))
            reference[i, t] = env.state
            observations[i, t] = obs
    system = systems.make("acrobot")
    state = torch.tensor(starts, dtype=F64)
    torque_table = torch.tensor(torques, dtype=F64)
    constants = system.constants(like=state)
    worst = np.zeros(len(starts))
    for t in range(steps):
        state, _ = system.step(state, torque_table[actions[:, t]][:, None], constants)
        worst = np.maximum(worst, np.abs(_angle_diff(state.numpy(), reference[:, t])).max(axis=1))
        np.testing.assert_allclose(system.observe(state).numpy(), observations[:, t], atol=1e-6)
    fast = np.arange(len(starts))[7:10]
    assert np.delete(worst, fast).max() < 1e-9, worst
    assert worst[fast].max() < 1e-8, worst
    # one step from each of Gymnasium's states
    before = torch.tensor(reference[:, :-1].reshape(-1, 4))
    after, _ = system.step(before, torque_table[actions[:, 1:].reshape(-1)][:, None])
    assert np.abs(_angle_diff(after.numpy(), reference[:, 1:].reshape(-1, 4))).max() < 1e-13
    # the speed limits were hit (the fast starts) and wrapping mattered (some angle left [-pi, pi])
    assert np.abs(reference[:, :, 3]).max() == pytest.approx(9 * math.pi)
    assert (state[:, :2].abs() > math.pi).any()
    # wrap_state gives Gymnasium's representation
    np.testing.assert_allclose(wrap_state(state).numpy(), reference[:, -1], rtol=0, atol=1e-8)


def test_torque_is_clipped_to_max_torque() -> None:
    system = systems.make("acrobot")
    state = torch.tensor([[0.3, -0.2, 0.5, 1.0]], dtype=F64)
    at_limit = system.step(state, torch.tensor([[2.0]], dtype=F64))
    beyond = system.step(state, torch.tensor([[7.0]], dtype=F64))
    assert torch.equal(at_limit[0], beyond[0]) and torch.equal(at_limit[1], beyond[1])
    weak = systems.get_system("acrobot", "weak")
    assert torch.equal(weak.step(state, torch.tensor([[1.0]], dtype=F64))[0],
                       weak.step(state, torch.tensor([[-5.0]], dtype=F64).neg())[0])


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_batch_shapes_agree(shape: tuple[int, ...]) -> None:
    system = systems.make("acrobot")
    gen = torch.Generator().manual_seed(3)
    flat = torch.rand(12, 4, generator=gen, dtype=F64) * 6 - 3
    actions = torch.rand(12, 1, generator=gen, dtype=F64) * 6 - 3
    n = math.prod(shape)
    next_flat, reward_flat = system.step(flat[:n], actions[:n])
    next_state, reward = system.step(flat[:n].reshape(*shape, 4), actions[:n].reshape(*shape, 1))
    assert next_state.shape == (*shape, 4) and reward.shape == shape
    torch.testing.assert_close(next_state.reshape(n, 4), next_flat, rtol=0, atol=1e-12)
    torch.testing.assert_close(reward.reshape(n), reward_flat, rtol=0, atol=1e-12)
    assert system.observe(next_state).shape == (*shape, 6)
    assert system.goal_error(next_state).shape == shape and system.is_success(next_state).shape == shape
    # per-episode parameters [*B] give the same step as the fixed values
    params = system.params(shape, dtype=F64)
    with_params = system.step(flat[:n].reshape(*shape, 4), actions[:n].reshape(*shape, 1), params)
    torch.testing.assert_close(with_params[0], next_state, rtol=0, atol=1e-12)
    # float32 runs too
    next32, reward32 = system.step(flat[:n].reshape(*shape, 4).float(), actions[:n].reshape(*shape, 1).float())
    assert next32.dtype == torch.float32 and reward32.dtype == torch.float32
    torch.testing.assert_close(next32.double(), next_state, rtol=1e-4, atol=1e-4)


def test_per_episode_parameters_change_only_their_episode() -> None:
    system = systems.make("acrobot")
    params = system.params((2,), dtype=F64)._replace(link_mass_2=torch.tensor([1.0, 2.0], dtype=F64))
    state = torch.tensor([[1.0, 0.5, 0.2, -0.3]] * 2, dtype=F64)
    action = torch.full((2, 1), 0.7, dtype=F64)
    out, _ = system.step(state, action, params)
    heavy, _ = systems.make("acrobot", link_mass_2=2.0).step(state[1], action[1])
    torch.testing.assert_close(out[0], system.step(state[0], action[0])[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(out[1], heavy, rtol=0, atol=1e-14)
    assert not torch.allclose(out[0], out[1])


def test_gradients_pass_gradcheck() -> None:
    """Three steps (states, action, parameters) in float64, away from the speed and torque clips."""
    system = systems.make("acrobot")
    gen = torch.Generator().manual_seed(5)
    state = (torch.rand(2, 4, generator=gen, dtype=F64) * 2 - 1).requires_grad_()
    actions = (torch.rand(2, 3, 1, generator=gen, dtype=F64) * 2 - 1).requires_grad_()
    masses = torch.tensor([1.0, 1.2], dtype=F64, requires_grad=True)
    moi = torch.tensor([1.0, 0.8], dtype=F64, requires_grad=True)

    def rollout(x, u, m2, i1):
        params = system.params((2,), dtype=F64)._replace(link_mass_2=m2, link_moi_1=i1)
        c = system.constants(params)
        total = 0.0
        for t in range(3):
            x, r = system.step(x, u[:, t], c)
            total = total + r
        return x, total

    assert torch.autograd.gradcheck(rollout, (state, actions, masses, moi))


def test_long_horizon_gradients_grow() -> None:
    """Chaos, not a bug: from high-energy starts (no torque) the return's gradient with respect to the start grows by
    orders of magnitude between 10 and 100 steps (about 3 to 1e4 when measured)."""
    system = systems.make("acrobot")
    gen = torch.Generator().manual_seed(0)
    start = torch.tensor([2.0, 0.5, 0.0, 0.0], dtype=F64) + 0.1 * torch.rand(8, 4, generator=gen, dtype=F64)

    def gradient_norm(steps: int) -> float:
        x0 = start.clone().requires_grad_()
        x, total = x0, 0.0
        for _ in range(steps):
            x, r = system.step(x, torch.zeros(8, 1, dtype=F64))
            total = total + r
        (grad,) = torch.autograd.grad(total.sum(), x0)
        return grad.norm(dim=1).median().item()

    assert gradient_norm(100) > 100 * gradient_norm(10)


def test_cost_is_minimal_at_the_upright_at_rest() -> None:
    system = systems.make("acrobot")
    upright = torch.tensor(UPRIGHT, dtype=F64)
    next_state, reward = system.step(upright, torch.zeros(1, dtype=F64))
    assert reward.item() == 0.0
    torch.testing.assert_close(next_state, upright, rtol=0, atol=1e-12)  # an equilibrium (to rounding)
    hanging = system.step(torch.zeros(4, dtype=F64), torch.zeros(1, dtype=F64))[1]
    assert hanging.item() == pytest.approx(-1.0)
    # the reward is -cost(state, u) of the state before the step: everywhere else it is negative
    gen = torch.Generator().manual_seed(1)
    states = torch.rand(20000, 4, generator=gen, dtype=F64) * torch.tensor([4 * math.pi, 4 * math.pi, 8, 8]) - \
        torch.tensor([math.pi, 2 * math.pi, 4, 4], dtype=F64)
    actions = torch.rand(20000, 1, generator=gen, dtype=F64) * 4 - 2
    rewards = system.step(states, actions)[1]
    assert (rewards < 0).all()
    near = upright + torch.tensor([[1e-3, 0, 0, 0], [0, 1e-3, 0, 0], [0, 0, 1e-3, 0], [0, 0, 0, 1e-3]], dtype=F64)
    assert (system.step(near, torch.zeros(4, 1, dtype=F64))[1] < 0).all()
    assert system.step(upright, torch.full((1,), 1e-3, dtype=F64))[1] < 0
    # the goal error is 0 there, pi hanging, and the same for every 2 pi shift of the angles
    assert system.goal_error(upright).item() == pytest.approx(0.0, abs=1e-12)
    assert system.goal_error(torch.zeros(4, dtype=F64)).item() == pytest.approx(math.pi)
    shifted = upright + torch.tensor([2 * math.pi, -4 * math.pi, 0, 0], dtype=F64)
    assert system.goal_error(shifted).item() == pytest.approx(0.0, abs=1e-12)
    assert system.is_success(shifted) and not system.is_success(shifted + torch.tensor([0, 0, 0, 2.0], dtype=F64))
    assert not system.is_success(torch.tensor([math.pi, 0.5, 0, 0], dtype=F64))


def test_reset_distribution() -> None:
    system = systems.make("acrobot")
    state = system.initial_state((20000,), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert state.shape == (20000, 4)
    assert state.min() >= -0.1 and state.max() <= 0.1
    torch.testing.assert_close(state.mean(0), torch.zeros(4, dtype=F64), rtol=0, atol=3e-3)
    torch.testing.assert_close(state.std(0), torch.full((4,), 0.2 / math.sqrt(12), dtype=F64), rtol=0.02, atol=0)
    again = system.initial_state((20000,), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(state, again)
    assert system.initial_state((3, 2), generator=torch.Generator().manual_seed(0)).shape == (3, 2, 4)
    # Gymnasium's reset draws from the same box
    env = gym.make("Acrobot-v1").unwrapped
    env.reset(seed=1)
    assert np.abs(env.state).max() <= 0.1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"link_mass_1": -1.0}, "link_mass_1"), ({"dt": 0.0}, "dt"), ({"max_torque": 0.0}, "max_torque"),
     ({"link_moi_2": math.nan}, "link_moi_2"), ({"link_com_pos_1": 1.5}, "link_com_pos_1"),
     ({"cost_velocity": -0.1}, "cost_velocity"), ({"link_mas_1": 1.0}, "link_mas_1")],
)
def test_bad_parameters_raise_one_line_errors(overrides: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        systems.make("acrobot", **overrides)
    assert "\n" not in str(info.value)


def test_registry_presets_and_attributes() -> None:
    assert systems.SYSTEMS["acrobot"] is Acrobot
    system = systems.get_system("acrobot", "weak")
    assert system.max_action == 1.0 and systems.make("acrobot").max_action == 2.0
    assert set(PRESETS) >= {"default", "weak"}
    assert (system.state_dim, system.obs_dim, system.action_dim) == (4, 6, 1)
    assert system.deterministic and not system.needs_noise and Acrobot.horizon == 200
    assert isinstance(system.params((2,)), AcrobotParams)
    ranged = systems.get_system("acrobot", ranges={"link_mass_2": (0.8, 1.2)})
    drawn = ranged.params((1000,), generator=torch.Generator().manual_seed(0))
    assert 0.8 <= drawn.link_mass_2.min() and drawn.link_mass_2.max() <= 1.2


def test_energy_is_conserved_without_torque_and_limits() -> None:
    """A check on the dynamics independent of Gymnasium: RK4 at dt = 0.01 keeps the energy to ~1e-7."""
    system = systems.make("acrobot", dt=0.01)
    params = system.params((), dtype=F64)
    state = torch.tensor([[1.0, -0.5, 0.3, 1.0], [2.5, 1.0, -1.0, 2.0]], dtype=F64)
    e0 = energy(state, params)
    c = step_constants(params)
    for _ in range(300):
        state, _ = acrobot_step(state, torch.zeros(2, 1, dtype=F64), c)
    torch.testing.assert_close(energy(state, params), e0, rtol=0, atol=1e-6)


def test_reference_controller_balances_and_swings_up() -> None:
    system = systems.make("acrobot")
    # near the top, inside the saturated LQR's thin basin (V = e^T P e < 2): it holds there without going round
    upright = torch.tensor(UPRIGHT, dtype=F64)
    state = upright + torch.tensor([[0.005, -0.005, 0.01, -0.01], [-0.002, 0.004, 0.0, 0.02]], dtype=F64)
    for _ in range(30):
        action = reference_controller(system, state)
        assert action.shape == (2, 1) and action.abs().max() <= 2.0
        state, _ = system.step(state, action)
    torch.testing.assert_close(state, upright.expand(2, 4), rtol=0, atol=1e-3)
    assert reference_controller(system, state[0]).shape == (1,)
    # from the first evaluation start (hanging) it swings up and holds within the horizon
    state = system.initial_state((1,), generator=torch.Generator().manual_seed(1_000_003), dtype=F64)
    total = 0.0
    for _ in range(system.horizon):
        state, reward = system.step(state, reference_controller(system, state))
        total += reward.item()
    assert system.is_success(state).all()
    assert total > -100.0


def test_draw_returns_a_picture() -> None:
    system = systems.make("acrobot")
    image = system.draw(torch.tensor([0.5, 1.0, 0.0, 0.0]), torch.tensor([1.5]), size=96)
    assert image.size == (96, 96)
    pixels = np.asarray(image)
    assert pixels.shape == (96, 96, 3) and (pixels < 250).any() and (pixels == 255).any()
    assert np.asarray(system.draw(torch.tensor(UPRIGHT), None, size=64)).shape == (64, 64, 3)
