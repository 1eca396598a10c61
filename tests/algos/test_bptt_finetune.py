"""BPTT with a fine-tuning stage: the switch of objective, the budget, and the config errors."""

import pytest

from research.algos import bptt as bptt_module
from research.algos.bptt_finetune import BPTTFinetuneConfig, FinetuneConfig, train_bptt_finetune
from research.config import ConfigError, EvalConfig
from research.train import resolve_config

TINY_EVAL = EvalConfig(interval_env_steps=10_000, episodes=64)


def test_stage_switches_objective_and_counts_its_steps(monkeypatch):
    """After ``iterations`` updates the stage's batch, horizon and discount take over."""
    seen = []
    original = bptt_module.horizon_loss
    monkeypatch.setattr(bptt_module, "horizon_loss", lambda r, d: seen.append((tuple(r.shape), d)) or original(r, d))
    config = BPTTFinetuneConfig(iterations=3, num_envs=8, horizon=10, window=5, hidden_sizes=[8], eval=TINY_EVAL,
                                finetune=FinetuneConfig(iterations=2, num_envs=4, horizon=30, discount=1.0, lr=1e-3))
    summary = train_bptt_finetune(config, quiet=True)
    assert seen == [((8, 5), 0.98)] * 3 + [((4, 30), 1.0)] * 2  # truncated windows, then full 30-step rollouts
    assert summary["iterations"] == 5 and summary["env_steps"] == 3 * 8 * 5 + 2 * 4 * 30


def test_without_a_stage_it_is_bptt():
    base = dict(iterations=3, num_envs=8, horizon=10, hidden_sizes=[8], eval=TINY_EVAL, dtype="float64")
    plain = bptt_module.train_bptt(bptt_module.BPTTConfig(**base), quiet=True)
    staged = train_bptt_finetune(BPTTFinetuneConfig(finetune=FinetuneConfig(iterations=0), **base), quiet=True)
    assert staged["eval"]["return_mean"] == plain["eval"]["return_mean"]


@pytest.mark.parametrize("table, match", [
    ({"finetune": {"iterations": -1}}, "bptt_finetune.finetune.iterations must be >= 0"),
    ({"finetune": {"discount": 1.5}}, r"bptt_finetune.finetune.discount must be in \(0, 1\]"),
    ({"rollout": "env"}, "finetune.iterations > 0 needs rollout='fused'"),
])
def test_config_errors(table, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("bptt_finetune", table, 0)
