"""The gradient study's library half: both estimators against exact gradients (on the pendulum, the cart-pole and the
acrobot), streamed statistics, the config, and tiny measurements (their figures and report:
tests/scripts/test_gradient_report.py)."""

from __future__ import annotations

import csv
import functools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import research.analysis.gradients as gradients
from research.analysis.gradients import (
    CSV_COLUMNS,
    ESTIMATORS,
    LR_BASELINES,
    GradientMoments,
    GradientStudyConfig,
    cosine_similarity,
    draw_samples,
    estimate_gradients,
    first_order_gradients,
    likelihood_ratio_gradients,
    load_study_config,
    physics_generator,
    reward_to_go,
    run_gradient_study,
    sample_generator,
    study_system,
)
from research.config import ConfigError, from_dict, physics_entry
from research.envs.physics import PendulumParams, observation
from research.envs.presets import PRESETS, get_physics
from research.experiment import run_experiment
from research.policies import make_policy, save_policy
from research.rollout import fused_rollout, initial_state
from research.systems import SYSTEMS, get_system

DTYPE = torch.float64
PENDULUM = PRESETS["default"]


def _policy(hidden_sizes=(16, 16), seed: int = 0):
    torch.manual_seed(seed)
    return make_policy(hidden_sizes, "tanh", dtype=DTYPE)


def _flat(gradients) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gradients])


@pytest.mark.parametrize("baseline", LR_BASELINES)
def test_estimators_agree_with_the_exact_one_step_gradient(baseline):
    # H = 1 near upright: E[R] = -E[c(s)] - 0.001 E[(mu(s) + sigma eps)^2], so (the torque clip never active)
    # grad E[R] = -0.002 E_s[mu(s) grad mu(s)] exactly. States stay near 0 so the state cost, which only adds noise
    # to the likelihood-ratio estimator, stays small.
    policy = _policy()
    n, sigma = 20_000, 0.3
    generator = torch.Generator().manual_seed(0)
    th, thdot = ((torch.rand(n, generator=generator, dtype=DTYPE) - 0.5) * 0.1 for _ in range(2))
    state = torch.stack((th, thdot), dim=-1)
    params = PendulumParams.default(dtype=DTYPE)
    mu = policy(observation(th, thdot)).squeeze(-1)
    assert bool((mu.abs() + 4 * sigma < 2.0).all())  # the torque clip acts on fewer than 1e-4 of the samples
    exact = _flat(torch.autograd.grad((-0.001 * mu**2).mean(), list(policy.parameters())))

    first = first_order_gradients(policy, PENDULUM, state, params, 1,
                                  torch.randn(n, 1, 1, generator=generator, dtype=DTYPE), sigma)
    second = likelihood_ratio_gradients(policy, PENDULUM, state, params, 1,
                                        torch.randn(n, 1, 1, generator=generator, dtype=DTYPE), sigma, baseline)
    assert first.gradients.shape == second.gradients.shape == (n, exact.numel())
    # The likelihood-ratio mean is known to ~4% here without a baseline (relative s.e.), far better with one; a wrong
    # factor of sigma or a sign error is off by 100% or more.
    moments = [GradientMoments.from_gradients(g, chunk=3000) for g in (first.gradients, second.gradients)]
    assert moments[1].statistics()["relative_se"] < 0.06
    cosine, cosine_se = cosine_similarity(*moments)
    assert cosine > 0.95 and cosine_se < 0.05
    relative_error = lambda g: ((g.mean(0) - exact).norm() / exact.norm()).item()  # noqa: E731
    assert relative_error(first.gradients) < 0.05
    assert relative_error(second.gradients) < 0.2


def _reference_sample(policy, system, state, noise, sigma, params, baseline):
    """One sample (``state [1, state_dim]``, ``noise [H, action_dim]``) by plain autograd through ``system.step`` on the
    policy's own parameters, the rewards-to-go by Python sums: (first-order gradient, likelihood-ratio one, R)."""
    parameters = list(policy.parameters())
    constants = system.constants(params, like=state)

    def rewards(noise):
        out, x = [], state
        for t in range(noise.shape[0]):
            x, reward = system.step(x, policy(system.observe(x)) + sigma * noise[t], constants)
            out.append(reward.sum())
        return out

    noisy = rewards(noise)
    ret = sum(noisy)
    first = _flat(torch.autograd.grad(ret, parameters))
    noise_free = [r.detach() for r in rewards(torch.zeros_like(noise))]
    horizon = noise.shape[0]
    weighted_log_prob, x = 0.0, state
    for t in range(horizon):  # the same trajectory, states and actions held fixed
        mean = policy(system.observe(x))
        action = mean.detach() + sigma * noise[t]
        weight = {"none": ret, "reward_to_go": sum(noisy[t:]),
                  "reward_to_go_baseline": sum(noisy[t:]) - sum(noise_free[t:])}[baseline].detach()
        weighted_log_prob = weighted_log_prob + weight * torch.distributions.Normal(mean, sigma).log_prob(action).sum()
        x, _ = system.step(x, action, constants)
    second = _flat(torch.autograd.grad(weighted_log_prob, parameters))
    return first, second, ret.detach()


