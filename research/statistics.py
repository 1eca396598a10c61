"""Statistics over seeds shared by the evaluator and the report scripts, so both compute them the same way.

:func:`interquartile_mean` is numpy only (the evaluator and the scripts' point estimates use it). Everything else
follows the field's standard, rliable (Agarwal et al., *Deep RL at the edge of the statistical precipice*, NeurIPS
2021), imported lazily so the evaluator works without it (``pip install -e .[stats]`` installs it):

- :func:`stratified_interval` / :func:`iqm_interval`: a statistic of a score table ``[runs, tasks]`` with a
  stratified-bootstrap confidence interval (runs resampled within each task, rliable's ``StratifiedBootstrap``);
- :func:`probability_of_improvement`: ``P(X > Y)`` of a run of one method over a run of another, averaged over tasks,
  with an interval from resampling each method's runs independently (``StratifiedIndependentBootstrap``);
- :func:`performance_profile`: the fraction of runs whose score exceeds ``tau``, for each ``tau``, with bands;
- :func:`clopper_pearson` / :func:`failure_rate`: a failure rate with its exact binomial interval;
- :func:`gap_target_score`: the score within ``GAP_FACTOR`` times the best method's final gap to the optimum.

Scores are normalized so that 0 is doing nothing and 1 the optimum (``scripts/aggregate.py``'s
``normalized_score``); a *task* is one system and physics preset. rliable draws its resamples from numpy's global
RNG; every function here seeds it (``seed``, default :data:`BOOTSTRAP_SEED`) for the call and restores its state
afterwards, so results are reproducible and nothing else's random stream moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from types import ModuleType

import numpy as np

BOOTSTRAP_REPS = 2_000
"""Bootstrap resamples per interval (rliable's default for its performance profiles). The arch bootstrap behind
rliable calls the statistic once per resample in Python; tests lower this to keep their cost small."""
BOOTSTRAP_SEED = 0
"""Seed of numpy's global RNG during a bootstrap (restored afterwards)."""
LEVEL = 0.95
"""Coverage of every interval."""
FAILURE_SCORE = 0.9
"""A seed *failed* when its final normalized score is below this (at 0.9 a pendulum swing-up is still far from
optimal, so this is a lenient bar: it flags runs that did not learn the task, not runs that learned it worse)."""
SCORE_TARGET = 0.99
"""The normalized score whose first crossing the time-to-target columns measure."""
GAP_FACTOR = 2.0
"""Time to 'within twice the best method's final gap': the target is ``1 - GAP_FACTOR (1 - best score)``."""


OTHER = "other"
"""The family of a name the algorithm registry does not know (a hand-made run directory, a synthetic test table)."""


def family(algo: str) -> str:
    """``"backprop"`` or ``"model-free"``: the family the algorithm registry gives ``algo`` (or the algorithm a
    variant such as ``bptt_squash`` is named after; :func:`research.algos.family`); :data:`OTHER` for a name it does
    not know."""
    from research.algos import family as registry_family

    try:
        return registry_family(algo)
    except ValueError:
        return OTHER


def is_backprop(algo: str) -> bool:
    """Whether ``algo`` backpropagates through the simulator (its registry family, :func:`family`)."""
    from research.algos import BACKPROP

    return family(algo) == BACKPROP


def interquartile_mean(values: np.ndarray, axis: int | None = -1) -> np.ndarray:
    """Mean after dropping the lowest and the highest ``n // 4`` values along ``axis`` (n = 5 keeps the middle 3).

    ``values`` is ``[..., n, ...]``; the result drops ``axis`` (``axis=None``: over every value, as rliable's
    ``aggregate_iqm`` of a ``[runs, tasks]`` table). With fewer than 4 values nothing is dropped.
    """
    values = np.asarray(values, dtype=float)
    if axis is None:
        values, axis = values.ravel(), -1
    ordered = np.sort(values, axis=axis)
    n = ordered.shape[axis]
    cut = n // 4
    return np.mean(np.take(ordered, np.arange(cut, n - cut), axis=axis), axis=axis)


def rliable() -> ModuleType:
    """rliable's ``library`` module; a one-line ``ImportError`` naming the install command when it is missing."""
    try:
        from rliable import library
    except ImportError:
        raise ImportError("rliable is not installed (the confidence intervals need it): pip install -e .[stats]"
                          ) from None
    return library


@contextmanager
def _seeded(seed: int):
    """numpy's global RNG seeded with ``seed`` inside the block (rliable samples from it), its state restored after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _table(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a float ``[runs, tasks]`` table (``[runs]`` is one task)."""
    scores = np.asarray(scores, dtype=float)
    return scores[:, None] if scores.ndim == 1 else scores


def stratified_interval(scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], level: float = LEVEL,
                        reps: int | None = None, seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic of a score table with its stratified-bootstrap percentile interval (rliable).

    Args:
        scores: ``[runs, tasks]`` (``[runs]``: one task). Each resample draws ``runs`` runs with replacement within
            every task (column) independently.
        statistic: ``f(scores [runs, tasks]) -> [K]``, e.g. ``lambda s: s.mean(axis=0)`` (one value per task).
        level: coverage; reps: resamples (default :data:`BOOTSTRAP_REPS`); seed: the resampling's.

    Returns:
        ``(point [K], low [K], high [K])``; NaN when there are no runs or a score is NaN.
    """
    table = _table(scores)
    point = np.atleast_1d(np.asarray(statistic(table), dtype=float)) if table.size else None
    if point is None or np.isnan(table).any():
        shape = point.shape if point is not None else (1,)
        nan = np.full(shape, np.nan)
        return nan, nan.copy(), nan.copy()
    library = rliable()
    with _seeded(seed):
        _, intervals = library.get_interval_estimates(
            {"x": table}, lambda s: np.atleast_1d(statistic(s)), reps=reps or BOOTSTRAP_REPS,
            confidence_interval_size=level)
    low, high = np.asarray(intervals["x"], dtype=float).reshape(2, -1)
    return point, low, high


def iqm_interval(scores: np.ndarray, level: float = LEVEL, reps: int | None = None,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``(IQM, low, high)`` of ``scores [runs, tasks]`` (``[runs]``: one task): the interquartile mean over every run
    of every task (rliable's ``aggregate_iqm``) with its stratified-bootstrap interval. NaN without scores."""
    point, low, high = stratified_interval(scores, lambda s: interquartile_mean(s, axis=None), level, reps, seed)
    return float(point[0]), float(low[0]), float(high[0])


def mean_interval(scores: np.ndarray, level: float = LEVEL, reps: int | None = None,
                  seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``scores [runs, tasks]`` (mean of the per-task means) with its stratified interval."""
    point, low, high = stratified_interval(scores, lambda s: np.mean(s.mean(axis=0)), level, reps, seed)
    return float(point[0]), float(low[0]), float(high[0])


def mean_difference_interval(x: np.ndarray, y: np.ndarray, level: float = LEVEL, reps: int | None = None,
                             seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``(mean(x) - mean(y), low, high)`` of two methods' runs on one task (``[runs_x]``, ``[runs_y]``) with the
    stratified-independent bootstrap interval (each method's runs resampled on their own, rliable's); NaN without
    runs."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if not x.size or not y.size or np.isnan(x).any() or np.isnan(y).any():
        return math.nan, math.nan, math.nan
    library = rliable()
    with _seeded(seed):
        _, intervals = library.get_interval_estimates(
            {"xy": [x[:, None], y[:, None]]}, lambda a, b: np.array([a.mean() - b.mean()]),
            reps=reps or BOOTSTRAP_REPS, confidence_interval_size=level)
    low, high = np.asarray(intervals["xy"], dtype=float).ravel()
    return float(x.mean() - y.mean()), float(low), float(high)


def improvement_probability(x: np.ndarray, y: np.ndarray) -> float:
    """``P(X > Y) + P(X = Y) / 2`` of a run of ``x [runs_x, tasks]`` against one of ``y [runs_y, tasks]``, averaged
    over tasks: rliable's ``metrics.probability_of_improvement`` (its Mann-Whitney U statistic over
    ``runs_x * runs_y``), by broadcasting instead of one scipy call per task."""
    x, y = _table(x), _table(y)
    pairs = x[:, None, :] - y[None, :, :]  # [runs_x, runs_y, tasks]
    return float(np.mean((pairs > 0).mean(axis=(0, 1)) + 0.5 * (pairs == 0).mean(axis=(0, 1))))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, level: float = LEVEL, reps: int | None = None,
                               seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """``(P(X > Y), low, high)``: the probability that a run of method X scores higher than a run of method Y on the
    same task, averaged over tasks, with a stratified-bootstrap interval (each method's runs resampled independently
    within every task; rliable's ``StratifiedIndependentBootstrap``).

    Args:
        x: ``[runs_x, tasks]`` (``[runs_x]``: one task); y: ``[runs_y, tasks]``, the same tasks in the same order.
            The scores may be returns: the statistic only compares runs of one task with each other.
    """
    x, y = _table(x), _table(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} tasks and y {y.shape[1]}; compare on the same tasks")
    if not x.size or not y.size or np.isnan(x).any() or np.isnan(y).any():
        return math.nan, math.nan, math.nan
    point = improvement_probability(x, y)
    library = rliable()
    with _seeded(seed):
        _, intervals = library.get_interval_estimates(
            {"xy": [x, y]}, lambda a, b: np.array([improvement_probability(a, b)]), reps=reps or BOOTSTRAP_REPS,
            confidence_interval_size=level)
    low, high = np.asarray(intervals["xy"], dtype=float).ravel()
    return point, float(low), float(high)


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """``[T]``: the fraction of all runs of all tasks in ``scores [runs, tasks]`` scoring above each ``taus [T]``
    (rliable's run-score distribution, vectorised)."""
    flat = _table(scores).ravel()
    return (flat[None, :] > np.asarray(taus, dtype=float)[:, None]).mean(axis=1)


def performance_profile(scores: Mapping[str, np.ndarray], taus: np.ndarray, level: float = LEVEL,
                        reps: int | None = None, seed: int = BOOTSTRAP_SEED
                        ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Performance profiles (rliable's ``create_performance_profile``): per method, the fraction of runs whose
    normalized score exceeds ``tau``, for each ``taus [T]``, with a stratified-bootstrap band.

    Args:
        scores: ``{method: [runs, tasks]}`` normalized scores (``[runs]``: one task); methods may differ in runs.

    Returns:
        ``{method: (profile [T], low [T], high [T])}``.
    """
    taus = np.asarray(taus, dtype=float)
    library = rliable()
    with _seeded(seed):
        profiles, bands = library.create_performance_profile(
            {name: _table(s) for name, s in scores.items()}, taus, custom_profile_func=score_distribution,
            reps=reps or BOOTSTRAP_REPS, confidence_interval_size=level)
    return {name: (np.asarray(profiles[name], dtype=float), *np.asarray(bands[name], dtype=float).reshape(2, -1))
            for name in scores}


def clopper_pearson(failures: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion: ``failures`` of ``n``; ``(NaN, NaN)`` if n = 0.

    The lower end is the ``(1 - level) / 2`` quantile of ``Beta(k, n - k + 1)`` (0 when k = 0), the upper the
    ``(1 + level) / 2`` quantile of ``Beta(k + 1, n - k)`` (1 when k = n): 0 of 5 gives ``[0, 1 - 0.025 ** (1/5)]``.
    """
    from scipy.stats import beta

    if n <= 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low = 0.0 if failures == 0 else float(beta.ppf(alpha, failures, n - failures + 1))
    high = 1.0 if failures == n else float(beta.ppf(1.0 - alpha, failures + 1, n - failures))
    return low, high


def failure_rate(scores: np.ndarray, threshold: float = FAILURE_SCORE, level: float = LEVEL
                 ) -> tuple[int, int, float, float, float]:
    """``(failed, n, rate, low, high)``: how many of the runs in ``scores`` (final normalized scores, any shape, e.g.
    ``[runs, tasks]``) ended below ``threshold`` (:data:`FAILURE_SCORE`), with the Clopper-Pearson interval of the
    rate. NaN rate and interval when there are no scores or one is NaN (no optimum to normalize by)."""
    flat = np.asarray(scores, dtype=float).ravel()
    if not flat.size or np.isnan(flat).any():
        return 0, int(flat.size), math.nan, math.nan, math.nan
    failed = int((flat < threshold).sum())
    return (failed, int(flat.size), failed / flat.size, *clopper_pearson(failed, int(flat.size), level))


def gap_target_score(best_score: float, factor: float = GAP_FACTOR) -> float:
    """The normalized score within ``factor`` times the best method's final gap ``1 - best_score`` to the optimum:
    ``1 - factor * max(1 - best_score, 0)`` (a best method at or above the reference makes the target the optimum)."""
    return 1.0 - factor * max(1.0 - best_score, 0.0)
