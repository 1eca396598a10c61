import csv
import json

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

import research
import research.algos.ddpg as ddpg
import research.algos.off_policy as off_policy
from research.algos.ddpg import (
    DDPGConfig,
    DDPGEvalConfig,
    DDPGLosses,
    make_critic,
    make_environment,
    make_loss_module,
    train_ddpg,
    update,
)
from research.config import ConfigError, EnvConfig
from research.harness import NonFiniteUpdateError, SkipGuard
from research.policies import make_actor, make_policy
from research.runs import RunWriter
from research.train import main

TINY = dict(total_env_steps=300, warmup_env_steps=100, frames_per_batch=50, batch_size=32, hidden_sizes=[16, 16],
            critic_hidden_sizes=[16, 16], eval=DDPGEvalConfig(interval_env_steps=100, episodes=16))
TINY_CLI = ["--set", "total_env_steps=300", "--set", "warmup_env_steps=100", "--set", "frames_per_batch=50",
            "--set", "batch_size=32", "--set", "hidden_sizes=[16, 16]", "--set", "critic_hidden_sizes=[16, 16]",
            "--set", "eval.episodes=16", "--set", "eval.interval_env_steps=100"]


def random_transitions(n: int, terminated: bool = False) -> TensorDict:
    """``n`` transitions with the keys DDPGLoss reads."""
    flag = torch.full((n, 1), terminated)
    return TensorDict({
        "observation": torch.randn(n, 3), "action": torch.rand(n, 1) * 4 - 2,
        "next": {"observation": torch.randn(n, 3), "reward": -torch.rand(n, 1) * 16,
                 "done": torch.ones(n, 1, dtype=torch.bool), "terminated": flag},
    }, batch_size=[n])


def make_learner(config: DDPGConfig):
    torch.manual_seed(0)
    policy = make_policy(config.hidden_sizes, config.activation)
    critic = make_critic(config, torch.device("cpu"), torch.float32)
    losses = DDPGLosses(policy, critic.module, config.gamma)
    actor_opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    params = [*policy.parameters(), *critic.parameters()]
    return policy, critic, losses, actor_opt, critic_opt, params


def test_one_update_changes_the_actor_and_the_critic():
    config = DDPGConfig(**TINY)
    policy, critic, losses, actor_opt, critic_opt, params = make_learner(config)
    before_actor = [p.clone() for p in policy.parameters()]
    before_critic = [p.clone() for p in critic.parameters()]
    before_target = [p.clone() for p in losses.target_critic.parameters()]
    stats = update(losses, random_transitions(32), actor_opt, critic_opt, SkipGuard(3), params)
    assert torch.isfinite(stats).all()
    assert all(not torch.equal(b, a) for b, a in zip(before_actor, policy.parameters(), strict=True))
    assert all(not torch.equal(b, a) for b, a in zip(before_critic, critic.parameters(), strict=True))
    # targets move only with the soft update, never with the gradient step
    assert all(torch.equal(b, a) for b, a in zip(before_target, losses.target_critic.parameters(), strict=True))
    losses.soft_update(0.25)
    for b, a, online in zip(before_target, losses.target_critic.parameters(), critic.parameters(), strict=True):
        torch.testing.assert_close(a, 0.75 * b + 0.25 * online)


@pytest.mark.parametrize("terminated", [False, True])
def test_losses_and_gradients_are_torchrls(terminated):
    """DDPGLosses against TorchRL's DDPGLoss (TD(0), target networks) on the same networks and sample: the same
    losses, critic targets (truncation bootstraps, termination does not) and gradients."""
    config = DDPGConfig(**TINY)
    policy, critic, losses, *_ = make_learner(config)
    reference = make_loss_module(make_actor(policy), critic, config.gamma)
    SoftUpdate(reference, tau=config.tau)  # registers the target updater (TorchRL warns without one)
    batch = random_transitions(64, terminated=terminated)
    params = [*policy.parameters(), *critic.parameters()]
    out = reference(batch)
    expected = torch.autograd.grad(out["loss_actor"] + out["loss_value"], params, allow_unused=True)
    loss_actor, loss_value, q = losses(batch)
    got = torch.autograd.grad(loss_actor + loss_value, params, allow_unused=True)
    torch.testing.assert_close(loss_actor, out["loss_actor"])
    torch.testing.assert_close(loss_value, out["loss_value"])
    torch.testing.assert_close(q.squeeze(-1), out["pred_value"])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        next_q = critic(TensorDict({"observation": batch["next", "observation"],
                                    "action": policy(batch["next", "observation"])}, [64]))["state_action_value"]
    target = batch["next", "reward"] + (0.0 if terminated else config.gamma) * next_q
    torch.testing.assert_close(out["target_value"], target.squeeze(-1))