def _system_policy(system, hidden_sizes=(32, 32), seed=1):
    torch.manual_seed(seed)
    return make_policy(hidden_sizes, "tanh", system.max_action, dtype=DTYPE, obs_dim=system.obs_dim,
                       act_dim=system.action_dim)


@pytest.mark.parametrize("name, horizon", [("pendulum", 25), ("cartpole", 3), ("acrobot", 3)])
@pytest.mark.parametrize("baseline", LR_BASELINES)
def test_per_sample_gradients_match_autograd_on_single_samples(name, horizon, baseline):
    system = get_system(name)
    policy = _system_policy(system)
    n, sigma = 6, 0.3
    generator = torch.Generator().manual_seed(1)
    state = system.initial_state((n,), generator, dtype=DTYPE)
    noise = torch.randn(n, horizon, system.action_dim, generator=generator, dtype=DTYPE)
    params = system.params((), dtype=DTYPE)
    first = first_order_gradients(policy, system, state, params, horizon, noise, sigma)
    second = likelihood_ratio_gradients(policy, system, state, params, horizon, noise, sigma, baseline)
    for i in (0, 4):
        ref_first, ref_second, ref_return = _reference_sample(policy, system, state[i : i + 1], noise[i], sigma,
                                                              params, baseline)
        torch.testing.assert_close(first.gradients[i], ref_first, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(second.gradients[i], ref_second, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(first.returns[i], ref_return)
        torch.testing.assert_close(second.returns[i], ref_return)
    assert not torch.allclose(first.gradients[0], first.gradients[4])  # truly per sample, not a shared sum
    assert first.gradients[0].norm() > 1e-6 and second.gradients[0].norm() > 1e-6


@pytest.mark.parametrize("name", ["cartpole", "acrobot"])
def test_first_order_gradient_agrees_with_finite_differences(name):
    # One sample at H = 3: a central difference of its return (research.rollout.fused_rollout, the trainers' loop)
    # along a random direction of the parameters against the first-order gradient's projection.
    system = get_system(name)
    policy = _system_policy(system, (16, 16), seed=2)
    generator = torch.Generator().manual_seed(2)
    state = system.initial_state((1,), generator, dtype=DTYPE)
    noise = torch.randn(1, 3, system.action_dim, generator=generator, dtype=DTYPE)
    gradient = first_order_gradients(policy, system, state, None, 3, noise, 0.3).gradients[0]
    parameters = list(policy.parameters())
    direction = [torch.randn(p.shape, generator=generator, dtype=DTYPE) for p in parameters]
    step, values = 1e-6, []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, d in zip(parameters, direction, strict=True):
                p.add_(sign * step * d)
            values.append(_mean_return(policy, system, state, noise, 0.3).item())
            for p, d in zip(parameters, direction, strict=True):
                p.sub_(sign * step * d)
    slope = (gradient * _flat(direction)).sum().item()
    assert (values[0] - values[1]) / (2 * step) == pytest.approx(slope, rel=1e-5)
    assert abs(slope) > 1e-5


@pytest.mark.parametrize("name", ["cartpole", "acrobot"])
def test_both_estimators_agree_in_the_mean(name):
    # Both estimate one gradient without bias: over independent samples at H = 5 the squared distance between their
    # means stays within a few times its expectation under unbiasedness, the sum of their variances over N, while
    # both means are resolved (a wrong factor or sign would be many times that).
    system = get_system(name)
    config = GradientStudyConfig(physics=[name], horizons=[5], samples=4000, chunk=1000, action_noise=0.15,
                                 action_noise_scale="max_action", hidden_sizes=[16, 16], policies=["random"])
    policy = gradients.random_policy(config, system, torch.device("cpu"), DTYPE)
    moments = {e: estimate_gradients(e, policy, config, 5, sample_generator(0, "random", 5, e), torch.device("cpu"),
                                     DTYPE, system, physics_generator(0, name, "random", 5, e)) for e in ESTIMATORS}
    stats = {e: m.statistics() for e, m in moments.items()}
    assert all(stats[e]["relative_se"] < 0.2 for e in ESTIMATORS), stats
    gap = (moments["first_order"].mean - moments["likelihood_ratio"].mean).norm().item() ** 2
    expected = sum(stats[e]["variance_total"] for e in ESTIMATORS) / config.samples
    assert gap < 3 * expected, (gap, expected)
    cosine, _ = cosine_similarity(*moments.values())
    assert cosine > 0.9


def test_reward_to_go():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]], dtype=DTYPE)
    torch.testing.assert_close(reward_to_go(rewards), torch.tensor([[6.0, 5.0, 3.0], [4.0, 4.0, 5.0]], dtype=DTYPE))


