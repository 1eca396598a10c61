"""Tests of the physics presets (:mod:`research.envs.presets`) and of :class:`PendulumEnv` on a preset."""

from __future__ import annotations

import math

import pytest
import torch

from research.envs import PendulumEnv
from research.envs.physics import (
    DEFAULT_PARAMS,
    GYMNASIUM_FEATURES,
    PendulumParams,
    PhysicsFeatures,
    pendulum_step,
    physics_features,
    sample_initial_state,
)
from research.envs.presets import PRESETS, Physics, get_physics
from research.rollout import fused_rollout, initial_state

REQUIRED = ("default", "weak", "damped", "coulomb", "coulomb_smooth", "wall", "wall_soft", "noisy", "randomized")


def test_registry_holds_the_named_presets():
    assert set(REQUIRED) <= set(PRESETS)
    for name, physics in PRESETS.items():
        assert physics.name == name and physics.description
    assert PRESETS["default"].fixed == {} and PRESETS["default"].ranges == {}
    assert PRESETS["default"].features == GYMNASIUM_FEATURES and PRESETS["default"].deterministic


@pytest.mark.parametrize("name", REQUIRED)
def test_every_preset_builds_params_and_states_its_features_cover(name):
    physics = get_physics(name)
    gen = torch.Generator().manual_seed(0)
    params = physics.params((5, 4), generator=gen)
    assert isinstance(params, PendulumParams)
    assert all(p.shape == (5, 4) and p.dtype == torch.float32 for p in params)
    th, thdot = physics.initial_angles((5, 4), generator=gen, dtype=torch.float64)
    assert th.shape == thdot.shape == (5, 4) and th.dtype == torch.float64
    needed = physics_features(params)
    assert physics.features | needed == physics.features  # the static features cover every draw
    for field, value in physics.fixed.items():
        assert torch.all(getattr(params, field) == torch.tensor(value, dtype=torch.float32))
    assert physics.deterministic == (name not in ("noisy", "randomized"))


def test_preset_magnitudes():
    assert get_physics("weak").max_torque == 1.0
    assert get_physics("coulomb").fixed == {"friction": 0.5}
    assert get_physics("coulomb_smooth").features == PhysicsFeatures(friction_smooth=True)
    assert get_physics("wall").fixed["wall_angle"] == pytest.approx(math.pi / 4)
    assert get_physics("wall").features == PhysicsFeatures(hard_wall=True)
    assert get_physics("wall_soft").features == PhysicsFeatures(soft_wall=True)
    assert get_physics("noisy").features == PhysicsFeatures(noise=True)
    assert get_physics("randomized").ranges == {"m": (0.7, 1.3), "l": (0.7, 1.3)}


