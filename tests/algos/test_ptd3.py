"""Parallel TD3: n-step transitions, TD3's losses against TorchRL's, mixed noise, budgets, bad inputs, every system,
exact resume and a small learning check."""

import csv
import json

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import TD3Loss, ValueEstimators

import research
from research.algos import get_algo
from research.algos.off_policy import make_critic
from research.algos.ptd3 import PTD3, PTD3Config, PTD3EvalConfig, TwinLosses, n_step_transitions
from research.config import ConfigError, EnvConfig, EvalConfig
from research.harness import prepare
from research.policies import make_actor, make_policy
from research.systems import make
from research.train import main, resolve_config

TINY = dict(total_env_steps=640, warmup_env_steps=128, num_envs=16, frames_per_batch=32, updates_per_env_step=0.125,
            batch_size=32, hidden_sizes=[16], critic_hidden_sizes=[16],
            eval=PTD3EvalConfig(interval_env_steps=320, episodes=8))


def steps(E, L, done_at=(), seed=0):
    """``[E, L]`` one-step transitions with rewards ``arange``, episodes ending after the steps in ``done_at``."""
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(E, L, 1, dtype=torch.bool)
    done[:, list(done_at)] = True
    return TensorDict({
        "observation": torch.randn(E, L, 3, generator=g), "action": torch.randn(E, L, 1, generator=g),
        "next": {"observation": torch.randn(E, L, 3, generator=g),
                 "reward": torch.arange(E * L, dtype=torch.float32).view(E, L, 1),
                 "done": done, "terminated": torch.zeros_like(done)},
    }, batch_size=[E, L])


def test_n_step_transitions_sum_discounted_rewards_and_stop_at_episode_ends():
    seq = steps(2, 7, done_at=[3])
    ready, carry = n_step_transitions(seq, 3, 0.5)
    assert ready.shape == (2, 5) and carry.shape == (2, 2)  # steps 5 and 6 wait for the next batch
    # rewards 0..6: full windows at 0 and 4, windows cut by the episode's end after step 3
    torch.testing.assert_close(ready["next", "reward"][0, :, 0], torch.tensor([1.0, 2.75, 3.5, 3.0, 8.0]))
    assert ready["steps_to_next_obs"][0, :, 0].tolist() == [3, 3, 2, 1, 3]
    last = [2, 3, 3, 3, 6]
    torch.testing.assert_close(ready["next", "observation"], seq["next", "observation"][:, last])
    assert ready["next", "done"][0, :, 0].tolist() == [False, True, True, True, False]
    torch.testing.assert_close(ready["observation"], seq["observation"][:, :5])
    torch.testing.assert_close(carry["action"], seq["action"][:, 5:])


def test_n_step_transitions_carried_across_batches_equal_one_pass():
    seq = steps(3, 12, done_at=[5, 11], seed=1)
    whole, _ = n_step_transitions(seq, 4, 0.9)
    pieces, carry = [], seq[:, :0]
    for start in range(0, 12, 2):  # batches of two steps, the carry prepended
        ready, carry = n_step_transitions(torch.cat([carry, seq[:, start:start + 2]], dim=1), 4, 0.9)
        pieces.append(ready)
    joined = torch.cat(pieces, dim=1)
    assert carry.shape[1] == 0 and joined.shape == whole.shape == (3, 12)
    assert (joined == whole).all()
    one, rest = n_step_transitions(seq, 1, 0.9)
    torch.testing.assert_close(one["next", "reward"], seq["next", "reward"])
    assert rest.shape[1] == 0 and (one["steps_to_next_obs"] == 1).all()