def test_gradient_statistics_of_known_samples():
    gradients = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]], dtype=DTYPE)
    stats = GradientMoments.from_gradients(gradients, chunk=3).statistics()
    assert stats["grad_norm"] == pytest.approx(2.0)
    assert stats["variance_total"] == pytest.approx(2.0 / 3.0 + 8.0 / 3.0)
    assert stats["variance_mean"] == pytest.approx(stats["variance_total"] / 2)
    assert stats["relative_se"] == pytest.approx((stats["variance_total"] / 4) ** 0.5 / 2.0)
    assert stats["median_sample_norm"] == pytest.approx(8.0**0.5)
    assert stats["samples"] == 4


def test_streamed_statistics_equal_all_at_once():
    # A mean far above the spread: a naive sum-of-squares variance would lose most of its digits here.
    generator = torch.Generator().manual_seed(2)
    n, p = 103, 7
    first = 1e4 + torch.randn(n, p, generator=generator, dtype=DTYPE) * torch.logspace(-2, 2, p, dtype=DTYPE)
    second = torch.randn(n, p, generator=generator, dtype=DTYPE) + 0.5
    stats = GradientMoments.from_gradients(first, chunk=10).statistics()
    norms = first.norm(dim=1)
    expected = {"grad_norm": first.mean(0).norm(), "mean_sample_norm": norms.mean(),
                "median_sample_norm": norms.quantile(0.5), "variance_mean": first.var(0).mean(),
                "variance_total": first.var(0).sum(),
                "relative_se": (first.var(0).sum() / n).sqrt() / first.mean(0).norm()}
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value.item(), rel=1e-10), key
    assert stats["samples"] == n

    # The jackknife by hand: group k holds samples i with i * groups // n == k, whatever the chunking.
    groups = 20
    group = torch.arange(n) * groups // n
    replicates = torch.stack([torch.nn.functional.cosine_similarity(first[group != k].mean(0),
                                                                    second[group != k].mean(0), dim=0)
                              for k in range(groups)])
    expected_se = ((groups - 1) / groups * ((replicates - replicates.mean()) ** 2).sum()).sqrt().item()
    expected_cosine = torch.nn.functional.cosine_similarity(first.mean(0), second.mean(0), dim=0).item()
    for chunk in (1, 10, 64, n):
        cosine, cosine_se = cosine_similarity(GradientMoments.from_gradients(first, chunk, groups),
                                              GradientMoments.from_gradients(second, chunk, groups))
        assert cosine == pytest.approx(expected_cosine, rel=1e-10)
        assert cosine_se == pytest.approx(expected_se, rel=1e-6)

    moments = GradientMoments(n)
    moments.add(first[:50])
    with pytest.raises(ValueError, match="samples"):
        moments.leave_one_group_out_means()  # the jackknife needs every announced sample
    with pytest.raises(ValueError, match="more than"):
        moments.add(first)


