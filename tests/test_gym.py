"""Tests of :mod:`research.gym`: the systems and presets as Gymnasium environments (ids, spaces, seeding, noise,
time limit, rendering), parity with Gymnasium's Pendulum-v1, Gymnasium's and Stable-Baselines3's environment
checkers on every registered id, a short SB3 PPO run, and the ``load_policy`` evaluation example."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")

import research.gym as rgym  # noqa: E402
from research.systems import SYSTEMS  # noqa: E402

EXPECTED_IDS = [rgym.env_id(cls, preset) for cls in SYSTEMS.values() for preset in cls.PRESETS]


def test_every_system_and_preset_is_registered_with_its_horizon():
    assert list(rgym.ENV_IDS) == EXPECTED_IDS
    assert "research/Pendulum-default-v0" in rgym.ENV_IDS
    assert "research/Pendulum-wall-v0" in rgym.ENV_IDS
    assert "research/CartPole-default-v0" in rgym.ENV_IDS
    assert rgym.env_id("pendulum", "coulomb_smooth") == "research/Pendulum-coulomb_smooth-v0"
    for name, cls in SYSTEMS.items():
        for preset in cls.PRESETS:
            spec = gymnasium.spec(rgym.env_id(name, preset))
            assert spec.max_episode_steps == cls.horizon
            assert spec.kwargs == {"system": name, "preset": preset}
    assert rgym.register_envs() == EXPECTED_IDS  # idempotent: no re-registration


def test_module_prefixed_id_and_make_kwargs():
    env = gymnasium.make("research.gym:research/Pendulum-wall-v0", max_episode_steps=7,
                         overrides={"wall_restitution": 0.2})
    assert env.unwrapped.system.name == "wall"
    assert env.unwrapped.system.value("wall_restitution") == 0.2
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        *_, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert not terminated
        if truncated:
            break
    assert steps == 7


@pytest.mark.parametrize("env_id", EXPECTED_IDS)
def test_spaces(env_id):
    env = gymnasium.make(env_id)
    system = env.unwrapped.system
    assert env.action_space.dtype == np.float32 and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (system.action_dim,)
    np.testing.assert_array_equal(env.action_space.high, np.float32(system.max_action))
    np.testing.assert_array_equal(env.action_space.low, -np.float32(system.max_action))
    assert env.observation_space.shape == (system.obs_dim,)
    assert np.all(np.isinf(env.observation_space.high)) and np.all(np.isinf(env.observation_space.low))
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (system.obs_dim,) and info == {}
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and isinstance(reward, float) and np.isfinite(reward)
    assert terminated is False and truncated is False


def test_time_limit_is_the_horizon():
    env = gymnasium.make("research/CartPole-default-v0")
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32))[2:4] for _ in range(env.unwrapped.system.horizon)]
    assert flags[-1] == (False, True)
    assert all(f == (False, False) for f in flags[:-1])


def _pendulum_pair():
    ours = gymnasium.make("research/Pendulum-default-v0")
    ref = gymnasium.make("Pendulum-v1")
    return ours, ref


def test_parity_with_gymnasium_pendulum_v1():
    """The same float64 actions from the same start state: identical float32 observations, rewards and states to
    float64 rounding over a whole 200-step episode (Gymnasium's TimeLimit truncates both at the same step)."""
    ours, ref = _pendulum_pair()
    rng = np.random.default_rng(0)
    for seed in range(3):
        ours.reset(seed=seed)
        ref.reset(seed=seed)
        ref.unwrapped.state = ours.unwrapped.state  # a copy: our state property returns a fresh array
        # torques beyond the limit too (both clip); float32 values, as an agent's actions are
        actions = rng.uniform(-3.0, 3.0, size=(200, 1)).astype(np.float32).astype(np.float64)
        for t, action in enumerate(actions):
            obs, reward, terminated, truncated, _ = ours.step(action)
            obs_ref, reward_ref, terminated_ref, truncated_ref, _ = ref.step(action)
            np.testing.assert_allclose(obs, obs_ref, rtol=0, atol=1e-6, err_msg=f"seed {seed} step {t}")
            np.testing.assert_allclose(reward, reward_ref, rtol=1e-9, atol=1e-9, err_msg=f"seed {seed} step {t}")
            np.testing.assert_allclose(ours.unwrapped.state, ref.unwrapped.state, rtol=0, atol=1e-9)
            assert (terminated, truncated) == (terminated_ref, truncated_ref)
        assert truncated


def test_parity_with_float32_actions_step_by_step():
    """float32 actions (what SB3 sends): Gymnasium evaluates its torque terms in float32 then (numpy 2's promotion
    of a float32 scalar with Python floats), we in float64; one step from the same state agrees to 1e-5."""
    ours, ref = _pendulum_pair()
    ours.reset(seed=3)
    ref.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(200):
        ref.unwrapped.state = ours.unwrapped.state
        action = rng.uniform(-3.0, 3.0, size=1).astype(np.float32)
        obs, reward, *_ = ours.step(action)
        obs_ref, reward_ref, *_ = ref.step(action)
        np.testing.assert_allclose(obs, obs_ref, rtol=0, atol=1e-5)
        np.testing.assert_allclose(reward, reward_ref, rtol=1e-6, atol=1e-6)


def _episode(env, seed, steps=30, action=None):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        out.append(env.step(np.zeros(env.action_space.shape, np.float32) if action is None else action)[0])
    return np.stack(out)


@pytest.mark.parametrize("env_id", ["research/Pendulum-noisy-v0", "research/Pendulum-randomized-v0",
                                    "research/CartPole-randomized-v0"])
def test_seeding_replays_episodes(env_id):
    env = gymnasium.make(env_id)
    a, b, c = _episode(env, 5), _episode(env, 5), _episode(env, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # an unseeded reset continues the stream: a new episode, not a replay
    env.reset(seed=5)
    first = env.unwrapped.state
    env.reset()
    assert not np.array_equal(first, env.unwrapped.state)


def test_randomized_presets_draw_parameters_per_episode():
    env = gymnasium.make("research/Pendulum-randomized-v0")
    masses = []
    for seed in range(4):
        env.reset(seed=seed)
        masses.append(float(env.unwrapped.params.m))
    assert len(set(masses)) == 4 and all(0.7 <= m <= 1.3 for m in masses)
    fixed = gymnasium.make("research/Pendulum-default-v0")
    fixed.reset(seed=0)
    assert float(fixed.unwrapped.params.m) == 1.0


def test_noise_is_drawn_per_step_from_the_seeded_generator():
    """From the same state with the same actions, the noisy pendulum's trajectory depends on the seed; without
    noise it does not."""
    noisy = gymnasium.make("research/Pendulum-noisy-v0")
    default = gymnasium.make("research/Pendulum-default-v0")
    start = np.array([0.3, -0.2])
    ends = {}
    for name, env in (("noisy", noisy), ("default", default)):
        for seed in (0, 1):
            env.reset(seed=seed, options={"state": start})
            for _ in range(10):
                env.step(np.zeros(1, np.float32))
            ends[name, seed] = env.unwrapped.state
    assert not np.array_equal(ends["noisy", 0], ends["noisy", 1])
    np.testing.assert_array_equal(ends["default", 0], ends["default", 1])


def test_wall_pendulum_reset_states_lie_in_the_wall_range():
    env = gymnasium.make("research/Pendulum-wall-v0")
    phi = env.unwrapped.system.value("wall_angle")
    for seed in range(20):
        env.reset(seed=seed)
        th = env.unwrapped.state[0]
        assert phi - 2 * np.pi <= th <= phi
    env.reset(seed=0, options={"state": [np.pi, 0.0]})  # represented in [phi - 2 pi, phi]
    np.testing.assert_allclose(env.unwrapped.state, [-np.pi, 0.0])


@pytest.mark.parametrize("env_id", ["research/Pendulum-wall-v0", "research/CartPole-default-v0"])
def test_render_rgb_array(env_id):
    env = gymnasium.make(env_id, render_mode="rgb_array", render_size=64)
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    for _ in range(5):
        env.step(env.action_space.high)
    assert not np.array_equal(env.render(), first)
    assert env.metadata["render_fps"] == round(1 / env.unwrapped.system.defaults().get(
        "dt", env.unwrapped.system.defaults().get("tau")))


def test_bad_use_raises():
    env = rgym.SystemGymEnv("pendulum")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="state must have shape"):
        env.state = [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="render_mode"):
        rgym.SystemGymEnv("pendulum", render_mode="human")
    with pytest.raises(ValueError, match="unknown physics"):
        rgym.SystemGymEnv("pendulum", preset="nope")
    with pytest.raises(ValueError, match="unknown system"):
        rgym.env_id("nope")


def test_float32_physics_and_system_instances():
    import research.systems as systems

    env = rgym.SystemGymEnv(systems.make("pendulum", damping=0.3), dtype=torch.float32)
    assert env.system.value("damping") == 0.3
    obs, _ = env.reset(seed=0)
    obs2, reward, *_ = env.step(np.ones(1, np.float32))
    assert obs2.dtype == np.float32 and np.isfinite(reward)


def _problems(caught: list[warnings.WarningMessage]) -> list[str]:
    """The checkers' warnings except two pieces of advice we decline on purpose: normalise the action space to
    [-1, 1] (ours is the physical bound, like Pendulum-v1's [-2, 2]) and bound the observation space (ours is
    unbounded: no speed limit bounds the cart-pole's observations)."""
    advice = ("symmetric and normalized", "observation space minimum value is -infinity",
              "observation space maximum value is infinity")
    return [str(w.message) for w in caught if not any(a in str(w.message) for a in advice)]


@pytest.mark.parametrize("env_id", EXPECTED_IDS)
def test_gymnasium_env_checker(env_id):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(env_id, render_mode="rgb_array", render_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert _problems(caught) == []


@pytest.mark.parametrize("env_id", EXPECTED_IDS)
def test_sb3_env_checker(env_id):
    env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    env = gymnasium.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env_checker.check_env(env, warn=True)
    assert _problems(caught) == []


def test_sb3_ppo_trains_on_the_wall_pendulum():
    sb3 = pytest.importorskip("stable_baselines3")
    env = gymnasium.make("research/Pendulum-wall-v0")
    model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16, 16]})
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)


def test_load_policy_gymnasium_example(tmp_path):
    """The evaluation example of ``research.load_policy``'s docstring and the README."""
    import research
    from research.policies import make_policy, save_policy

    torch.manual_seed(0)
    save_policy(make_policy((8,)), tmp_path / "policy.pt")

    policy = research.load_policy(tmp_path / "policy.pt")
    env = gymnasium.make("research/Pendulum-default-v0")
    obs, info = env.reset(seed=0)
    episode_return, done, steps = 0.0, False, 0
    while not done:
        with torch.no_grad():
            action = policy(torch.as_tensor(obs)).numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        episode_return += reward
        done = terminated or truncated
        steps += 1
    assert steps == 200 and np.isfinite(episode_return) and episode_return < 0
