"""Aggregates an experiment's run directories into ``summary.csv`` (one row per algorithm) and ``runs.csv`` (one per run).

    python scripts/aggregate.py results/pendulum_compare [--threshold -200]

Per algorithm, over seeds: the mean and interquartile mean of the final evaluation return (each run's
``summary.json`` ``eval.return_mean``) with 95% percentile-bootstrap confidence intervals (10,000 resamples of the
seeds, fixed RNG seed), the median and standard deviation, the mean success rate, mean total env steps and
wall-clock, and the median env steps and wall-clock at which a run's evaluation mean first reached the threshold
(over the seeds that reached it; ``seeds_reaching_threshold`` counts them; empty if none did).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _rundata import (
    THRESHOLD,
    Run,
    bootstrap_ci,
    experiment_dir,
    group_by_algo,
    has_finished_runs,
    iqm,
    load_runs,
)

SUMMARY_COLUMNS = (
    "algo", "n_seeds", "seeds",
    "final_return_mean", "final_return_mean_ci_low", "final_return_mean_ci_high",
    "final_return_iqm", "final_return_iqm_ci_low", "final_return_iqm_ci_high",
    "final_return_median", "final_return_std", "success_rate", "env_steps", "wall_time_s",
    "threshold", "seeds_reaching_threshold", "env_steps_to_threshold", "wall_time_s_to_threshold",
)
RUN_COLUMNS = (
    "algo", "seed", "final_return_mean", "final_return_iqm", "final_return_median", "final_return_min",
    "success_rate", "env_steps", "wall_time_s", "env_steps_to_threshold", "wall_time_s_to_threshold", "config_hash",
)


def summary_rows(runs: list[Run], threshold: float = THRESHOLD) -> list[dict]:
    """One row per algorithm with the columns of ``SUMMARY_COLUMNS`` (statistics over its seeds)."""
    rows = []
    for algo, group in group_by_algo(runs).items():
        finals = np.array([run.final_return for run in group])
        mean_low, mean_high = bootstrap_ci(finals)
        iqm_low, iqm_high = bootstrap_ci(finals, iqm)
        crossings = np.array([run.first_reaching(threshold) for run in group]).reshape(-1, 2)
        reached = ~np.isnan(crossings[:, 0])
        rows.append({
            "algo": algo,
            "n_seeds": len(group),
            "seeds": " ".join(str(run.seed) for run in group),
            "final_return_mean": finals.mean(),
            "final_return_mean_ci_low": mean_low,
            "final_return_mean_ci_high": mean_high,
            "final_return_iqm": iqm(finals),
            "final_return_iqm_ci_low": iqm_low,
            "final_return_iqm_ci_high": iqm_high,
            "final_return_median": np.median(finals),
            "final_return_std": finals.std(ddof=1) if len(finals) > 1 else 0.0,
            "success_rate": np.mean([run.summary["eval"]["success_rate"] for run in group]),
            "env_steps": np.mean([run.summary["env_steps"] for run in group]),
            "wall_time_s": np.mean([run.summary["wall_time_s"] for run in group]),
            "threshold": threshold,
            "seeds_reaching_threshold": int(reached.sum()),
            "env_steps_to_threshold": np.median(crossings[reached, 0]) if reached.any() else math.nan,
            "wall_time_s_to_threshold": np.median(crossings[reached, 1]) if reached.any() else math.nan,
        })
    return rows


def run_rows(runs: list[Run], threshold: float = THRESHOLD) -> list[dict]:
    """One row per run with the columns of ``RUN_COLUMNS``."""
    rows = []
    for run in runs:
        evaluation = run.summary["eval"]
        steps, wall = run.first_reaching(threshold)
        rows.append({
            "algo": run.algo, "seed": run.seed,
            "final_return_mean": evaluation["return_mean"], "final_return_iqm": evaluation["return_iqm"],
            "final_return_median": evaluation["return_median"], "final_return_min": evaluation["return_min"],
            "success_rate": evaluation["success_rate"], "env_steps": run.summary["env_steps"],
            "wall_time_s": run.summary["wall_time_s"], "env_steps_to_threshold": steps,
            "wall_time_s_to_threshold": wall, "config_hash": run.summary.get("config_hash", ""),
        })
    return rows


def format_cell(value: object) -> str:
    """CSV text of a value: integers exactly, floats to 10 significant digits, NaN as an empty cell."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return ""
    return f"{value:.10g}"


def to_csv(rows: list[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[format_cell(row[c]) for c in columns] for row in rows])
    return buffer.getvalue()


def csv_texts(runs: list[Run], threshold: float = THRESHOLD) -> tuple[str, str]:
    """``(summary.csv text, runs.csv text)`` of the runs."""
    return to_csv(summary_rows(runs, threshold), SUMMARY_COLUMNS), to_csv(run_rows(runs, threshold), RUN_COLUMNS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="return for the time-to-threshold columns")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    if not has_finished_runs(exp_dir):
        print(f"{exp_dir}: no finished training runs (*/seed_*/summary.json); nothing to aggregate")
        return 0
    summary, per_run = csv_texts(load_runs(exp_dir), args.threshold)
    (exp_dir / "summary.csv").write_text(summary)
    (exp_dir / "runs.csv").write_text(per_run)
    print(f"wrote {exp_dir / 'summary.csv'} and {exp_dir / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