def test_baseline_cuts_the_likelihood_ratio_variance():
    # The same samples through the three variants, at H = 10 from Gymnasium's reset distribution. Most of the return's
    # spread comes from the initial state, which the noise-free baseline cancels: the variance drops by a factor in the
    # thousands against reward-to-go alone, where a baseline doing nothing would give about 1.
    policy = _policy()
    n, horizon, sigma = 500, 10, 0.3
    generator = torch.Generator().manual_seed(4)
    state = PENDULUM.initial_state((n,), generator, dtype=DTYPE)
    noise = torch.randn(n, horizon, 1, generator=generator, dtype=DTYPE)
    params = PendulumParams.default(dtype=DTYPE)
    variance = {
        baseline: GradientMoments.from_gradients(
            likelihood_ratio_gradients(policy, PENDULUM, state, params, horizon, noise, sigma, baseline).gradients
        ).statistics()["variance_total"]
        for baseline in LR_BASELINES
    }
    assert variance["reward_to_go"] < variance["none"]
    assert variance["reward_to_go_baseline"] < variance["none"] / 30
    assert variance["reward_to_go_baseline"] < variance["reward_to_go"] / 30

    # ... and the baselined estimator is still unbiased beyond one step: it agrees with first order.
    first = first_order_gradients(policy, PENDULUM, state, params, horizon,
                                  torch.randn(n, horizon, 1, generator=generator, dtype=DTYPE), sigma)
    baselined = likelihood_ratio_gradients(policy, PENDULUM, state, params, horizon, noise, sigma).gradients
    cosine, cosine_se = cosine_similarity(GradientMoments.from_gradients(first.gradients),
                                          GradientMoments.from_gradients(baselined))
    assert cosine > 0.9 and cosine_se < 0.05


TINY_STUDY = """
[gradient_study]
horizons = [1, 5]
samples = 24
chunk = 10
likelihood_ratio_baseline = "reward_to_go"
hidden_sizes = [8, 8]
seed = 3
[gradient_study.trained.config]
iterations = 2
num_envs = 8
window = 4
[gradient_study.trained.config.eval]
episodes = 20
"""


def test_tiny_study_writes_its_data(tmp_path, caplog):
    path = tmp_path / "tiny_study.toml"
    path.write_text(TINY_STUDY)
    result = run_experiment(path, tmp_path / "results", quiet=True)  # the experiment runner dispatches it
    out = tmp_path / "results" / "tiny_study"
    assert result["directory"] == str(out)
    for name in ("gradient_study.csv", "config.json", "trained_policy/policy.pt"):
        assert (out / name).is_file(), name
    # Figures and the report are scripts/gradient_report.py's (tests/scripts/test_gradient_report.py).
    assert not (out / "REPORT.md").exists() and not (out / "figures").exists()

    with (out / "gradient_study.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {(r["policy"], int(r["horizon"]), r["estimator"]) for r in rows} == {
        (p, h, e) for p in ("random", "trained") for h in (1, 5) for e in ESTIMATORS
    }
    assert len(rows) == 8
    for row in rows:
        assert int(row["samples"]) == 24 and row["lr_baseline"] == "reward_to_go"
        assert float(row["grad_norm"]) > 0 and float(row["variance_total"]) > 0
        assert -1.0 <= float(row["cosine"]) <= 1.0

    info = json.loads((out / "config.json").read_text())
    assert info["source"] == str(path) and info["config"]["samples"] == 24 and info["jackknife_groups"] >= 2
    trained_eval = result["policies"]["trained"]["training_eval"]["return_mean"]
    assert info["policies"]["trained"]["training_eval"]["return_mean"] == trained_eval

    with caplog.at_level(logging.INFO, logger="research.analysis.gradients"):
        run_experiment(path, tmp_path / "results", quiet=True)
    assert "reusing the trained policy" in caplog.text


