import csv
import json
import math
import time
import types

import pytest
import torch

import research.policies
from research.config import ConfigError, EvalConfig, from_dict
from research.harness import (
    Budget,
    Evaluator,
    NonFiniteUpdateError,
    NullWriter,
    SkipGuard,
    make_scheduler,
    train,
)
from research.runs import RunWriter


def test_evaluation_time_is_kept_out_of_the_training_wall_clock():
    def slow_policy(observation):
        time.sleep(0.001)  # 200 steps: at least 0.2 s inside the evaluator
        return torch.zeros(*observation.shape[:-1], 1)

    budget = Budget()
    evaluator = Evaluator(EvalConfig(interval_env_steps=100, episodes=4), torch.device("cpu"), torch.float32, budget)
    result = evaluator(slow_policy, env_steps=0)
    assert result["episodes"] == 4
    assert budget.eval_time_s >= 0.2
    assert budget.wall_time_s < budget.eval_time_s
    assert evaluator.next_at == 100 and evaluator.due(100) and not evaluator.due(99)


def test_budget_without_evaluations_counts_all_time():
    budget = Budget(max_wall_time_s=0.05)
    budget.add_steps(7)
    assert budget.env_steps == 7 and not budget.out_of_time()
    time.sleep(0.06)
    assert budget.out_of_time() and budget.wall_time_s >= 0.06


class CountingAlgorithm:
    """A stand-in algorithm: a fixed policy, ``steps`` env steps per iteration, and a record of the calls."""

    def __init__(self, config, run, steps=30, iterations=10):
        self.policy = research.policies.make_policy([4])
        self.iterations = iterations
        self.run, self.steps, self.closed = run, steps, False
        self.calls = []

    def step(self, iteration):
        self.calls.append(iteration)
        self.run.budget.add_steps(self.steps)
        return {"train/return": torch.tensor(-1.5), "train/plain": 2.0}

    def summary(self):
        return {"extra": len(self.calls)}

    def close(self):
        self.closed = True


def tiny_config(**overrides):
    from research.algos.bptt import BPTTConfig

    return BPTTConfig(**{"eval": EvalConfig(interval_env_steps=100, episodes=4), **overrides})


def test_harness_owns_the_schedule_rows_and_summary(tmp_path):
    made = []

    def factory(config, run):
        made.append(CountingAlgorithm(config, run))
        return made[-1]

    config = tiny_config()
    summary = train(config, factory, writer=RunWriter(tmp_path, "fake", config), quiet=True, name="fake")
    algo = made[0]
    assert algo.calls == list(range(1, 11)) and algo.closed
    assert summary["env_steps"] == 300 and summary["iterations"] == 10 and summary["extra"] == 10
    assert summary["algo"] == "fake" and summary["seed"] == 0 and summary["skipped_updates"] == 0
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    evals = [(int(r["iteration"]), int(r["env_steps"])) for r in rows if r["eval/return_mean"]]
    # before training, at each crossing of 100 env steps, and once at the end (300 was already evaluated)
    assert evals == [(0, 0), (4, 120), (7, 210), (10, 300)]
    train_rows = [r for r in rows if r["train/return"]]
    assert len(train_rows) == 10 and float(train_rows[0]["train/return"]) == -1.5
    assert json.loads((tmp_path / "summary.json").read_text())["eval"]["episodes"] == 4


def test_harness_also_evaluates_on_a_clock(monkeypatch):
    """eval.interval_s: a method that takes few env steps per second is scored every interval_s training seconds
    as well; the env-step schedule goes on beside it. A fake clock: each iteration takes exactly 30 ms."""
    import research.harness as harness

    clock = [0.0]
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    made = []

    class Slow(CountingAlgorithm):
        def step(self, iteration):
            clock[0] += 0.03
            return super().step(iteration)

    def factory(config, run):
        made.append(Slow(config, run, steps=1, iterations=12))
        return made[-1]

    class Rows(NullWriter):
        def __init__(self):
            self.evaluations = []

        def log(self, row):
            if "eval/return_mean" in row:
                self.evaluations.append((row["iteration"], round(row["wall_time_s"], 6)))

    clocked, plain = Rows(), Rows()
    config = tiny_config(eval=EvalConfig(interval_env_steps=1000, interval_s=0.1, episodes=2))
    assert train(config, factory, writer=clocked, quiet=True)["iterations"] == 12
    # before training, at the first iteration past each 0.1 s of training, at the end
    assert clocked.evaluations == [(0, 0.0), (4, 0.12), (7, 0.21), (10, 0.3), (12, 0.36)]
    config = tiny_config(eval=EvalConfig(interval_env_steps=5, episodes=2))
    assert train(config, factory, writer=plain, quiet=True)["iterations"] == 12
    assert [i for i, _ in plain.evaluations] == [0, 5, 10, 12]  # by env steps only
    with pytest.raises(ConfigError, match=r"eval.interval_s must be >= 0 \(0: by env steps only\), got -1"):
        EvalConfig(interval_s=-1)