def test_twin_losses_match_torchrl_td3_loss():
    config = PTD3Config(**TINY)
    torch.manual_seed(0)
    policy = make_policy([16], "relu", 2.0)
    reference = TD3Loss(make_actor(policy), make_critic(config, torch.device("cpu"), torch.float32),
                        num_qvalue_nets=2, bounds=(-2.0, 2.0), loss_function="l2", policy_noise=0.4, noise_clip=1.0,
                        deactivate_vmap=True)
    reference.make_value_estimator(ValueEstimators.TD0, gamma=0.9)
    critics = [make_critic(config, torch.device("cpu"), torch.float32).module for _ in range(2)]
    for i, critic in enumerate(critics):  # TD3Loss's two critics, parameter for parameter
        critic.load_state_dict({".".join(key[1:]): value.data
                                for key, value in reference.qvalue_network_params[i].items(True, True)})
    losses = TwinLosses(policy, critics, 0.9, policy_noise=0.4, noise_clip=1.0, max_action=2.0)
    sample, _ = n_step_transitions(steps(8, 6, done_at=[2], seed=3), 3, 0.9)
    sample = sample.reshape(-1)
    sample["next", "terminated"][::5] = True
    torch.manual_seed(1)
    loss, q = losses.critic_loss(sample)
    torch.manual_seed(1)  # the same target-policy noise
    expected, info = reference.value_loss(sample.clone())
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(q.squeeze(-1), info["pred_value"])
    expected_actor, _ = reference.actor_loss(sample.clone())
    torch.testing.assert_close(losses.actor_loss(sample["observation"]), expected_actor)


def test_the_actor_and_targets_move_only_every_policy_delay_updates():
    config = PTD3Config(**TINY)
    algo = PTD3(config, prepare(config))
    sample, _ = n_step_transitions(steps(8, 6, seed=4), 3, 0.98)
    sample = sample.reshape(-1)
    actor = [p.clone() for p in algo.policy.parameters()]
    critic = [p.clone() for p in algo.critic_params]
    targets = [p.clone() for p in algo.losses._targets]
    first = algo.update(sample)
    assert torch.isnan(first[0]) and torch.isfinite(first[1:]).all()
    assert all(torch.equal(a, b) for a, b in zip(actor, algo.policy.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(targets, algo.losses._targets, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(critic, algo.critic_params, strict=True))
    assert torch.isfinite(algo.update(sample)).all()
    assert not any(torch.equal(a, b) for a, b in zip(actor, algo.policy.parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(targets, algo.losses._targets, strict=True))
    algo.close()


def test_each_environment_explores_with_its_own_noise_scale_redrawn_per_episode():
    config = PTD3Config(**{**TINY, "noise_std": 0.5, "noise_std_min": 0.1, "env": EnvConfig(episode_length=4)})
    algo = PTD3(config, prepare(config))
    scales = []
    for _ in range(4):  # 2 steps per batch: episodes of 4 steps start at every other batch
        scales.append(algo.noise_scale[:, 0].clone())
        algo.collector.frames = algo.collector.warmup_frames  # past the warm-up: every action explores
        next(algo.batches)
    scales = torch.stack(scales)
    assert bool(((scales >= 0.1 * 2.0) & (scales <= 0.5 * 2.0)).all())
    assert scales[0].unique().numel() == 16  # one scale per environment
    # batches 0 and 2 start episodes (new scales), batch 1 goes on with batch 0's
    assert not torch.equal(scales[0], scales[1]) and torch.equal(scales[1], scales[2])
    assert not torch.equal(scales[2], scales[3])
    obs = torch.zeros(16, 3)
    noise = algo.explore(obs, torch.Generator().manual_seed(0)) - algo.policy(obs)
    assert noise.std() > 0.05


def test_a_tiny_run_counts_every_transition_and_writes_every_file(tmp_path):
    cli = ["--set", "total_env_steps=640", "--set", "warmup_env_steps=128", "--set", "num_envs=16",
           "--set", "frames_per_batch=32", "--set", "updates_per_env_step=0.125", "--set", "batch_size=32",
           "--set", "hidden_sizes=[16]", "--set", "critic_hidden_sizes=[16]", "--set", "eval.episodes=8",
           "--set", "eval.interval_env_steps=320"]
    assert main(["--algo", "ptd3", "--seed", "1", "--results", str(tmp_path), "--experiment", "t", "--quiet", *cli]) == 0
    out = tmp_path / "t" / "ptd3" / "seed_1"
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt",
                                               "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    # 20 batches of 32 transitions; updates follow the 16 batches after the 128-step warm-up, 4 each
    assert summary["env_steps"] == 640 and summary["iterations"] == 20 and summary["updates"] == 16 * 4
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["env_steps"]) for r in rows if r["eval/return_mean"]] == [0, 320, 640]
    assert research.load_policy(out / "policy.pt")(torch.zeros(3)).shape == (1,)


@pytest.mark.parametrize("system", ["cartpole", "acrobot"])
def test_trains_on_every_system(system):
    _, trainer = get_algo("ptd3")
    config = PTD3Config(**{**TINY, "total_env_steps": 320, "env": EnvConfig(system=system), "n_step": 2,
                           "eval": PTD3EvalConfig(interval_env_steps=320, episodes=4)})
    summary = trainer(config, quiet=True)
    sys_ = make(system)
    assert summary["env_steps"] == 320 and summary["updates"] == 6 * 4
    assert torch.isfinite(torch.tensor(summary["eval"]["return_mean"]))
    algo = PTD3(config, prepare(config))
    obs = sys_.observe(sys_.initial_state((16,), torch.Generator().manual_seed(0)))
    action = algo.explore(obs, torch.Generator().manual_seed(0))
    assert action.shape == (16, sys_.action_dim) and bool((action.abs() <= sys_.max_action).all())


@pytest.mark.parametrize("override, names", [
    ("n_step=0", ["ptd3.n_step", "[1, env.episode_length=200]", "0"]),
    ("noise_std_min=0.6", ["ptd3.noise_std_min", "[0, noise_std=0.4]"]),
    ('noise="ou"', ["ptd3.noise", "'gaussian'"]),
    ('env.backend="gymnasium"', ["ptd3.env.backend", "'simulator'"]),
    ("updates_per_env_step=0.001", ["ptd3.updates_per_env_step", "at least one update"]),
    ("num_envs=100", ["ptd3.frames_per_batch", "multiple of num_envs"]),
    ("n_step=nan", ["ptd3.n_step", "integer"]),
])
def test_bad_values_are_one_line_errors_naming_the_field(override, names):
    with pytest.raises(ConfigError) as err:
        resolve_config("ptd3", {}, overrides=[override])
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)