def test_no_module_of_the_library_imports_matplotlib():
    root = Path(__file__).resolve().parents[2] / "research"
    pattern = re.compile(r"^\s*(import|from)\s+matplotlib", re.MULTILINE)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == [], f"figures belong in scripts/: {offenders}"
    code = ("import sys, research.analysis.gradients, research.experiment, research.evaluation; "
            "print('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_unknown_keys_are_errors_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="sampels.*valid keys"):
        from_dict(GradientStudyConfig, {"sampels": 10})
    path = tmp_path / "study.toml"
    path.write_text("[gradient_study]\nhorizons = [1]\n[gradient_study.trained.config]\nitterations = 3\n")
    with pytest.raises(ConfigError, match="itterations"):
        load_study_config(path)
    path.write_text("[gradient_study]\n[gradient_study.trained.config]\nseed = 3\n")
    with pytest.raises(ConfigError, match="seed"):
        load_study_config(path)
    path.write_text('[gradient_study]\nlikelihood_ratio_baseline = "causal"\n')
    with pytest.raises(ConfigError, match="likelihood_ratio_baseline"):
        load_study_config(path)
    path.write_text("[gradient_study]\n[bptt]\n")
    with pytest.raises(ConfigError, match="bptt"):
        load_study_config(path)


# ---------------------------------------------------------------------------------------------------- physics presets
def test_physics_must_be_distinct_presets(tmp_path):
    for bad in (["default", "walll"], [], ["wall", "wall"]):
        with pytest.raises(ConfigError) as info:
            from_dict(GradientStudyConfig, {"physics": bad}, prefix="gradient_study.")
        message = str(info.value)
        assert message.startswith("gradient_study.physics") and "\n" not in message
        assert all(name in message for name in PRESETS)  # lists the valid names
    path = tmp_path / "study.toml"
    path.write_text('[gradient_study]\nphysics = ["noisy", "Wall"]\n')
    with pytest.raises(ConfigError, match=r"gradient_study\.physics .*'Wall'"):
        load_study_config(path)
    assert GradientStudyConfig().physics == ["default"]


def test_physics_takes_every_task_the_experiment_runner_takes():
    config = from_dict(GradientStudyConfig, {"physics": ["default", "cartpole", "acrobot:weak", "cartpole:heavy_pole"],
                                             "policies": ["random"]}, prefix="gradient_study.")
    assert [(s.system, s.name) for s in map(study_system, config.physics)] == [
        ("pendulum", "default"), ("cartpole", "default"), ("acrobot", "weak"), ("cartpole", "heavy_pole")]
    accepted = [*PRESETS, *SYSTEMS, *(p for cls in SYSTEMS.values() for p in cls.PRESETS)]
    for bad in (["cartpole", "double_pendulum"], ["cartpole:wall"], ["cartpole", "cartpole:default"],
                ["wall", "pendulum:wall"]):
        with pytest.raises(ConfigError) as info:
            from_dict(GradientStudyConfig, {"physics": bad}, prefix="gradient_study.")
        message = str(info.value)
        assert message.startswith("gradient_study.physics must be distinct tasks") and "\n" not in message
        assert all(name in message for name in accepted), message  # lists what it accepts


def test_a_trained_policy_serves_one_system_only(tmp_path):
    one = gradients.TrainedPolicyConfig(path=str(tmp_path / "one.pt"))
    with pytest.raises(ConfigError, match=r"gradient_study\.trained\.path must contain '\{physics\}' when physics "
                                          r"spans several systems \(\['acrobot', 'pendulum'\]\)"):
        from_dict(GradientStudyConfig, {"physics": ["default", "acrobot"], "trained": {"path": one.path}},
                  prefix="gradient_study.")
    with pytest.raises(ConfigError, match=r"gradient_study\.trained\.config trains one policy on the pendulum, but "
                                          r"physics \['cartpole'\] measures it on \['cartpole'\]"):
        from_dict(GradientStudyConfig, {"physics": ["cartpole"]}, prefix="gradient_study.")
    GradientStudyConfig(physics=["cartpole", "cartpole:heavy_pole"], trained=one)  # one system: one policy is fine
    GradientStudyConfig(physics=["cartpole"], trained=gradients.TrainedPolicyConfig(
        config={"iterations": 2, "env": {"system": "cartpole"}}))
    GradientStudyConfig(physics=["default", "acrobot"], policies=["random"], trained=one)  # not measured: no rule
    template = str(tmp_path / "{physics}" / "policy.pt")
    config = GradientStudyConfig(physics=["wall", "cartpole:heavy_pole"],
                                 trained=gradients.TrainedPolicyConfig(path=template))
    assert config.trained_paths() == {"wall": tmp_path / "wall" / "policy.pt",  # the runner's directory names
                                      "cartpole:heavy_pole": tmp_path / "cartpole-heavy_pole" / "policy.pt"}


def test_preset_samples_share_states_and_action_noise_and_add_their_own_draws():
    def draw(name, samples=6, horizon=3):
        return draw_samples(study_system(name), samples, horizon, sample_generator(0, "random", horizon, "first_order"),
                            physics_generator(0, name, "random", horizon, "first_order"))

    default = draw("default")
    assert default.env_noise is None and all(p.dim() == 0 for p in default.params)
    assert default.state.shape == (6, 2) and default.noise.shape == (6, 3, 1)
    for name in ("wall", "noisy", "randomized"):
        drawn = draw(name)
        torch.testing.assert_close(drawn.noise, default.noise, rtol=0, atol=0)  # common random numbers
        torch.testing.assert_close(drawn.state[:, 1], default.state[:, 1], rtol=0, atol=0)
        torch.testing.assert_close(drawn.state[:, 0].sin(), default.state[:, 0].sin())  # the same physical angles
    wall = draw("wall")
    phi = get_physics("wall").value("wall_angle")
    assert bool(((wall.state[:, 0] <= phi) & (wall.state[:, 0] >= phi - 2 * torch.pi)).all())
    assert bool((wall.state[:, 0] != default.state[:, 0]).any())  # some angles were moved into the wall's range
    noisy = draw("noisy")
    assert noisy.env_noise.shape == (6, 3, 1) and float(noisy.params.torque_noise) == 0.5
    randomized = draw("randomized")
    assert randomized.params.m.shape == randomized.params.l.shape == (6,) and randomized.env_noise is None
    assert len(set(randomized.params.m.tolist())) == 6 and bool(((randomized.params.l >= 0.7) &
                                                                (randomized.params.l <= 1.3)).all())
    # Other systems: their own state layout, and their presets share the draws in the same way.
    cartpole, drawn = draw("cartpole"), draw("cartpole:randomized")
    assert cartpole.state.shape == (6, 4) and cartpole.noise.shape == (6, 3, 1) and cartpole.env_noise is None
    torch.testing.assert_close(drawn.state, cartpole.state, rtol=0, atol=0)
    torch.testing.assert_close(drawn.noise, cartpole.noise, rtol=0, atol=0)
    assert drawn.params.masspole.shape == (6,) and cartpole.params.masspole.dim() == 0
    assert draw("acrobot").state.shape == (6, 4)
    # Chunks see the same per-sample parameters and torque noise: the moments do not depend on the chunk size.
    policy = _policy((8, 8))
    for name in ("randomized", "noisy"):
        config = GradientStudyConfig(physics=[name], samples=8, horizons=[4])
        moments = []
        for chunk in (3, 8):
            config.chunk = chunk
            moments.append(estimate_gradients(
                "first_order", policy, config, 4, sample_generator(0, "random", 4, "first_order"), torch.device("cpu"),
                DTYPE, get_physics(name), physics_generator(0, name, "random", 4, "first_order")))
        torch.testing.assert_close(moments[0].mean, moments[1].mean, rtol=1e-12, atol=0)


def _save_policies(root: Path, entries, hidden_sizes=(8, 8)) -> None:
    """A policy for each physics entry's system in ``root / <its directory name> / policy.pt``."""
    for i, name in enumerate(entries):
        torch.manual_seed(100 + i)
        system, folder = study_system(name), root / physics_entry(name)[2]
        folder.mkdir(parents=True, exist_ok=True)
        save_policy(make_policy(list(hidden_sizes), "tanh", system.max_action, obs_dim=system.obs_dim,
                                act_dim=system.action_dim), folder / "policy.pt")


TWO_PRESET_STUDY = """
[gradient_study]
physics = ["wall_soft", "noisy"]
horizons = [1, 5]
samples = 8
chunk = 5
hidden_sizes = [8, 8]
seed = 1
dtype = "float64"
[gradient_study.trained]
path = "{root}/{{physics}}/policy.pt"
"""


def _mean_return(policy, system, state, noise, sigma, env_noise=None):
    """The mean return of ``a_t = policy(s_t) + sigma * noise[:, t]`` (``noise [N, H, action_dim]``) from ``state
    [N, state_dim]`` by research.rollout.fused_rollout (the trainers' rollout), the system's noise passed to it: an
    independent path to the objective the study differentiates."""
    steps = iter(range(noise.shape[1]))
    noisy_policy = lambda obs: policy(obs) + sigma * noise[:, next(steps)]  # noqa: E731
    params = system.params((), dtype=DTYPE)
    return fused_rollout(noisy_policy, initial_state(state), params, noise.shape[1], system=system,
                         noise=env_noise).rewards.sum(-1).mean()


def test_two_preset_study_rows_and_first_order_against_autograd_and_finite_differences(tmp_path):
    _save_policies(tmp_path / "policies", ["wall_soft", "noisy"])
    path = tmp_path / "two_presets.toml"
    path.write_text(TWO_PRESET_STUDY.format(root=tmp_path / "policies"))
    result = run_experiment(path, tmp_path / "results", quiet=True)
    out = tmp_path / "results" / "two_presets"
    with (out / "gradient_study.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS and CSV_COLUMNS[0] == "physics"
    assert [(r["physics"], r["policy"], int(r["horizon"]), r["estimator"]) for r in rows] == [
        (ph, p, h, e) for ph in ("wall_soft", "noisy") for p in ("random", "trained") for h in (1, 5) for e in ESTIMATORS
    ]
    info = json.loads((out / "config.json").read_text())
    assert "policies" not in info and list(info["physics_policies"]) == ["wall_soft", "noisy"]
    assert info["physics"]["noisy"]["fixed"] == {"torque_noise": 0.5}
    for name in ("wall_soft", "noisy"):  # {physics} resolved per preset
        assert info["physics_policies"][name]["trained"]["source"] == \
            f"loaded from {tmp_path / 'policies' / name / 'policy.pt'}"
    assert result["physics_policies"] == info["physics_policies"]
    assert not (out / "trained_policy").exists()  # nothing trained

    config = load_study_config(path)
    sigma, horizon = config.action_noise, 5
    norm = {(r["physics"], r["policy"], int(r["horizon"]), r["estimator"]): float(r["grad_norm"]) for r in rows}
    for name in ("wall_soft", "noisy"):
        physics = get_physics(name)
        torch.manual_seed(config.seed)  # the study's random policy: its seed, squashed to the preset's max torque
        policy = make_policy([8, 8], "tanh", physics.max_torque, dtype=DTYPE)
        generator = sample_generator(config.seed, "random", horizon, "first_order")
        state = physics.initial_state((8,), generator, dtype=DTYPE)
        noise = torch.randn((8, horizon, 1), generator=generator, dtype=DTYPE)
        torque_noise = (torch.randn((8, horizon), generator=physics_generator(config.seed, name, "random", horizon,
                                                                              "first_order"), dtype=DTYPE)
                        if physics.features.noise else None)
        parameters = list(policy.parameters())
        objective = functools.partial(_mean_return, policy, physics, state, noise, sigma, torque_noise)
        exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective(), parameters)])
        assert norm[(name, "random", horizon, "first_order")] == pytest.approx(exact.norm().item(), rel=1e-9)
        if torque_noise is not None:  # the torque noise matters: without it the gradient is another one
            parameters_free = torch.autograd.grad(_mean_return(policy, physics, state, noise, sigma,
                                                               torch.zeros_like(torque_noise)), parameters)
            assert abs(torch.cat([g.reshape(-1) for g in parameters_free]).norm().item() / exact.norm().item() - 1) > 1e-3
        else:  # noise-free and smooth (soft wall): a central finite difference along a random direction agrees
            direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
                         for p in parameters]
            step = 1e-6
            with torch.no_grad():
                values = []
                for sign in (1.0, -1.0):
                    for p, d in zip(parameters, direction, strict=True):
                        p.add_(sign * step * d)
                    values.append(objective().item())
                    for p, d in zip(parameters, direction, strict=True):
                        p.sub_(sign * step * d)
            slope = sum((g * d).sum() for g, d in zip(torch.autograd.grad(objective(), parameters), direction,
                                                      strict=True)).item()
            assert (values[0] - values[1]) / (2 * step) == pytest.approx(slope, rel=1e-5)
            assert abs(slope) > 1e-3


