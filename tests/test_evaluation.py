import pytest
import torch

from research.evaluation import EVAL_SEED, evaluate_policy, evaluation_states, interquartile_mean
from research.policies import make_policy


def test_evaluation_states_are_fixed_and_device_independent():
    a = evaluation_states(1000).unbind(-1)
    b = evaluation_states(1000, dtype=torch.float64).unbind(-1)
    torch.testing.assert_close(a[0].double(), b[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(evaluation_states(1000).unbind(-1)[1], a[1])
    assert a[0].abs().max() <= torch.pi and a[1].abs().max() <= 1.0
    other = evaluation_states(1000, seed=EVAL_SEED + 1).unbind(-1)
    assert not torch.equal(other[0], a[0])


def test_interquartile_mean_drops_tails():
    values = torch.tensor([-1000.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1000.0])
    assert interquartile_mean(values).item() == pytest.approx(3.5)


def test_evaluate_policy_reports_protocol_metrics():
    torch.manual_seed(0)
    policy = make_policy([16])
    result = evaluate_policy(policy, num_episodes=64)
    assert set(result) >= {"return_mean", "return_std", "return_median", "return_iqm", "return_min", "success_rate"}
    assert result["episodes"] == 64
    assert -3300 < result["return_min"] <= result["return_mean"] <= 0
    assert 0.0 <= result["success_rate"] <= 1.0
    # deterministic: same policy, same states, same score
    assert evaluate_policy(policy, num_episodes=64) == result


def test_zero_torque_policy_matches_hand_rollout():
    """A policy that never pushes: the evaluator's return equals a plain physics loop from the same states."""
    from research.envs import PendulumParams, pendulum_step

    zero = lambda obs: torch.zeros(*obs.shape[:-1], 1, dtype=obs.dtype)  # noqa: E731
    result = evaluate_policy(zero, num_episodes=32, dtype=torch.float64)
    th, thdot = evaluation_states(32, dtype=torch.float64).unbind(-1)
    params = PendulumParams.default((32,), dtype=torch.float64)
    total = torch.zeros(32, dtype=torch.float64)
    for _ in range(200):
        th, thdot, r = pendulum_step(th, thdot, torch.zeros(32, dtype=torch.float64), params)
        total = total + r
    assert result["return_mean"] == pytest.approx(total.mean().item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------- physics variants
def test_metric_keys_match_what_the_evaluator_reports():
    from research.evaluation import METRIC_KEYS

    result = evaluate_policy(make_policy([8]), num_episodes=16)
    assert set(result) == {*METRIC_KEYS, "episodes"}
    assert 0.0 <= result["final_angle_abs_median"] <= result["final_angle_abs_p90"] <= torch.pi


def test_success_is_ending_within_half_a_radian_of_upright_and_slow():
    """A hold just outside 0.1 rad is a success; resting on the wall at pi/4 (0.79 rad) is not."""
    from research.evaluation import summarize_returns

    th = torch.tensor([0.15, -0.45, 0.55, torch.pi / 4, 2 * torch.pi + 0.2, 0.0])
    thdot = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0, 3.0])
    from research.envs.physics import is_upright
    from research.evaluation import SUCCESS_ANGLE, SUCCESS_SPEED

    upright = is_upright(th, thdot, SUCCESS_ANGLE, SUCCESS_SPEED)
    assert upright.tolist() == [True, True, False, False, True, False]
    stats = summarize_returns(torch.zeros(6), upright, th)
    assert stats["success_rate"] == pytest.approx(0.5)
    assert stats["final_angle_abs_median"] == pytest.approx(0.2, abs=1e-6)  # the lower middle value, as torch.median


@pytest.mark.parametrize("name", ["wall", "noisy", "randomized", "coulomb"])
def test_evaluate_on_a_variant_is_deterministic_and_differs_from_default(name):
    from research.envs.presets import get_physics

    torch.manual_seed(0)
    policy = make_policy([16])
    first = evaluate_policy(policy, num_episodes=64, physics=get_physics(name))
    assert evaluate_policy(policy, num_episodes=64, physics=name) == first  # same states, noise and draws
    assert first != evaluate_policy(policy, num_episodes=64)
    if name in ("noisy", "randomized"):
        other = evaluate_policy(policy, num_episodes=64, physics=name, noise_seed=7, params_seed=8)
        assert other["return_mean"] != first["return_mean"]


def test_default_physics_gives_todays_scores():
    """physics=None, 'default' and the old call all score the same, on the same states as before."""
    torch.manual_seed(0)
    policy = make_policy([16])
    base = evaluate_policy(policy, num_episodes=32)
    assert evaluate_policy(policy, num_episodes=32, physics="default") == base
    from research.envs import PendulumParams
    from research.rollout import fused_rollout, initial_state

    th, thdot = evaluation_states(32).unbind(-1)
    rewards = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), PendulumParams.default((32,)), 200).rewards
    # to float tolerance: at 32 rows both run research.native's C loops, which sum the returns in a different order
    assert base["return_mean"] == pytest.approx(rewards.sum(-1).double().mean().item(), rel=1e-6, abs=0)


