"""research.findings: the study's verdicts on small synthetic run tables whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from research.findings import (
    FAILS,
    NONE_SEEN,
    OPPONENT,
    SUBJECT,
    TIE,
    UNDECIDED,
    answer,
    median_time_ratio,
    render,
    study_findings,
)


def _runs(task, algo, scores, seconds=None, steps=None):
    """Rows as scripts/aggregate.py writes runs.csv: "" for a time never reached."""
    seconds = seconds if seconds is not None else [10.0] * len(scores)
    steps = steps if steps is not None else [1e6] * len(scores)
    return [{"physics": task, "algo": algo, "seed": i, "normalized_score": s,
             "wall_time_s_to_99": "" if t is None else t, "env_steps_to_99": "" if e is None else e}
            for i, (s, t, e) in enumerate(zip(scores, seconds, steps, strict=True))]


def _pick(findings, kind, subject=None, task=None):
    found = [f for f in findings if f.kind == kind and (subject is None or f.subject == subject)
             and (task is None or f.task == task)]
    assert len(found) == 1, found
    return found[0]


def test_a_clear_win_on_score_and_time_is_the_subjects():
    rows = (_runs("default", "bptt", [0.995, 0.994, 0.996, 0.995, 0.993], seconds=[5, 6, 5, 7, 6])
            + _runs("default", "ddpg", [0.95, 0.96, 0.94, 0.95, 0.97], seconds=[60, 70, 65, 80, 75]))
    findings = study_findings(rows)
    score = _pick(findings, "final score")
    assert (score.subject, score.opponent, score.verdict, score.best) == ("bptt", "ddpg", SUBJECT, True)
    assert score.statistic == 1.0 and score.low > 0.5
    seconds = _pick(findings, "seconds to 0.99")
    assert seconds.verdict == SUBJECT and seconds.statistic == pytest.approx(70 / 6) and seconds.low > 1
    steps = _pick(findings, "env steps to 0.99")  # same steps on both sides: a tie
    assert steps.verdict == TIE and steps.statistic == 1.0
    assert "ends better than `ddpg`" in score.claim and "P(bptt > ddpg) = 1.00" in score.test


def test_overlapping_seeds_are_a_tie_and_a_loss_is_the_opponents():
    rng = np.random.default_rng(0)
    level = list(0.95 + 0.01 * rng.standard_normal(10))
    rows = (_runs("wall", "shac", level) + _runs("wall", "ppo", [x + 0.001 for x in level])
            + _runs("coulomb", "bptt", [0.5, 0.6, 0.55, 0.7, 0.65]) + _runs("coulomb", "td3", [0.99] * 5))
    findings = study_findings(rows)
    assert _pick(findings, "final score", task="wall").verdict == TIE
    loss = _pick(findings, "final score", task="coulomb")
    assert loss.verdict == OPPONENT and loss.high < 0.5
    assert "ends worse than `td3`" in loss.claim


def test_each_backprop_method_meets_the_best_model_free_one_picked_by_iqm():
    rows = (_runs("default", "bptt", [0.99] * 4) + _runs("default", "bptt_squash", [0.98] * 4)
            + _runs("default", "sac", [0.90] * 4) + _runs("default", "ddpg_tuned", [0.97] * 4))
    scores = [f for f in study_findings(rows) if f.kind == "final score"]
    # the registry's families, variants by their prefix: ddpg_tuned is model-free and the better of the two
    assert [(f.subject, f.opponent, f.best) for f in scores] == [("bptt", "ddpg_tuned", True),
                                                                  ("bptt_squash", "ddpg_tuned", False)]


def test_a_task_with_one_family_gives_no_comparison_but_its_failures():
    findings = study_findings(_runs("default", "bptt", [0.99, 0.5, 0.95]))
    assert [f.kind for f in findings] == ["failures"]
    assert findings[0].verdict == FAILS and findings[0].numbers == {"failed": 1, "runs": 3}
    assert findings[0].low > 0 and findings[0].high < 1


def test_failures_use_clopper_pearson_and_none_seen_keeps_its_upper_bound():
    rows = _runs("noisy", "bptt", [0.99] * 5) + _runs("noisy", "ddpg", [0.99] * 4 + [0.3])
    failures = {f.subject: f for f in study_findings(rows) if f.kind == "failures"}
    assert failures["bptt"].verdict == NONE_SEEN
    assert failures["bptt"].high == pytest.approx(1 - 0.025 ** (1 / 5))
    assert failures["ddpg"].verdict == FAILS and failures["ddpg"].statistic == 0.2


def test_never_reaching_counts_as_never_in_the_median():
    # two of three model-free seeds never reach 0.99: its median is never, so backprop is sooner without bound
    rows = (_runs("weak", "bptt", [0.995] * 3, seconds=[4, 5, 6]) +
            _runs("weak", "td3", [0.995, 0.98, 0.97], seconds=[30, None, None]))
    seconds = _pick(study_findings(rows), "seconds to 0.99")
    assert math.isinf(seconds.statistic) and seconds.verdict == SUBJECT
    assert "against never" in seconds.claim and "= inf [" in seconds.test
    # neither reaches: undecided, never a verdict
    rows = _runs("weak", "bptt", [0.9] * 3, seconds=[None] * 3) + _runs("weak", "td3", [0.9] * 3, seconds=[None] * 3)
    assert _pick(study_findings(rows), "seconds to 0.99").verdict == UNDECIDED


def test_median_time_ratio_interval_brackets_its_point():
    ratio, low, high = median_time_ratio(np.array([1.0, 2, 3, 4, 5]), np.array([10.0, 20, 30, 40, 50]))
    assert ratio == pytest.approx(10.0) and low <= ratio <= high
    assert all(math.isnan(x) for x in median_time_ratio(np.array([]), np.array([1.0])))


def test_the_answer_counts_the_headline_findings_and_render_prints_every_one():
    rows = (_runs("default", "bptt", [0.995] * 5, seconds=[5] * 5) + _runs("default", "ddpg", [0.95] * 5, seconds=[50] * 5)
            + _runs("wall", "bptt", [0.5] * 5, seconds=[None] * 5) + _runs("wall", "ddpg", [0.99] * 5, seconds=[40] * 5))
    findings = study_findings(rows)
    first, second = answer(findings)
    assert "better final normalized score on 1 (`default`) of 2 tasks, the worse on 1 (`wall`)" in first
    assert "sooner in training seconds on 1 (`default`) of 2, 10-10x sooner" in second
    assert "later on 1 (`wall`)" in second
    table = render(findings)
    assert len(table) == 2 + len(findings) and table[2].startswith("| `default` |")
    assert answer(study_findings(_runs("default", "bptt", [0.99]))) == [
        "No task has runs of both families: nothing to compare."]
