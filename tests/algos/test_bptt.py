import csv
import json

import pytest
import torch

import research
from research.algos.bptt import BPTTConfig, horizon_loss, train_bptt
from research.config import EnvConfig, EvalConfig
from research.harness import NonFiniteUpdateError
from research.runs import RunWriter
from research.train import main

TINY_EVAL = EvalConfig(interval_env_steps=10_000, episodes=64)


def test_smoke_run_writes_every_output_file(tmp_path):
    out = tmp_path / "run"
    rc = main(["--algo", "bptt", "--seed", "1", "--results", str(tmp_path), "--experiment", "smoke", "--quiet",
               "--set", "iterations=4", "--set", "num_envs=8", "--set", "horizon=10",
               "--set", "eval.episodes=16", "--set", "eval.interval_env_steps=160"])
    assert rc == 0
    out = tmp_path / "smoke" / "bptt" / "seed_1"
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt", "checkpoint.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "bptt" and summary["seed"] == 1
    assert summary["env_steps"] == 4 * 8 * 10
    assert set(summary["eval"]) >= {"return_mean", "return_std", "return_median", "return_iqm", "return_min",
                                     "success_rate"}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["iterations"] == 4 and "torch" in config["versions"] and config["config_hash"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {"iteration", "env_steps", "wall_time_s", "train/return", "train/grad_norm", "eval/return_mean"} <= set(
        rows[0])
    evals = [r for r in rows if r["eval/return_mean"]]
    assert [int(r["env_steps"]) for r in evals] == [0, 160, 320]
    assert int(rows[-1]["env_steps"]) == summary["env_steps"]
    policy = research.load_policy(out / "policy.pt")
    assert policy(torch.zeros(3)).shape == (1,)


@pytest.mark.parametrize("window", [0, 20])
def test_bptt_improves_a_tiny_problem(window):
    """A few seconds of BPTT lift the evaluation return well above the random policy's."""
    config = BPTTConfig(iterations=60, num_envs=64, horizon=40, window=window, lr=5e-3, hidden_sizes=[32, 32],
                        eval=TINY_EVAL)
    summary = train_bptt(config, quiet=True)
    torch.manual_seed(0)
    initial = research.evaluation.evaluate_policy(research.policies.make_policy([32, 32]), num_episodes=64)
    assert summary["eval"]["return_mean"] > initial["return_mean"] + 200
    assert summary["env_steps"] == 60 * 64 * (window or 40)


def test_env_rollout_path_trains_like_fused():
    base = dict(iterations=3, num_envs=8, horizon=10, hidden_sizes=[8], eval=TINY_EVAL, dtype="float64")
    fused = train_bptt(BPTTConfig(**base), quiet=True)
    through_env = train_bptt(BPTTConfig(rollout="env", **base), quiet=True)
    assert fused["eval"]["return_mean"] == pytest.approx(through_env["eval"]["return_mean"], rel=1e-9)


def test_domain_randomised_training_runs():
    config = BPTTConfig(iterations=2, num_envs=8, horizon=5, hidden_sizes=[8], eval=TINY_EVAL,
                        env=EnvConfig(param_ranges={"g": [8.0, 12.0]}))
    summary = train_bptt(config, quiet=True)
    assert summary["env_steps"] == 80 and summary["skipped_updates"] == 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_non_finite_updates_are_skipped_then_stop(tmp_path, monkeypatch):
    import research.algos.bptt as bptt

    created = []

    def recording_make_policy(*args, **kwargs):
        created.append(research.policies.make_policy(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(bptt, "make_policy", recording_make_policy)
    monkeypatch.setattr(bptt, "horizon_loss", lambda rewards, discount: rewards.sum() * float("nan"))
    config = BPTTConfig(iterations=20, num_envs=4, horizon=5, hidden_sizes=[8], eval=TINY_EVAL,
                        max_consecutive_skips=3)
    torch.manual_seed(config.seed)
    expected = [p.clone() for p in research.policies.make_policy([8]).parameters()]
    with pytest.raises(NonFiniteUpdateError, match="3 consecutive"):
        train_bptt(config, writer=RunWriter(tmp_path, "bptt", config), quiet=True)
    # the parameters never saw the NaN gradients, and the run is not marked finished
    for before, after in zip(expected, created[0].parameters(), strict=True):
        assert torch.equal(before, after)
    assert not (tmp_path / "summary.json").exists()


def test_cuda_not_available_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_bptt(BPTTConfig(device="cuda", iterations=1), quiet=True)


@pytest.mark.cuda
def test_bptt_on_cuda():
    config = BPTTConfig(device="cuda", iterations=3, num_envs=16, horizon=10, eval=TINY_EVAL)
    summary = train_bptt(config, quiet=True)
    assert summary["env_steps"] == 480


def test_horizon_loss_is_weighted_mean_reward():
    rewards = torch.full((4, 10), -2.0)
    assert horizon_loss(rewards, 0.9).item() == pytest.approx(2.0)
    assert horizon_loss(rewards, 1.0).item() == pytest.approx(2.0)
    # the weights decay: a reward at t = 0 counts more than one at t = 9
    early, late = torch.zeros(1, 10), torch.zeros(1, 10)
    early[0, 0], late[0, 9] = -1.0, -1.0
    assert horizon_loss(early, 0.9).item() > horizon_loss(late, 0.9).item() > 0