def test_wall_evaluation_states_are_the_same_physical_states():
    from research.envs.presets import get_physics

    wall = get_physics("wall")
    th, thdot = evaluation_states(1000, physics=wall, dtype=torch.float64).unbind(-1)
    ref_th, ref_thdot = evaluation_states(1000, dtype=torch.float64).unbind(-1)
    assert th.max() <= wall.fixed["wall_angle"] and torch.equal(thdot, ref_thdot)
    torch.testing.assert_close(torch.stack((th.cos(), th.sin())), torch.stack((ref_th.cos(), ref_th.sin())))


def test_eval_and_env_config_errors_name_the_field():
    from research.config import ConfigError, EnvConfig, EvalConfig

    with pytest.raises(ConfigError, match=r"env\.params\.wal_angle: unknown physical parameter.*expected one of"):
        EnvConfig(params={"wal_angle": 1.0})
    with pytest.raises(ConfigError, match=r"env\.param_ranges\.mass: unknown physical parameter"):
        EnvConfig(param_ranges={"mass": [0.5, 1.5]})
    with pytest.raises(ConfigError, match=r"env\.physics must be one of \['default', 'weak'"):
        EnvConfig(physics="wal")
    with pytest.raises(ConfigError, match=r"env\.params\.wall_restitution: .*must be <= 1"):
        EnvConfig(physics="wall", params={"wall_restitution": 2.0})
    with pytest.raises(ConfigError, match=r"env\.params\.g and env\.param_ranges\.g are both set"):
        EnvConfig(params={"g": 9.0}, param_ranges={"g": [9.0, 11.0]})
    with pytest.raises(ConfigError, match=r"env\.backend='gymnasium' runs Gymnasium's own physics"):
        EnvConfig(backend="gymnasium", physics="noisy")
    with pytest.raises(ConfigError, match=r"eval\.physics must be '' \(the training physics\) or one of"):
        EvalConfig(physics="nope")
    with pytest.raises(ConfigError, match=r"eval\.seed, eval\.noise_seed and eval\.params_seed must differ"):
        EvalConfig(noise_seed=EVAL_SEED)


def test_config_builds_the_training_and_evaluation_physics():
    from research.config import EnvConfig, EvalConfig

    env = EnvConfig(physics="wall", params={"wall_restitution": 0.9}, param_ranges={"g": [9.0, 11.0]})
    physics = env.to_physics()
    assert physics.name == "wall" and physics.fixed["wall_restitution"] == 0.9 and physics.ranges == {"g": (9.0, 11.0)}
    evaluated = EvalConfig().to_physics(env)  # the training physics, without the training-only ranges
    assert evaluated.fixed == physics.fixed and evaluated.ranges == {}
    assert EvalConfig(physics="noisy").to_physics(env).name == "noisy"
    assert EvalConfig().to_physics(EnvConfig(physics="randomized")).ranges == {"m": (0.7, 1.3), "l": (0.7, 1.3)}
