"""The study's findings as data: each a claim, the numbers it rests on and the test that decides it.

A report quotes findings; it does not compose verdicts in f-strings. :func:`study_findings` reads a table of runs
(``runs.csv`` of ``scripts/aggregate.py``: one row per run with its task, method label, seed, final normalized
score and times to a normalized score of 0.99) and returns, per task that has both families:

- **final score**: each backpropagation method against the best model-free method (both picked by the IQM of their
  seeds' final normalized scores), decided by the probability of improvement ``P(a seed of the subject ends above a
  seed of the opponent)`` and its 95% stratified-bootstrap interval (:func:`research.statistics.probability_of_improvement`):
  the subject is better when the interval lies above 0.5, worse when it lies below, a tie otherwise;
- **speed** in training seconds and in env steps to a normalized score of 0.99: the opponent's median over seeds
  divided by the subject's (a seed that never got there counts as never), with a 95% percentile-bootstrap interval
  (each method's seeds resampled independently, :data:`SPEED_REPS` times, fixed seed); sooner when the interval
  lies above 1, later below 1, a tie when it holds 1, undecided when neither median is finite;
- **failures**: every method's seeds whose final normalized score is below 0.9, with the Clopper-Pearson interval.

Families come from the algorithm registry (:func:`research.statistics.family`: ``bptt_squash`` is a ``bptt``,
``ddpg_tuned`` a ``ddpg``), never from lists here. :func:`render` prints any list of findings with one template,
:func:`answer` the two sentences the README quotes, each counted from the findings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from research.algos import BACKPROP, MODEL_FREE
from research.statistics import (
    BOOTSTRAP_SEED,
    FAILURE_SCORE,
    LEVEL,
    failure_rate,
    family,
    interquartile_mean,
    probability_of_improvement,
)

SUBJECT, OPPONENT, TIE, UNDECIDED = "subject", "opponent", "tie", "undecided"
"""Verdicts of a comparison: the subject is better (or sooner), the opponent is, neither is resolved, no data."""
FAILS, NONE_SEEN = "fails", "none seen"
"""Verdicts of a failure count."""
SPEED_REPS = 2_000
"""Bootstrap resamples of a ratio of median times."""
KINDS = ("final score", "seconds to 0.99", "env steps to 0.99", "failures")
#: The runs table's column each speed finding reads.
SPEED_COLUMNS = {"seconds to 0.99": "wall_time_s_to_99", "env steps to 0.99": "env_steps_to_99"}


@dataclass(frozen=True)
class Finding:
    """One claim of the study and the test that decides it.

    ``statistic, low, high`` are the test's point and interval: a probability of improvement (final score), a ratio
    of median times opponent / subject (speed), a failure rate (failures). ``numbers`` holds what the claim quotes
    (each side's IQM score, median times, seed counts)."""

    kind: str  #: one of :data:`KINDS`
    task: str  #: the preset (or ``system/preset``) the runs were scored on
    subject: str  #: a method label
    opponent: str  #: a method label ("" for failures)
    verdict: str  #: :data:`SUBJECT`, :data:`OPPONENT`, :data:`TIE`, :data:`UNDECIDED`; or :data:`FAILS`, :data:`NONE_SEEN`
    statistic: float
    low: float
    high: float
    best: bool = False  #: the subject is its family's best method on the task (the headline comparison)
    numbers: Mapping[str, float] = field(default_factory=dict)

    @property
    def claim(self) -> str:
        """The finding as one sentence, from the verdict."""
        s, o, n = f"`{self.subject}`", f"`{self.opponent}`", self.numbers
        if self.kind == "final score":
            scores = f"(IQM {n['subject_iqm']:.3f} against {n['opponent_iqm']:.3f})"
            return {SUBJECT: f"{s} ends better than {o} {scores}", OPPONENT: f"{s} ends worse than {o} {scores}",
                    TIE: f"{s} and {o} end level {scores}", UNDECIDED: f"{s} against {o}: no scores"}[self.verdict]
        if self.kind in SPEED_COLUMNS:
            unit = " s" if self.kind.startswith("seconds") else " env steps"
            times = f"(median {_time(n['subject_median'], unit)} against {_time(n['opponent_median'], unit)})"
            what = self.kind.replace(" to 0.99", "")
            return {SUBJECT: f"{s} reaches 0.99 sooner than {o} in {what} {times}",
                    OPPONENT: f"{s} reaches 0.99 later than {o} in {what} {times}",
                    TIE: f"{s} and {o} reach 0.99 level in {what} {times}",
                    UNDECIDED: f"neither {s} nor {o} reaches 0.99 on most seeds"}[self.verdict]
        failed, runs = int(n["failed"]), int(n["runs"])
        return (f"{s} fails {failed} of {runs} seeds" if self.verdict == FAILS
                else f"{s} fails none of {runs} seeds")

    @property
    def test(self) -> str:
        """What decides the verdict, with its numbers."""
        if self.kind == "final score":
            return (f"P({self.subject} > {self.opponent}) = {self.statistic:.2f} [{self.low:.2f}, {self.high:.2f}], "
                    "against 0.5")
        if self.kind in SPEED_COLUMNS:
            return (f"median ratio {self.opponent} / {self.subject} = {_ratio(self.statistic)} "
                    f"[{_ratio(self.low)}, {_ratio(self.high)}], against 1")
        return f"failure rate {self.statistic:.0%} [{self.low:.0%}, {self.high:.0%}] (Clopper-Pearson)"


def _time(value: float, unit: str) -> str:
    return "never" if not math.isfinite(value) else f"{value:.3g}{unit}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.3g}"


def _floats(rows: Sequence[Mapping], column: str, missing: float = math.nan) -> np.ndarray:
    def one(row: Mapping) -> float:
        value = row.get(column)
        return missing if value in (None, "") or (isinstance(value, float) and math.isnan(value)) else float(value)

    return np.array([one(row) for row in rows], dtype=float)


def _iqm(scores: np.ndarray) -> float:
    return float(interquartile_mean(scores, axis=None)) if scores.size else math.nan


def median_time_ratio(subject: np.ndarray, opponent: np.ndarray, level: float = LEVEL, reps: int = SPEED_REPS,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``(ratio, low, high)``: ``median(opponent) / median(subject)`` of per-seed times (``inf``: never got there),
    above 1 when the subject is sooner, with a percentile-bootstrap interval (each side's seeds resampled
    independently). ``inf`` when only the opponent's median is never, 0 when only the subject's, NaN when both."""
    subject, opponent = np.asarray(subject, float), np.asarray(opponent, float)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.median(a, axis=-1), np.median(b, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = b / a
        out = np.where(np.isinf(a) & np.isinf(b), np.nan, out)
        return np.where(np.isfinite(a) & (a == 0) & np.isfinite(b), np.inf, out)

    if not subject.size or not opponent.size:
        return math.nan, math.nan, math.nan
    point = float(ratio(subject, opponent))
    rng = np.random.default_rng(seed)
    a = subject[rng.integers(0, subject.size, size=(reps, subject.size))]
    b = opponent[rng.integers(0, opponent.size, size=(reps, opponent.size))]
    samples = ratio(a, b)
    samples = samples[~np.isnan(samples)]
    if not samples.size:
        return point, math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha], method="inverted_cdf")
    return point, float(low), float(high)


def _verdict(low: float, high: float, even: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return UNDECIDED
    return SUBJECT if low > even else OPPONENT if high < even else TIE


def task_findings(task: str, rows: Sequence[Mapping], family_of: Callable[[str], str] = family,
                  level: float = LEVEL) -> list[Finding]:
    """The findings of one task from its runs (each row: ``algo`` label, ``normalized_score``, the time columns of
    :data:`SPEED_COLUMNS`): every backpropagation method against the best model-free one, and every method's
    failures. ``[]`` when the task lacks either family."""
    by_method: dict[str, list[Mapping]] = {}
    for row in rows:
        by_method.setdefault(str(row["algo"]), []).append(row)
    scores = {m: _floats(r, "normalized_score") for m, r in by_method.items()}
    iqm = {m: _iqm(s) for m, s in scores.items()}
    members = {f: sorted((m for m in by_method if family_of(m) == f), key=lambda m: -np.nan_to_num(iqm[m], nan=-np.inf))
               for f in (BACKPROP, MODEL_FREE)}
    findings: list[Finding] = []
    if members[BACKPROP] and members[MODEL_FREE]:
        opponent = members[MODEL_FREE][0]
        for rank, subject in enumerate(members[BACKPROP]):
            p, low, high = probability_of_improvement(scores[subject], scores[opponent], level)
            findings.append(Finding("final score", task, subject, opponent, _verdict(low, high, 0.5), p, low, high,
                                    rank == 0, {"subject_iqm": iqm[subject], "opponent_iqm": iqm[opponent],
                                                "subject_runs": scores[subject].size,
                                                "opponent_runs": scores[opponent].size}))
            for kind, column in SPEED_COLUMNS.items():
                mine = _floats(by_method[subject], column, math.inf)
                theirs = _floats(by_method[opponent], column, math.inf)
                ratio, low, high = median_time_ratio(mine, theirs, level)
                verdict = UNDECIDED if math.isnan(ratio) else _verdict(low, high, 1.0)
                findings.append(Finding(kind, task, subject, opponent, verdict, ratio, low, high, rank == 0,
                                        {"subject_median": float(np.median(mine)),
                                         "opponent_median": float(np.median(theirs))}))
    for method in [*members[BACKPROP], *members[MODEL_FREE]]:
        failed, n, rate, low, high = failure_rate(scores[method], FAILURE_SCORE, level)
        if n and not math.isnan(rate):
            findings.append(Finding("failures", task, method, "", FAILS if failed else NONE_SEEN, rate, low, high,
                                    method in (members[BACKPROP][:1] + members[MODEL_FREE][:1]),
                                    {"failed": failed, "runs": n}))
    return findings


def study_findings(runs: Sequence[Mapping], family_of: Callable[[str], str] = family, task_column: str = "physics",
                   level: float = LEVEL) -> list[Finding]:
    """Every task's findings (:func:`task_findings`), tasks in the order they first appear in ``runs``."""
    tasks: dict[str, list[Mapping]] = {}
    for row in runs:
        tasks.setdefault(str(row[task_column]), []).append(row)
    return [finding for task, rows in tasks.items() for finding in task_findings(task, rows, family_of, level)]


def render(findings: Sequence[Finding]) -> list[str]:
    """Markdown table lines: one row per finding (task, claim, test, verdict)."""
    lines = ["| task | finding | test (95% interval) | verdict |", "|---|---|---|---|"]
    for f in findings:
        verdict = {SUBJECT: f"`{f.subject}`", OPPONENT: f"`{f.opponent}`"}.get(f.verdict, f.verdict)
        lines.append(f"| `{f.task}` | {f.claim} | {f.test} | {verdict} |")
    return lines


def answer(findings: Sequence[Finding]) -> list[str]:
    """Two sentences counted from the headline findings (each task's best backpropagation method against its best
    model-free one): where backpropagation ends better, and where it gets to 0.99 sooner in seconds and env steps."""
    head = [f for f in findings if f.best and f.kind != "failures"]
    score = [f for f in head if f.kind == "final score"]
    if not score:
        return ["No task has runs of both families: nothing to compare."]

    def tasks(items: list[Finding], verdict: str) -> list[str]:
        return [f"`{f.task}`" for f in items if f.verdict == verdict]

    def count(items: list[Finding], verdict: str) -> str:
        named = tasks(items, verdict)
        return f"{len(named)}" + (f" ({', '.join(named)})" if named else "")

    n = len(score)
    first = (f"Against the best model-free method of each task, the best backpropagation method ends with the better "
             f"final normalized score on {count(score, SUBJECT)} of {n} tasks, the worse on {count(score, OPPONENT)} "
             f"and level on {count(score, TIE)} (probability of improvement, 95% interval against 0.5).")
    seconds = [f for f in head if f.kind == "seconds to 0.99"]
    steps = [f for f in head if f.kind == "env steps to 0.99"]
    sooner = [f.statistic for f in seconds if f.verdict == SUBJECT and math.isfinite(f.statistic)]
    spread = f", {min(sooner):.3g}-{max(sooner):.3g}x sooner by the median" if sooner else ""
    second = (f"It reaches a normalized score of 0.99 sooner in training seconds on {count(seconds, SUBJECT)} of {n}"
              f"{spread}, later on {count(seconds, OPPONENT)}, level or undecided on "
              f"{n - len(tasks(seconds, SUBJECT)) - len(tasks(seconds, OPPONENT))}; in env steps sooner on "
              f"{len(tasks(steps, SUBJECT))} and later on {len(tasks(steps, OPPONENT))}.")
    return [first, second]


__all__ = ["Finding", "KINDS", "answer", "median_time_ratio", "render", "study_findings",
           "task_findings"]