SYSTEMS_STUDY = """
[gradient_study]
physics = ["cartpole", "acrobot:weak"]
horizons = [1, 3]
samples = 8
chunk = 5
action_noise = 0.15
action_noise_scale = "max_action"
hidden_sizes = [8, 8]
seed = 1
[gradient_study.trained]
path = "{root}/{{physics}}/policy.pt"
"""


def test_a_study_across_systems_rows_sigma_and_first_order_against_autograd(tmp_path):
    _save_policies(tmp_path / "policies", ["cartpole", "acrobot:weak"])
    path = tmp_path / "systems.toml"
    path.write_text(SYSTEMS_STUDY.format(root=tmp_path / "policies"))
    run_experiment(path, tmp_path / "results", quiet=True)
    out = tmp_path / "results" / "systems"
    with (out / "gradient_study.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["physics"], r["policy"], int(r["horizon"]), r["estimator"]) for r in rows] == [
        (ph, p, h, e) for ph in ("cartpole", "acrobot:weak") for p in ("random", "trained") for h in (1, 3)
        for e in ESTIMATORS]
    assert all(float(r["grad_norm"]) > 0 and float(r["variance_total"]) > 0 for r in rows)
    info = json.loads((out / "config.json").read_text())
    cartpole, acrobot = info["physics"]["cartpole"], info["physics"]["acrobot:weak"]
    assert (cartpole["system"], cartpole["preset"], cartpole["time_step"], cartpole["max_action"]) == \
        ("cartpole", "default", 0.02, 10.0)
    assert (acrobot["system"], acrobot["preset"], acrobot["time_step"], acrobot["max_action"]) == \
        ("acrobot", "weak", 0.2, 1.0)
    assert cartpole["sigma"] == pytest.approx(1.5) and acrobot["sigma"] == pytest.approx(0.15)  # 0.15 x max action
    assert info["physics_policies"]["acrobot:weak"]["trained"]["source"] == \
        f"loaded from {tmp_path / 'policies' / 'acrobot-weak' / 'policy.pt'}"

    # The cart-pole's first-order row: the norm of the mean gradient of the mean return, by autograd through the
    # trainers' rollout from the same draws.
    system, horizon = study_system("cartpole"), 3
    torch.manual_seed(1)  # the study's random policy
    policy = make_policy([8, 8], "tanh", system.max_action, dtype=DTYPE, obs_dim=system.obs_dim,
                         act_dim=system.action_dim)
    generator = sample_generator(1, "random", horizon, "first_order")
    state = system.initial_state((8,), generator, dtype=DTYPE)
    noise = torch.randn((8, horizon, 1), generator=generator, dtype=DTYPE)
    exact = _flat(torch.autograd.grad(_mean_return(policy, system, state, noise, 1.5), list(policy.parameters())))
    norm = next(float(r["grad_norm"]) for r in rows if (r["physics"], r["policy"], r["horizon"], r["estimator"]) ==
                ("cartpole", "random", str(horizon), "first_order"))
    assert norm == pytest.approx(exact.norm().item(), rel=1e-9)

    # A policy of another system's sizes is an error naming the file, before anything is measured.
    _save_policies(tmp_path / "policies", ["default"])
    (tmp_path / "policies" / "default" / "policy.pt").replace(tmp_path / "policies" / "cartpole" / "policy.pt")
    with pytest.raises(ConfigError, match=r"gradient_study\.trained\.path: .*cartpole/policy\.pt maps observations "
                                          r"of size 3 to actions of size 1, but physics entry 'cartpole'"):
        run_gradient_study(path, tmp_path / "results", quiet=True)


