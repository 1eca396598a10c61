"""TD3 and SAC: the zoo recipes as defaults, one update moves what it should, a tiny run writes every file."""

import csv
import json

import pytest
import torch
from tensordict import TensorDict

import research
from research.algos.off_policy import OffPolicyEvalConfig
from research.algos.sac import SAC, SACConfig
from research.algos.td3 import TD3, TD3Config
from research.harness import prepare
from research.train import main

TINY = dict(total_env_steps=300, warmup_env_steps=100, frames_per_batch=50, batch_size=32, hidden_sizes=[16, 16],
            critic_hidden_sizes=[16, 16], eval=OffPolicyEvalConfig(interval_env_steps=100, episodes=16))
TINY_CLI = ["--set", "total_env_steps=300", "--set", "warmup_env_steps=100", "--set", "frames_per_batch=50",
            "--set", "batch_size=32", "--set", "hidden_sizes=[16, 16]", "--set", "critic_hidden_sizes=[16, 16]",
            "--set", "eval.episodes=16", "--set", "eval.interval_env_steps=100"]


def random_transitions(n: int) -> TensorDict:
    return TensorDict({
        "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 4 - 2,
        "next": {"observation": torch.randn(n, 3), "reward": -torch.rand(n, 1) * 16,
                 "done": torch.zeros(n, 1, dtype=torch.bool), "terminated": torch.zeros(n, 1, dtype=torch.bool)},
    }, batch_size=[n])


def test_defaults_are_the_zoo_recipes():
    td3, sac = TD3Config(), SACConfig()
    assert (td3.total_env_steps, td3.warmup_env_steps, td3.gamma, td3.noise_std, td3.actor_lr) == (
        20_000, 10_000, 0.98, 0.1, 1e-3)
    assert td3.hidden_sizes == [400, 300] and td3.policy_delay == 2 and td3.target_policy_noise == 0.2
    assert (sac.total_env_steps, sac.warmup_env_steps, sac.gamma, sac.lr, sac.batch_size) == (
        20_000, 100, 0.99, 1e-3, 256)
    assert sac.hidden_sizes == [256, 256] and sac.buffer_size == 1_000_000 and sac.target_entropy == -1.0


def test_td3_moves_the_actor_only_every_policy_delay_updates():
    algo = TD3(TD3Config(**TINY), prepare(TD3Config(**TINY)))
    actor = [p.clone() for p in algo.policy.parameters()]
    critic = [p.clone() for p in algo.critic_params]
    first = algo.update(random_transitions(32))
    assert torch.isnan(first[0]) and torch.isfinite(first[1:]).all()
    assert all(torch.equal(a, b) for a, b in zip(actor, algo.policy.parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(critic, algo.critic_params, strict=True))
    second = algo.update(random_transitions(32))
    assert torch.isfinite(second).all()
    assert not any(torch.equal(a, b) for a, b in zip(actor, algo.policy.parameters(), strict=True))
    algo.close()


def test_sac_deterministic_policy_is_the_mean_action():
    config = SACConfig(**TINY)
    algo = SAC(config, prepare(config))
    obs = torch.randn(5, 3)
    loc, scale = algo.loss_module.actor_network.module[0].module(obs)
    torch.testing.assert_close(algo.policy(obs), 2.0 * torch.tanh(loc))
    assert (scale > 0).all()
    before = [p.clone() for p in algo.policy.parameters()]
    stats = algo.update(random_transitions(32))
    assert torch.isfinite(stats).all() and stats[3] > 0  # alpha
    assert not any(torch.equal(a, b) for a, b in zip(before, algo.policy.parameters(), strict=True))
    algo.close()


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_smoke_run_writes_every_output_file(tmp_path, algo):
    assert main(["--algo", algo, "--seed", "1", "--results", str(tmp_path), "--experiment", "smoke", "--quiet",
                 *TINY_CLI]) == 0
    out = tmp_path / "smoke" / algo / "seed_1"
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt", "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == algo and summary["env_steps"] == 300 and summary["updates"] == 200
    assert summary["skipped_updates"] == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["env_steps"]) for r in rows if r["eval/return_mean"]] == [0, 100, 200, 300]
    assert {"train/loss_actor", "train/loss_critic"} <= set(rows[0])
    assert research.load_policy(out / "policy.pt")(torch.zeros(3)).shape == (1,)


@pytest.mark.slow
@pytest.mark.parametrize("algo,config_cls,steps", [("td3", TD3Config, 5000), ("sac", SACConfig, 3000)])
def test_learns_something_in_a_few_thousand_steps(algo, config_cls, steps):
    """A few thousand steps lift the evaluation return far above the random policy's (about -1200)."""
    from research.algos import get_algo

    _, trainer = get_algo(algo)
    config = config_cls(total_env_steps=steps, warmup_env_steps=1000, hidden_sizes=[64, 64],
                        critic_hidden_sizes=[64, 64], eval=OffPolicyEvalConfig(interval_env_steps=steps, episodes=64))
    summary = trainer(config, quiet=True)
    assert summary["eval"]["return_mean"] > -1000