def test_resumes_exactly(tmp_path):
    from tests.test_checkpoint import EVERY_ITERATION, check_resume_is_exact

    # a 400-row buffer that wraps around, n-step carries and per-episode noise draws across both kills
    config = PTD3Config(**{**TINY, "buffer_size": 400, "env": EnvConfig(episode_length=6), "n_step": 3,
                           "checkpoint_every_s": EVERY_ITERATION,
                           "eval": EvalConfig(interval_env_steps=320, episodes=8)})
    reference, _ = check_resume_is_exact(tmp_path, PTD3, config, "ptd3", kills=[7, 12])
    assert reference["updates"] == 16 * 4 and reference["env_steps"] == 640


@pytest.mark.slow
def test_learns_something_in_1440_updates():
    """64 environments, 8 updates of 256 per 64-step batch, 12 800 env steps: the evaluation return rises well above
    the untrained policy's (-1359 on these 64 starts; this run ends near -1030, still far from a swing-up)."""
    config = PTD3Config(num_envs=64, frames_per_batch=64, updates_per_env_step=0.125, batch_size=256,
                        total_env_steps=12_800, warmup_env_steps=1_280,
                        eval=PTD3EvalConfig(interval_env_steps=12_800, episodes=64))
    summary = get_algo("ptd3")[1](config, quiet=True)
    assert summary["updates"] == (200 - 20) * 8
    assert summary["eval"]["return_mean"] > -1150
