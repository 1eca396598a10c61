"""The gradient study's library half: both estimators against exact gradients, streamed statistics, the config, and
a tiny measurement (its figures and report: tests/scripts/test_gradient_report.py)."""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from research.analysis.gradients import (
    CSV_COLUMNS,
    ESTIMATORS,
    LR_BASELINES,
    GradientMoments,
    GradientStudyConfig,
    cosine_similarity,
    first_order_gradients,
    likelihood_ratio_gradients,
    load_study_config,
    reward_to_go,
)
from research.config import ConfigError, from_dict
from research.envs.physics import PendulumParams, observation, pendulum_step, sample_initial_state
from research.experiment import run_experiment
from research.policies import make_policy

DTYPE = torch.float64


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
    params = PendulumParams.default(dtype=DTYPE)
    mu = policy(observation(th, thdot)).squeeze(-1)
    assert bool((mu.abs() + 4 * sigma < 2.0).all())  # the torque clip acts on fewer than 1e-4 of the samples
    exact = _flat(torch.autograd.grad((-0.001 * mu**2).mean(), list(policy.parameters())))

    first = first_order_gradients(policy, th, thdot, params, 1, torch.randn(n, 1, generator=generator, dtype=DTYPE),
                                  sigma)
    second = likelihood_ratio_gradients(policy, th, thdot, params, 1,
                                        torch.randn(n, 1, generator=generator, dtype=DTYPE), sigma, baseline)
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


def _reference_sample(policy, th, thdot, noise, sigma, params, baseline):
    """One sample by plain autograd on the policy's own parameters, the rewards-to-go by Python sums:
    (first-order gradient, likelihood-ratio one, R)."""
    parameters = list(policy.parameters())

    def rewards(noise):
        out, state = [], (th, thdot)
        for t in range(noise.shape[0]):
            action = policy(observation(*state)).squeeze(-1) + sigma * noise[t]
            *state, reward = pendulum_step(*state, action, params)
            out.append(reward.sum())
        return out

    noisy = rewards(noise)
    ret = sum(noisy)
    first = _flat(torch.autograd.grad(ret, parameters))
    noise_free = [r.detach() for r in rewards(torch.zeros_like(noise))]
    horizon = noise.shape[0]
    weighted_log_prob, state = 0.0, (th, thdot)
    for t in range(horizon):  # the same trajectory, states and actions held fixed
        mean = policy(observation(*state)).squeeze(-1)
        action = mean.detach() + sigma * noise[t]
        weight = {"none": ret, "reward_to_go": sum(noisy[t:]),
                  "reward_to_go_baseline": sum(noisy[t:]) - sum(noise_free[t:])}[baseline].detach()
        weighted_log_prob = weighted_log_prob + weight * torch.distributions.Normal(mean, sigma).log_prob(action).sum()
        *state, _ = pendulum_step(*state, action, params)
    second = _flat(torch.autograd.grad(weighted_log_prob, parameters))
    return first, second, ret.detach()


@pytest.mark.parametrize("baseline", LR_BASELINES)
def test_per_sample_gradients_match_autograd_on_single_samples(baseline):
    policy = _policy((32, 32), seed=1)
    n, horizon, sigma = 6, 25, 0.3
    generator = torch.Generator().manual_seed(1)
    th, thdot = sample_initial_state((n,), generator, dtype=DTYPE)
    noise = torch.randn(n, horizon, generator=generator, dtype=DTYPE)
    params = PendulumParams.default(dtype=DTYPE)
    first = first_order_gradients(policy, th, thdot, params, horizon, noise, sigma)
    second = likelihood_ratio_gradients(policy, th, thdot, params, horizon, noise, sigma, baseline)
    for i in (0, 4):
        ref_first, ref_second, ref_return = _reference_sample(policy, th[i : i + 1], thdot[i : i + 1], noise[i], sigma,
                                                              params, baseline)
        torch.testing.assert_close(first.gradients[i], ref_first, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(second.gradients[i], ref_second, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(first.returns[i], ref_return)
        torch.testing.assert_close(second.returns[i], ref_return)
    assert not torch.allclose(first.gradients[0], first.gradients[4])  # truly per sample, not a shared sum


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
    th, thdot = sample_initial_state((n,), generator, dtype=DTYPE)
    noise = torch.randn(n, horizon, generator=generator, dtype=DTYPE)
    params = PendulumParams.default(dtype=DTYPE)
    variance = {
        baseline: GradientMoments.from_gradients(
            likelihood_ratio_gradients(policy, th, thdot, params, horizon, noise, sigma, baseline).gradients
        ).statistics()["variance_total"]
        for baseline in LR_BASELINES
    }
    assert variance["reward_to_go"] < variance["none"]
    assert variance["reward_to_go_baseline"] < variance["none"] / 30
    assert variance["reward_to_go_baseline"] < variance["reward_to_go"] / 30

    # ... and the baselined estimator is still unbiased beyond one step: it agrees with first order.
    first = first_order_gradients(policy, th, thdot, params, horizon, torch.randn(n, horizon, generator=generator,
                                                                                  dtype=DTYPE), sigma)
    baselined = likelihood_ratio_gradients(policy, th, thdot, params, horizon, noise, sigma).gradients
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