def test_harness_stops_at_the_time_limit_and_still_evaluates():
    made = []

    class Slow(CountingAlgorithm):
        def step(self, iteration):
            time.sleep(0.02)
            return super().step(iteration)

    def factory(config, run):
        made.append(Slow(config, run, steps=1, iterations=1000))
        return made[-1]

    summary = train(tiny_config(max_wall_time_s=0.1), factory, quiet=True)
    assert 1 <= summary["iterations"] < 1000 and summary["env_steps"] == summary["iterations"]
    assert summary["eval"]["episodes"] == 4 and made[0].closed


def test_skip_guard_clips_with_the_norm_torch_reports():
    layer = torch.nn.Linear(3, 2)
    loss = layer(torch.ones(4, 3)).pow(2).sum()
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm().item()
    guard = SkipGuard(3)
    assert guard.clip(loss, layer.parameters(), max_norm=0.5) == pytest.approx(expected, rel=1e-6)
    clipped = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm().item()
    assert clipped == pytest.approx(0.5, rel=1e-4) and guard.skipped == 0


def test_skip_guard_drops_non_finite_gradients_then_raises():
    layer = torch.nn.Linear(3, 2)
    guard = SkipGuard(2, "test update")
    for attempt in range(2):
        layer.zero_grad()
        loss = layer(torch.full((1, 3), float("nan"))).sum()
        loss.backward()
        if attempt == 0:
            assert guard.clip(loss, layer.parameters()) is None
            assert all(p.grad is None for p in layer.parameters()) and guard.skipped == 1
        else:
            with pytest.raises(NonFiniteUpdateError, match="2 consecutive test updates"):
                guard.clip(loss, layer.parameters())


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_are_torchs_own_and_end_at_the_final_fraction(schedule):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, schedule, iterations=10, final_fraction=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    final = optimizer.param_groups[0]["lr"]
    assert lrs[0] == 1.0
    assert final == pytest.approx(1.0 if schedule == "constant" else 0.1)
    if schedule == "cosine":
        assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)
    if schedule == "linear":
        assert lrs[5] == pytest.approx(1.0 - 0.9 * 0.5)


def test_null_writer_returns_the_summary():
    assert NullWriter().finish(torch.nn.Linear(1, 1), {"a": 1}) == {"a": 1}


@pytest.mark.parametrize("physics", ["weak", "coulomb", "wall", "wall_soft", "noisy", "randomized"])
@pytest.mark.parametrize("algo", ["bptt", "bptt_window", "shac", "ddpg"])
def test_every_algorithm_trains_and_is_scored_on_every_kind_of_variant(algo, physics, monkeypatch):
    """A tiny run of each trainer on a variant: finite scores on that variant, the policy squashed to its torque."""
    from research.algos import get_algo

    tiny_eval = {"interval_env_steps": 10_000, "episodes": 8}
    tables = {
        "bptt": {"iterations": 2, "num_envs": 8, "horizon": 10},
        "bptt_window": {"iterations": 3, "num_envs": 8, "window": 10, "env": {"episode_length": 15}},
        "shac": {"iterations": 3, "num_envs": 8, "window": 10, "critic_iterations": 1, "critic_minibatches": 2,
                 "env": {"episode_length": 15}},
        "ddpg": {"total_env_steps": 200, "warmup_env_steps": 100, "frames_per_batch": 100, "batch_size": 16,
                 "hidden_sizes": [8], "critic_hidden_sizes": [8], "env": {"episode_length": 50}},
    }
    table = tables[algo]
    table = {**table, "env": {**table.get("env", {}), "physics": physics}, "eval": tiny_eval}
    config_cls, trainer = get_algo(algo.split("_")[0])
    config = from_dict(config_cls, table)
    made = []
    original = Evaluator.__call__

    def spy(self, policy, env_steps):
        made.append((self.physics.name, policy.max_torque))
        return original(self, policy, env_steps)

    monkeypatch.setattr(Evaluator, "__call__", spy)
    summary = trainer(config, quiet=True)
    assert summary["skipped_updates"] == 0 and math.isfinite(summary["eval"]["return_mean"])
    expected_torque = 1.0 if physics == "weak" else 2.0
    assert made and all(m == (physics, expected_torque) for m in made)
