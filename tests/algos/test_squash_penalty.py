"""The saturation trap as an ablation: SHAC's squash penalty on BPTT (``BPTTConfig.squash_penalty``), and the
saturated-action fraction both log."""

import math

import pytest
import torch

from research import harness
from research.algos.bptt import BPTT, BPTTConfig
from research.algos.shac import SHACConfig, saturated_fraction, squash_loss
from research.config import ConfigError, EnvConfig, EvalConfig, config_hash, to_dict
from research.policies import make_policy

TINY = dict(num_envs=8, horizon=10, hidden_sizes=[8], eval=EvalConfig(interval_env_steps=10_000, episodes=8))


def first_update(config):
    """``(metrics, actor gradient, gradient of squash_loss on the rollout's states, observations)`` of BPTT's first
    update, both gradients taken before the optimiser moves anything."""
    algo = BPTT(config, harness.prepare(config))
    captured = {}
    clip = algo.guard.clip

    def record(loss, parameters, max_norm):
        parameters = list(parameters)
        captured["grads"] = [p.grad.clone() for p in parameters]
        if algo.observations is not None:
            captured["squash"] = torch.autograd.grad(squash_loss(algo.policy, algo.observations), parameters)
        return clip(loss, parameters, max_norm)

    algo.guard.clip = record
    metrics = algo.step(1)
    return metrics, captured["grads"], captured.get("squash"), algo.observations


def test_zero_penalty_is_hash_neutral_and_shac_keeps_its_hash():
    default, explicit = BPTTConfig(), BPTTConfig(squash_penalty=0.0)
    assert config_hash(default) == config_hash(explicit) != config_hash(BPTTConfig(squash_penalty=1e-3))
    assert "squash_penalty" in to_dict(default)
    # the neutrality is BPTT's own: SHAC's squash_penalty = 0 is a real change from its default 1e-3
    assert config_hash(SHACConfig(squash_penalty=0.0)) != config_hash(SHACConfig())


@pytest.mark.parametrize("window", [0, 5])
def test_penalty_adds_exactly_its_weighted_gradient(window):
    plain, plain_grads, _, plain_obs = first_update(BPTTConfig(window=window, **TINY))
    assert plain_obs is None or window  # the default full-horizon path keeps no trajectory (today's path)
    weight = 0.05
    metrics, grads, squash, observations = first_update(BPTTConfig(window=window, squash_penalty=weight, **TINY))
    assert observations.shape == (8, window or 10, 3)
    # the same rollout (same seed), the loss grows by weight * squash_loss and the gradient by its gradient
    torch.testing.assert_close(metrics["train/return"], plain["train/return"], rtol=1e-5, atol=1e-5)
    assert metrics["train/loss"] > plain["train/loss"]
    for g, g0, s in zip(grads, plain_grads, squash, strict=True):
        torch.testing.assert_close(g, g0 + weight * s, rtol=1e-4, atol=1e-6)
    for m in (plain, metrics):
        assert 0 <= float(m["train/saturated"]) <= 1


def test_saturated_fraction_counts_actions_beyond_99_percent_of_the_bound():
    policy = make_policy([4], "tanh", 2.0)
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
        policy.net[-1].bias.fill_(3.0)  # tanh(3) = 0.995: every action saturated
    obs = torch.randn(10, 3)
    assert saturated_fraction(policy, obs) == 1.0
    with torch.no_grad():
        policy.net[-1].bias.fill_(2.0)  # tanh(2) = 0.964
    assert saturated_fraction(policy, obs) == 0.0
    torch.testing.assert_close(squash_loss(policy, obs), torch.tensor(4.0))


def test_penalised_bptt_trains_on_randomized_physics():
    config = BPTTConfig(iterations=3, squash_penalty=1e-3, env=EnvConfig(physics="randomized"), **TINY)
    summary = harness.train(config, BPTT, None, quiet=True, name="bptt")
    assert summary["skipped_updates"] == 0 and math.isfinite(summary["eval"]["return_mean"])


@pytest.mark.parametrize("override, message", [
    (dict(squash_penalty=-1.0), "squash_penalty must be a finite weight >= 0"),
    (dict(squash_penalty=1e-3, rollout="env"), "squash_penalty must be a finite weight >= 0, and 0 with rollout='env'"),
])
def test_bad_penalties_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        BPTTConfig(**override)
    assert message in str(err.value) and "\n" not in str(err.value)


#: Recorded at 241ef0d (before squash_penalty and the saturation metric) with these calls, one torch thread; the new
#: code reproduces them bit for bit on the machine where it was written (rel 1e-5 for other CPUs' rounding).
#: ``(train/loss of 5 updates, sum of the policy's parameters after them)``.
RECORDED_BPTT = {
    "full horizon": ([5.613706588745117, 6.202371597290039, 6.038553714752197, 6.112613677978516,
                      5.91766357421875], -1.8601688167545944),
    "truncated, randomized": ([4.967929840087891, 7.318805694580078, 5.9963884353637695, 4.893213272094727,
                               5.928669452667236], -1.8615086425561458),
}
#: SHAC (refactored into window_rollout / piece_ends for ahac) on the hard wall: ``(train/actor_loss of 4 updates,
#: parameter sum)``, recorded at 241ef0d likewise.
RECORDED_SHAC = ([0.36677438020706177, 0.6096730828285217, 0.5342947840690613, 0.22518306970596313],
                 -1.3571001943200827)


@pytest.mark.parametrize("case", list(RECORDED_BPTT))
def test_zero_penalty_is_todays_bptt(case):
    kw = {} if case == "full horizon" else dict(window=8, env=EnvConfig(physics="randomized", episode_length=20))
    config = BPTTConfig(num_envs=16, horizon=20, hidden_sizes=[16], num_threads=1, **kw)
    restore = harness.set_threads(1)
    try:
        algo = BPTT(config, harness.prepare(config))
        losses = [float(algo.step(i)["train/loss"]) for i in range(1, 6)]
    finally:
        restore()
    total = float(sum(p.detach().double().sum() for p in algo.policy.parameters()))
    assert losses == pytest.approx(RECORDED_BPTT[case][0], rel=1e-5)
    assert total == pytest.approx(RECORDED_BPTT[case][1], rel=1e-5)


def test_shac_is_todays_shac():
    from research.algos.shac import SHAC

    config = SHACConfig(num_envs=8, window=8, hidden_sizes=[8], critic_hidden_sizes=[8], critic_iterations=1,
                        critic_minibatches=2, env=EnvConfig(physics="wall", episode_length=20))
    restore = harness.set_threads(1)
    try:
        algo = SHAC(config, harness.prepare(config))
        losses = [float(algo.step(i)["train/actor_loss"]) for i in range(1, 5)]
    finally:
        restore()
    total = float(sum(p.detach().double().sum() for p in algo.policy.parameters()))
    assert losses == pytest.approx(RECORDED_SHAC[0], rel=1e-5) and total == pytest.approx(RECORDED_SHAC[1], rel=1e-5)
