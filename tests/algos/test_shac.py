import csv
import json

import pytest
import torch

import research
import research.algos.shac as shac
from research.algos.shac import SHACConfig, actor_loss, critic_targets, polyak_update, train_shac
from research.config import ConfigError, EvalConfig
from research.harness import NonFiniteUpdateError
from research.train import main

TINY_EVAL = EvalConfig(interval_env_steps=10_000, episodes=64)

# Two envs, three steps, gamma 0.9, lambda 0.5. Env 0's episode is truncated after step 1 (and reset), env 1 runs on.
REWARDS = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
NEXT_VALUES = torch.tensor([[10.0, 20.0, 30.0], [10.0, 20.0, 30.0]])
TRUNCATED = torch.tensor([[False, True, False], [False, False, False]])


def test_td_lambda_targets_on_a_hand_computed_example():
    # G_t = r_t + gamma ((1 - lambda) V_{t+1} + lambda G_{t+1}); at the window's end and at a truncation the
    # recursion stops and bootstraps from the value of the true next state: G_t = r_t + gamma V_{t+1}.
    # env 0: G_2 = 3 + .9 * 30 = 30; G_1 = 2 + .9 * 20 = 20 (truncated); G_0 = 1 + .9 * (.5 * 10 + .5 * 20) = 14.5
    # env 1: G_2 = 30; G_1 = 2 + .9 * (.5 * 20 + .5 * 30) = 24.5; G_0 = 1 + .9 * (.5 * 10 + .5 * 24.5) = 16.525
    targets = critic_targets(REWARDS, NEXT_VALUES, TRUNCATED, discount=0.9, td_lambda=0.5)
    expected = torch.tensor([[14.5, 20.0, 30.0], [16.525, 24.5, 30.0]])
    torch.testing.assert_close(targets, expected)
    # lambda = 0 is one-step TD everywhere; lambda = 1 the discounted rewards plus the bootstrap of each piece
    torch.testing.assert_close(critic_targets(REWARDS, NEXT_VALUES, TRUNCATED, 0.9, 0.0), REWARDS + 0.9 * NEXT_VALUES)
    monte_carlo = critic_targets(REWARDS, NEXT_VALUES, TRUNCATED, 0.9, 1.0)
    torch.testing.assert_close(monte_carlo[1, 0], torch.tensor(1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 30))


def test_actor_loss_restarts_the_discount_after_a_truncation():
    # env 0: 1 + .9 * 2 + .9 * .9 * 20 (the piece ending at the truncation), then 3 + .9 * 30 (the new episode)
    # env 1: 1 + .9 * 2 + .81 * 3 + .729 * 30
    env0 = 1 + 0.9 * 2 + 0.81 * 20 + 3 + 0.9 * 30
    env1 = 1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 30
    loss = actor_loss(REWARDS, NEXT_VALUES, TRUNCATED, discount=0.9)
    torch.testing.assert_close(loss, torch.tensor(-(env0 + env1) / 6))


def test_polyak_update_moves_the_target_towards_the_critic():
    target, online = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = target.weight.detach().clone()
    polyak_update(target, online, alpha=0.2)
    torch.testing.assert_close(target.weight, 0.2 * before + 0.8 * online.weight)


def test_one_update_changes_actor_and_critic(monkeypatch):
    created = {}

    def recording(factory, name):
        def make(*args, **kwargs):
            created[name] = factory(*args, **kwargs)
            created[name + "_initial"] = [p.detach().clone() for p in created[name].parameters()]
            return created[name]
        return make

    monkeypatch.setattr(shac, "make_policy", recording(shac.make_policy, "policy"))
    monkeypatch.setattr(shac, "make_critic", recording(shac.make_critic, "critic"))
    summary = train_shac(SHACConfig(iterations=1, num_envs=8, window=5, critic_iterations=1, critic_minibatches=2,
                                    hidden_sizes=[8], critic_hidden_sizes=[8], eval=TINY_EVAL), quiet=True)
    assert summary["env_steps"] == 40 and summary["skipped_updates"] == 0
    for name in ("policy", "critic"):
        changed = [not torch.equal(a, b) for a, b in zip(created[name + "_initial"], created[name].parameters(),
                                                         strict=True)]
        assert all(changed), f"{name}: every parameter tensor should move after one update"


def test_smoke_run_writes_every_output_file(tmp_path):
    rc = main(["--algo", "shac", "--seed", "1", "--results", str(tmp_path), "--experiment", "smoke", "--quiet",
               "--set", "iterations=4", "--set", "num_envs=8", "--set", "window=10", "--set", "critic_iterations=2",
               "--set", "env.episode_length=15",
               "--set", "eval.episodes=16", "--set", "eval.interval_env_steps=160"])
    assert rc == 0
    out = tmp_path / "smoke" / "shac" / "seed_1"
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt", "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "shac" and summary["seed"] == 1 and summary["env_steps"] == 4 * 8 * 10
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"train/return", "train/episode_return", "train/actor_loss", "train/critic_loss", "train/grad_norm",
            "eval/return_mean"} <= set(rows[0])
    assert [int(r["env_steps"]) for r in rows if r["eval/return_mean"]] == [0, 160, 320]
    # 15-step episodes inside 10-step windows: some iterations finish episodes and report their return
    assert any(r["train/episode_return"] for r in rows)
    assert research.load_policy(out / "policy.pt")(torch.zeros(3)).shape == (1,)


def test_shac_improves_a_tiny_problem():
    """Two seconds of SHAC lift the evaluation return well above the random policy's."""
    config = SHACConfig(iterations=100, num_envs=64, window=16, critic_iterations=4, hidden_sizes=[32, 32],
                        eval=TINY_EVAL)
    summary = train_shac(config, quiet=True)
    torch.manual_seed(config.seed)
    initial = research.evaluation.evaluate_policy(research.policies.make_policy([32, 32]), num_episodes=64)
    assert summary["eval"]["return_mean"] > initial["return_mean"] + 300


def test_non_finite_critic_targets_are_skipped_then_stop(monkeypatch):
    monkeypatch.setattr(shac, "critic_targets", lambda rewards, *args: rewards * float("nan"))
    config = SHACConfig(iterations=5, num_envs=4, window=5, critic_iterations=2, critic_minibatches=2,
                        hidden_sizes=[8], max_consecutive_skips=3, eval=TINY_EVAL)
    with pytest.raises(NonFiniteUpdateError, match="3 consecutive SHAC critic updates"):
        train_shac(config, quiet=True)


@pytest.mark.parametrize("override, match", [
    ({"window": 0}, "window must be > 0"),
    ({"td_lambda": 1.5}, "td_lambda"),
    ({"betas": [0.9]}, "betas"),
    ({"critic_minibatches": 10_000}, "critic_minibatches"),
])
def test_invalid_configs_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        SHACConfig(**override)


def test_float64_run():
    summary = train_shac(SHACConfig(iterations=2, num_envs=4, window=5, critic_iterations=1, hidden_sizes=[8],
                                    dtype="float64", eval=TINY_EVAL), quiet=True)
    assert summary["env_steps"] == 40


@pytest.mark.cuda
def test_shac_on_cuda():
    summary = train_shac(SHACConfig(device="cuda", iterations=3, num_envs=16, window=8, critic_iterations=1,
                                    eval=TINY_EVAL), quiet=True)
    assert summary["env_steps"] == 384
