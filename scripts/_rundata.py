"""Reading an experiment's run directories, and the statistics over seeds the scripts share (numpy; intervals from
:mod:`research.statistics`, which uses rliable).

The files are those of the run-directory contract (:mod:`research.rundir`, standard library only, imported here):
``<exp>/<algo>/seed_<k>/`` (or ``<exp>/<physics>/<algo>/seed_<k>/`` in an experiment with a physics axis) with
``config.json``, ``metrics.csv`` and ``summary.json`` (present only once the run finished). When the experiment
runner's ``<exp>/experiment.json`` exists, exactly the runs it plans are read, and a run finished under another
config (its ``config_hash`` differs) is left out with a warning; without it, every finished run is read.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.rundir import CONFIG, EVAL_RETURN, MANIFEST, METRICS, RUN_DIR_PATTERNS, SUMMARY, is_superseded
from research.statistics import BOOTSTRAP_SEED, interquartile_mean, stratified_interval

THRESHOLD = -200.0
"""Evaluation return counted as 'solved enough' for the time-to-threshold columns (Tianshou's solved mark is -250)."""


@dataclass
class Run:
    """One finished run: its ``config.json``, ``summary.json`` and ``metrics.csv`` (columns as float arrays, NaN
    where a row has no value)."""

    algo: str
    seed: int
    path: Path
    config: dict
    summary: dict
    metrics: dict[str, np.ndarray]

    @property
    def physics(self) -> str:
        """The system and preset the run trained on: the pendulum's preset (``config.env.physics``; ``default`` when
        the config has none), or ``<system>`` / ``<system>-<preset>`` for another system."""
        env = self.config.get("config", {}).get("env") or {}
        preset, system = str(env.get("physics") or "default"), str(env.get("system") or "pendulum")
        if system == "pendulum":
            return preset
        return system if preset == "default" else f"{system}-{preset}"

    @property
    def final_return(self) -> float:
        return float(self.summary["eval"]["return_mean"])

    def eval_curve(self, x: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x values, evaluation return means)`` of the rows holding an evaluation; ``x`` is a metrics column."""
        y = self.metrics.get(EVAL_RETURN, np.array([]))
        rows = ~np.isnan(y)
        return self.metrics[x][rows], y[rows]

    def first_reaching(self, threshold: float) -> tuple[float, float]:
        """``(env_steps, wall_time_s)`` of the first evaluation whose mean return is ``>= threshold`` (NaN if none)."""
        steps, returns = self.eval_curve("env_steps")
        wall, _ = self.eval_curve("wall_time_s")
        hits = np.flatnonzero(returns >= threshold)
        return (float(steps[hits[0]]), float(wall[hits[0]])) if hits.size else (float("nan"), float("nan"))


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def experiment_dir(path: str | Path) -> Path:
    """``path`` as an existing directory; otherwise exits with an error naming the experiments that exist."""
    path = Path(path)
    if not path.is_dir():
        siblings = sorted(p.name for p in path.parent.iterdir() if p.is_dir()) if path.parent.is_dir() else []
        sys.exit(f"error: no experiment directory {str(path)!r}; found in {path.parent}/: {siblings}")
    return path


def finished_run_dirs(exp_dir: Path) -> list[Path]:
    """Every run directory under ``exp_dir`` (``research.rundir.RUN_DIR_PATTERNS``) holding a ``summary.json``; runs
    the experiment runner moved aside (``<exp>/superseded/``) are not part of the experiment and are left out."""
    return sorted({p.parent for pattern in RUN_DIR_PATTERNS for p in exp_dir.glob(f"{pattern}/{SUMMARY}")
                   if not is_superseded(p.parent, exp_dir)})


def has_finished_runs(exp_dir: Path) -> bool:
    """Whether ``exp_dir`` holds any finished training run (``[<physics>/]<algo>/seed_<k>/summary.json``)."""
    return bool(finished_run_dirs(exp_dir))


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: np.array([float(r[key]) if r.get(key) not in ("", None) else np.nan for r in rows])
            for key in rows[0]}


def load_run(path: Path) -> Run:
    summary = json.loads((path / SUMMARY).read_text())
    config = json.loads((path / CONFIG).read_text())
    # A variant of an experiment file (``[bptt_squash]`` with ``algo = "bptt"``) is reported under its label.
    return Run(summary.get("label", summary["algo"]), int(summary["seed"]), path, config, summary, read_metrics(path / METRICS))


def load_manifest(exp_dir: Path) -> dict | None:
    path = exp_dir / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def load_runs(exp_dir: Path) -> list[Run]:
    """The experiment's finished runs, ordered by algorithm (the experiment's order) and seed."""
    manifest = load_manifest(exp_dir)
    if manifest is None:
        runs = [load_run(path) for path in finished_run_dirs(exp_dir)]
        _warn_mixed_configs(runs)
        return sorted(runs, key=lambda r: (r.physics, r.algo, r.seed))
    runs, missing = [], []
    for entry in manifest["runs"]:
        path = exp_dir / entry["path"]
        if not (path / SUMMARY).is_file():
            missing.append(entry["path"])
            continue
        run = load_run(path)
        if run.summary.get("config_hash") != entry["config_hash"]:
            warn(f"{entry['path']} finished under another config than {MANIFEST} plans; left out (rerun the experiment)")
            continue
        runs.append(run)
    if missing:
        warn(f"{len(missing)} planned runs have not finished and are left out: {', '.join(missing)}")
    planned = {entry["path"] for entry in manifest["runs"]}
    extra = [str(path.relative_to(exp_dir)) for path in finished_run_dirs(exp_dir)
             if str(path.relative_to(exp_dir)) not in planned]
    if extra:
        warn(f"runs not planned by {MANIFEST} are ignored: {', '.join(extra)}")
    return runs


def _warn_mixed_configs(runs: list[Run]) -> None:
    by_group: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        config = {k: v for k, v in run.config["config"].items() if k != "seed"}
        by_group.setdefault((run.physics, run.algo), set()).add(json.dumps(config, sort_keys=True))
    for (physics, algo), configs in by_group.items():
        if len(configs) > 1:
            warn(f"the runs of {algo} on {physics} differ in more than their seed ({len(configs)} configs)")


def group_by_algo(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by algorithm, in the order they come (use :func:`group_runs` when they span several presets)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.algo, []).append(run)
    return groups


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by ``(physics, algo)``, in the order they come: the seeds of one method on one preset."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.physics, run.algo), []).append(run)
    return groups


def physics_axis(runs: list[Run]) -> list[str]:
    """The presets of an experiment whose runs span more than one (in the order they come); ``[]`` otherwise."""
    presets = list(dict.fromkeys(run.physics for run in runs))
    return presets if len(presets) > 1 else []


# ---------------------------------------------------------------------------------------------------- statistics
def mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean (the evaluator's own, :func:`research.statistics.interquartile_mean`)."""
    return interquartile_mean(values, axis=axis)


def bootstrap_ci(values: np.ndarray, statistic: Callable[..., np.ndarray] = mean, level: float = 0.95,
                 resamples: int | None = None, seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap confidence interval of ``statistic`` over seeds: rliable's stratified percentile bootstrap
    (:func:`research.statistics.stratified_interval`), each column a stratum.

    Args:
        values: ``[n_seeds]`` or ``[n_seeds, G]`` (then one interval per column, e.g. per point of a curve, the
            seeds resampled for each column independently).
        statistic: ``f(array, axis=-1)`` reducing the seed axis, e.g. :func:`mean` or :func:`iqm`.
        level: coverage of the interval; resamples (default ``research.statistics.BOOTSTRAP_REPS``) and seed: the
            bootstrap's (fixed, so results are reproducible).

    Returns:
        ``(low, high)``, scalars or ``[G]``; NaN for no seeds, the value itself for one seed.
    """
    values = np.asarray(values, dtype=float)
    if values.shape[0] == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan
    _, low, high = stratified_interval(values, lambda table: statistic(table.T, axis=-1), level, resamples, seed)
    return (low[0], high[0]) if values.ndim == 1 else (low, high)