def test_unknown_names_are_errors_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown physics 'wal'; expected one of \['default', 'weak'"):
        get_physics("wal")
    with pytest.raises(ValueError, match=r"unknown physical parameter.*'wal_angle'.*expected one of"):
        get_physics("wall", overrides={"wal_angle": 1.0})
    with pytest.raises(ValueError, match=r"unknown physical parameter.*'gravity'"):
        get_physics("default", ranges={"gravity": (9.0, 11.0)})


def test_overrides_and_ranges_merge_over_the_preset():
    physics = get_physics("wall", overrides={"wall_restitution": 0.5}, ranges={"g": (9.0, 11.0)})
    assert physics.name == "wall" and physics.ranges == {"g": (9.0, 11.0)}
    assert physics.fixed == {"wall_angle": pytest.approx(math.pi / 4), "wall_restitution": 0.5}
    assert not physics.deterministic
    pinned = get_physics("randomized", overrides={"m": 1.2})  # an override pins a drawn parameter
    assert pinned.ranges == {"l": (0.7, 1.3)} and pinned.fixed == {"m": 1.2}
    drawn = get_physics("damped", ranges={"damping": (0.0, 0.3)})  # a range draws a fixed one
    assert drawn.fixed == {} and drawn.features == PhysicsFeatures(damping=True)
    assert get_physics("default") is PRESETS["default"]
    with pytest.raises(ValueError, match=r"\['g'\] given both as a fixed value and as a range"):
        get_physics("default", overrides={"g": 9.0}, ranges={"g": (9.0, 11.0)})


@pytest.mark.parametrize(
    ("overrides", "ranges", "match"),
    [
        ({"wall_restitution": 2.0}, {}, r"params\.wall_restitution must be <= 1"),
        ({"wall_angle": 3.5}, {}, r"params\.wall_angle must be in \(0, pi\)"),
        ({"damping": -1.0}, {}, r"params\.damping must be >= 0"),
        ({}, {"m": (-1.0, 1.0)}, r"params\.m must be > 0"),
        ({}, {"g": (11.0, 9.0)}, r"ranges\['g'\] must be finite \[low, high\]"),
    ],
)
def test_bad_values_are_errors_naming_the_field(overrides, ranges, match):
    with pytest.raises(ValueError, match=match):
        get_physics("default", overrides=overrides, ranges=ranges)


def test_initial_state_is_gymnasiums_reset_in_the_wall_range():
    wall = get_physics("wall")
    phi = wall.fixed["wall_angle"]
    th, thdot = wall.initial_angles((2000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref_th, ref_thdot = sample_initial_state((2000,), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert th.min() >= phi - 2 * math.pi and th.max() <= phi and (th < -math.pi).any()
    torch.testing.assert_close(th.cos(), ref_th.cos())
    torch.testing.assert_close(th.sin(), ref_th.sin())
    assert torch.equal(thdot, ref_thdot)
    default_th, _ = get_physics("default").initial_angles((2000,), generator=torch.Generator().manual_seed(0),
                                                          dtype=torch.float64)
    assert torch.equal(default_th, ref_th)


def test_drawn_wall_angle_needs_the_params_for_the_initial_state():
    physics = get_physics("wall", ranges={"wall_angle": (0.5, 1.0)})
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="pass params= to initial_state"):
        physics.initial_angles((4,), generator=gen)
    params = physics.params((64,), generator=gen)
    th, _ = physics.initial_angles((64,), generator=gen, params=params)
    assert (th <= params.wall_angle).all() and (th >= params.wall_angle - 2 * math.pi).all()


def test_each_preset_moves_a_simple_controllers_return():
    """Energy pumping plus a linear hold (gains tuned on the default physics) scores differently on every variant."""

    def controller(max_torque: float):
        def policy(obs: torch.Tensor) -> torch.Tensor:
            c, s, w = obs.unbind(-1)
            energy = 0.5 * w * w + 15.0 * (c - 1.0)
            pump = max_torque * torch.where(w >= 0, 1.0, -1.0) * torch.where(energy < 0, 1.0, -1.0)
            hold = torch.clamp(-14.0 * torch.atan2(s, c) - 4.0 * w, -max_torque, max_torque)
            return torch.where(c > math.cos(0.4), hold, pump).unsqueeze(-1)

        return policy

    def mean_return(physics: Physics) -> float:
        gen = torch.Generator().manual_seed(5)
        params = physics.params((200,), generator=gen, dtype=torch.float64)
        th, thdot = physics.initial_angles((200,), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            out = fused_rollout(controller(physics.max_torque), initial_state(torch.stack((th, thdot), -1)), params, 200,
                                features=physics.features, generator=gen)
        return out.rewards.sum(-1).mean().item()

    default = mean_return(PRESETS["default"])
    for name in REQUIRED[1:]:
        assert abs(mean_return(PRESETS[name]) - default) > 1.0, name


# ---------------------------------------------------------------------------------------------- PendulumEnv
def test_env_on_a_preset_generates_its_params_and_steps_its_physics():
    env = PendulumEnv(seed=0, dtype=torch.float64, physics="damped")
    td = env.reset(env.gen_params(batch_size=[6]))
    assert torch.all(td["params", "damping"] == 0.1) and torch.all(td["params", "g"] == DEFAULT_PARAMS["g"])
    td["action"] = torch.full((6, 1), 0.5, dtype=torch.float64)
    out = env.step(td)["next"]
    expected = pendulum_step(td["th"], td["thdot"], td["action"].squeeze(-1), PendulumParams.default(
        (6,), dtype=torch.float64, damping=0.1))
    torch.testing.assert_close((out["th"], out["thdot"], out["reward"].squeeze(-1)), expected, rtol=0, atol=0)


def test_env_with_a_wall_resets_in_its_range_and_reports_the_weak_torque_bound():
    env = PendulumEnv(seed=0, physics=get_physics("wall"), batch_size=[256])
    td = env.reset()
    phi = get_physics("wall").fixed["wall_angle"]
    assert td["th"].max() <= phi + 1e-6 and td["th"].min() >= phi - 2 * math.pi - 1e-6
    rollout = env.rollout(20)
    assert rollout["next", "th"].max() <= phi + 1e-6
    assert PendulumEnv(seed=0, physics="weak").action_spec.space.high.item() == 1.0


def test_env_noise_comes_from_its_generator():
    def run(seed: int, physics: str = "noisy") -> torch.Tensor:
        env = PendulumEnv(seed=seed, physics=physics, batch_size=[8])
        return env.rollout(10, lambda td: td.set("action", torch.zeros(8, 1)))["next", "th"]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), run(0, "default"))  # same resets, noisy torques


def test_env_picks_up_knobs_given_to_gen_params_or_reset():
    env = PendulumEnv(seed=0, dtype=torch.float64, validate=False)
    td = env.reset(env.gen_params(batch_size=[3], friction=0.5))
    assert env.features == PhysicsFeatures(friction_sign=True)
    td["action"] = torch.zeros(3, 1, dtype=torch.float64)
    td["thdot"] = torch.full((3,), 1.0, dtype=torch.float64)
    out = env.step(td)["next"]
    free = pendulum_step(td["th"], td["thdot"], torch.zeros(3, dtype=torch.float64),
                         PendulumParams.default(dtype=torch.float64))
    assert (out["thdot"] < free[1]).all()  # friction slowed every pendulum
    env = PendulumEnv(seed=0)
    with pytest.raises(ValueError, match=r"unknown physics 'nope'"):
        PendulumEnv(physics="nope")
    with pytest.raises(ValueError, match=r"unknown physical parameter.*'mass'"):
        PendulumEnv(seed=0, param_ranges={"mass": (0.5, 1.5)})