@pytest.mark.parametrize("backend", ["simulator", "gymnasium"])
def test_smoke_run_writes_every_output_file(tmp_path, backend):
    if backend == "gymnasium":
        pytest.importorskip("gymnasium")
    rc = main(["--algo", "ddpg", "--seed", "1", "--results", str(tmp_path), "--experiment", "smoke", "--quiet",
               *TINY_CLI, "--set", f'env.backend="{backend}"'])
    assert rc == 0
    out = tmp_path / "smoke" / "ddpg" / "seed_1"
    checkpoint = {"checkpoint.pt"} if backend == "simulator" else set()  # TorchRL's Collector is not checkpointed
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt", *checkpoint}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "ddpg" and summary["seed"] == 1 and summary["env_steps"] == 300
    assert summary["updates"] == 200 and summary["skipped_updates"] == 0
    assert set(summary["eval"]) >= {"return_mean", "return_median", "return_iqm", "return_min", "success_rate"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["env"]["backend"] == backend
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"train/loss_actor", "train/loss_critic", "train/q_mean", "train/updates"} <= set(rows[0])
    assert [int(r["env_steps"]) for r in rows if r["eval/return_mean"]] == [0, 100, 200, 300]
    policy = research.load_policy(out / "policy.pt")
    assert policy(torch.zeros(3)).shape == (1,)


def test_collector_env_steps_match_the_metrics(tmp_path, monkeypatch):
    collected = []

    class CountingCollector(off_policy.SimulatorCollector):
        def __next__(self):
            batch = super().__next__()
            collected.append(batch.numel())
            return batch

    monkeypatch.setattr(off_policy, "SimulatorCollector", CountingCollector)
    config = DDPGConfig(**{**TINY, "num_envs": 2, "env": EnvConfig(episode_length=40)})
    summary = train_ddpg(config, writer=RunWriter(tmp_path, "ddpg", config), quiet=True)
    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r["train/updates"]]
    assert [int(r["env_steps"]) for r in rows] == list(torch.tensor(collected).cumsum(0).tolist())
    assert sum(collected) == summary["env_steps"] == 300
    assert sum(int(r["train/updates"]) for r in rows) == summary["updates"] == 200
    # 40-step episodes: the time limit truncates and the collector resets
    assert any(r["train/episode_return"] not in ("", "nan") for r in rows)


def test_ornstein_uhlenbeck_noise_runs():
    summary = train_ddpg(DDPGConfig(**{**TINY, "noise": "ou"}), quiet=True)
    assert summary["env_steps"] == 300 and summary["skipped_updates"] == 0


def test_non_finite_loss_never_reaches_the_parameters(tmp_path, monkeypatch):
    created = []

    class NaNLosses(ddpg.DDPGLosses):
        def forward(self, sample):
            created.append(self.actor)
            return tuple(x * float("nan") for x in super().forward(sample))

    monkeypatch.setattr(ddpg, "DDPGLosses", NaNLosses)
    config = DDPGConfig(**{**TINY, "max_consecutive_skips": 3})
    with pytest.raises(NonFiniteUpdateError, match="3 consecutive"):
        train_ddpg(config, writer=RunWriter(tmp_path, "ddpg", config), quiet=True)
    torch.manual_seed(config.seed)
    expected = make_policy(config.hidden_sizes, config.activation)
    for before, after in zip(expected.parameters(), created[0].parameters(), strict=True):
        assert torch.equal(before, after)
    assert not (tmp_path / "summary.json").exists()


def test_environment_truncates_at_the_episode_length():
    env = make_environment(DDPGConfig(**TINY), torch.device("cpu"))
    rollout = env.rollout(205, break_when_any_done=False)
    truncated = rollout["next", "truncated"].squeeze(-1).nonzero()[:, -1].tolist()
    assert truncated == [199] and not rollout["next", "terminated"].any()


@pytest.mark.parametrize("bad", [dict(warmup_env_steps=300), dict(frames_per_batch=33), dict(num_envs=3),
                                 dict(noise_std=-1.0), dict(env=EnvConfig(backend="gymnasium"), dtype="float64"),
                                 dict(env=EnvConfig(backend="gymnasium"), num_envs=2, frames_per_batch=50)])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        DDPGConfig(**{**TINY, **bad})


def test_default_config_is_the_zoo_recipe():
    config = DDPGConfig()
    assert (config.total_env_steps, config.warmup_env_steps, config.gamma, config.noise_std) == (20_000, 10_000,
                                                                                                   0.98, 0.1)
    assert (config.actor_lr, config.critic_lr, config.hidden_sizes, config.critic_hidden_sizes) == (
        1e-3, 1e-3, [400, 300], [400, 300])
    assert config.batch_size == 256 and config.tau == 0.005 and config.updates_per_env_step == 1.0


@pytest.mark.cuda
def test_ddpg_on_cuda(tmp_path):
    config = DDPGConfig(**{**TINY, "device": "cuda"})
    summary = train_ddpg(config, writer=RunWriter(tmp_path, "ddpg", config), quiet=True)
    assert summary["env_steps"] == 300 and summary["updates"] == 200
    assert research.load_policy(tmp_path / "policy.pt")(torch.zeros(3)).shape == (1,)