def test_trained_path_per_preset_and_its_missing_file_error(tmp_path, monkeypatch):
    template = str(tmp_path / "{physics}" / "policy.pt")
    config = GradientStudyConfig(physics=["wall", "noisy"], trained=gradients.TrainedPolicyConfig(path=template))
    assert config.trained_paths() == {"wall": tmp_path / "wall" / "policy.pt", "noisy": tmp_path / "noisy" / "policy.pt"}
    shared = GradientStudyConfig(physics=["wall", "noisy"],
                                 trained=gradients.TrainedPolicyConfig(path=str(tmp_path / "one.pt")))
    assert set(shared.trained_paths().values()) == {tmp_path / "one.pt"}  # no {physics}: one policy for all

    _save_policies(tmp_path, ["wall"])  # noisy's is missing
    path = tmp_path / "missing.toml"
    path.write_text(f'[gradient_study]\nphysics = ["wall", "noisy"]\nhidden_sizes = [8, 8]\n'
                    f'[gradient_study.trained]\npath = "{template}"\n')

    def never(*args, **kwargs):
        raise AssertionError("the study ran before checking the policy files")

    monkeypatch.setattr(gradients, "measure", never)
    monkeypatch.setattr(gradients, "evaluate_policy", never)
    with pytest.raises(ConfigError) as info:
        run_gradient_study(path, tmp_path / "results", quiet=True)
    message = str(info.value)
    assert "gradient_study.trained.path" in message and "\n" not in message
    assert str(tmp_path / "noisy" / "policy.pt") in message and str(tmp_path / "wall" / "policy.pt") not in message
    assert not (tmp_path / "results").exists()
    # Only the trained policy needs the files.
    assert GradientStudyConfig(physics=["noisy"], policies=["random"],
                               trained=gradients.TrainedPolicyConfig(path=template)).check_trained_paths() is None
