"""Aggregates an experiment's run directories into ``summary.csv`` (one row per physics and algorithm) and ``runs.csv``
(one per run).

    python scripts/aggregate.py results/pendulum_compare [--threshold -200]

Per algorithm and physics preset (one preset unless the experiment has a physics axis), over seeds: the mean and interquartile mean of the final evaluation return (each run's
``summary.json`` ``eval.return_mean``) with 95% percentile-bootstrap confidence intervals (10,000 resamples of the
seeds, fixed RNG seed), the median and standard deviation, the mean success rate, mean total env steps and
wall-clock, and the median env steps and wall-clock at which a run's evaluation mean first reached the threshold
(over the seeds that reached it; ``seeds_reaching_threshold`` counts them; empty if none did).

Against the optimal-control yardstick (``results/optimal/summary.csv``, ``make optimal``; ``--optimal`` to point
elsewhere): ``optimum`` is the best dynamic-programming return ``R_opt`` of the physics the run was scored on,
``gap_to_optimum = R_opt - R`` and ``normalized_score = (R - R_zero) / (R_opt - R_zero)`` (``R_zero``: never
pushing, so 0 is doing nothing and 1 the optimum), per run and for the mean over seeds. They are empty when no
optimum applies: no yardstick file, a physics it does not list, or an evaluation other than the protocol's (other
states, or the preset's parameters overridden). ``env_steps_to_90`` and ``wall_time_s_to_90``: the median over the
seeds that got there (``seeds_reaching_90``) of the env steps and training seconds at a run's first evaluation with a
normalized score of at least 0.9 (a return of at least ``return_at_90 = R_zero + 0.9 (R_opt - R_zero)``).
``physics`` is the preset the runs trained on (``env.physics``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
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
    group_runs,
    has_finished_runs,
    iqm,
    load_runs,
)

SUMMARY_COLUMNS = (
    "physics", "algo", "n_seeds", "seeds",
    "final_return_mean", "final_return_mean_ci_low", "final_return_mean_ci_high",
    "final_return_iqm", "final_return_iqm_ci_low", "final_return_iqm_ci_high",
    "final_return_median", "final_return_std", "success_rate", "env_steps", "wall_time_s",
    "threshold", "seeds_reaching_threshold", "env_steps_to_threshold", "wall_time_s_to_threshold",
    "optimum", "gap_to_optimum", "normalized_score",
    "return_at_90", "seeds_reaching_90", "env_steps_to_90", "wall_time_s_to_90",
)
RUN_COLUMNS = (
    "physics", "algo", "seed", "final_return_mean", "final_return_iqm", "final_return_median", "final_return_min",
    "success_rate", "env_steps", "wall_time_s", "env_steps_to_threshold", "wall_time_s_to_threshold", "config_hash",
    "optimum", "gap_to_optimum", "normalized_score", "env_steps_to_90", "wall_time_s_to_90",
)
#: The normalized score of the ``*_to_90`` columns.
SCORE_MARK = 0.9
#: The yardstick beside the experiment directories: ``<results>/optimal/summary.csv``.
OPTIMAL_SUMMARY = Path("optimal") / "summary.csv"
#: The protocol's evaluation states, those the yardstick is computed on (``research/evaluation.py``).
PROTOCOL_EPISODES = 1000
PROTOCOL_SEED = 1_000_003
#: ... and its fixed torque noise and parameter draws (``EVAL_NOISE_SEED``, ``EVAL_PARAMS_SEED``).
PROTOCOL_NOISE_SEED = 1_000_033
PROTOCOL_PARAMS_SEED = 1_000_037

Optima = dict[str, tuple[float, float]]


def optimal_summary_path(exp_dir: Path) -> Path:
    """Where the yardstick of an experiment directory ``<results>/<exp>`` lives: ``<results>/optimal/summary.csv``."""
    return exp_dir.parent / OPTIMAL_SUMMARY


def load_optima(path: Path) -> Optima:
    """``{physics: (R_opt, R_zero)}`` from the rows of ``results/optimal/summary.csv`` marked ``optimum = 1`` on the
    protocol's 1000 states; ``{}`` when the file does not exist."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    optima = {row["physics"]: (float(row["return_mean"]), float(row["zero_torque_return_mean"])) for row in rows
              if row.get("optimum") == "1" and int(float(row.get("episodes") or PROTOCOL_EPISODES)) == PROTOCOL_EPISODES}
    return {**optima, **system_references(path.parent)}


def system_references(optimal_dir: Path) -> Optima:
    """``{system: (R_ref, R_zero)}`` for the systems beyond the pendulum: ``R_ref`` the trajectory-optimisation
    reference of ``<optimal_dir>/<system>/summary.json`` (``make optimal-systems``; achievable, a lower bound on the
    optimum), ``R_zero`` the return of the zero action from the same 1000 evaluation states (simulated here)."""
    out: Optima = {}
    for summary in sorted(optimal_dir.glob("*/summary.json")):
        data = json.loads(summary.read_text())
        reference = data.get("reference") or {}
        if not data.get("system") or int(reference.get("episodes", 0)) != PROTOCOL_EPISODES:
            continue
        import torch

        from research.evaluation import evaluate_policy
        from research.systems import get_system

        system = get_system(data["system"], data.get("physics", "default"))
        zero = evaluate_policy(lambda obs: torch.zeros(*obs.shape[:-1], system.action_dim), physics=system)
        key = data["system"] if data.get("physics", "default") == "default" else f"{data['system']}-{data['physics']}"
        out[key] = (float(reference["return_mean"]), float(zero["return_mean"]))
    return out


def evaluation_physics(run: Run) -> str:
    """The preset the run was scored on (``config.eval.physics``, else ``config.env.physics``, else ``default``),
    or ``""`` when its evaluation is not the protocol's on that preset (other states, noise or parameter draws, or
    overridden parameters)."""
    config = run.config.get("config", {})
    env, evaluation = config.get("env") or {}, config.get("eval") or {}
    if int(evaluation.get("episodes", PROTOCOL_EPISODES)) != PROTOCOL_EPISODES:
        return ""
    seeds = (("seed", PROTOCOL_SEED), ("noise_seed", PROTOCOL_NOISE_SEED), ("params_seed", PROTOCOL_PARAMS_SEED))
    if any(int(evaluation.get(key, value)) != value for key, value in seeds):
        return ""
    system = str(env.get("system") or "pendulum")
    preset = str(evaluation.get("physics") or ("" if env.get("params") else env.get("physics") or "default"))
    if system == "pendulum" or not preset:
        return preset
    return system if preset == "default" else f"{system}-{preset}"


def optimum_columns(final_return: float, physics: str, optima: Optima) -> dict:
    """``physics``, ``optimum``, ``gap_to_optimum`` and ``normalized_score`` of a final return (NaN: no optimum)."""
    if physics not in optima:
        return {"physics": physics, "optimum": math.nan, "gap_to_optimum": math.nan, "normalized_score": math.nan}
    best, zero = optima[physics]
    return {"physics": physics, "optimum": best, "gap_to_optimum": best - final_return,
            "normalized_score": (final_return - zero) / (best - zero)}


def return_at_score(physics: str, optima: Optima, score: float = SCORE_MARK) -> float:
    """The return of normalized score ``score`` on ``physics``: ``R_zero + score (R_opt - R_zero)`` (NaN: no optimum)."""
    if physics not in optima:
        return math.nan
    best, zero = optima[physics]
    return zero + score * (best - zero)


def first_reaching_score(run: Run, optima: Optima, score: float = SCORE_MARK) -> tuple[float, float]:
    """``(env_steps, wall_time_s)`` of the run's first evaluation at normalized score ``>= score`` (NaN if none)."""
    mark = return_at_score(evaluation_physics(run), optima, score)
    return (math.nan, math.nan) if math.isnan(mark) else run.first_reaching(mark)


def _median_reached(crossings: np.ndarray) -> tuple[int, float, float]:
    """``(seeds that got there, median env steps, median seconds)`` of ``[n_seeds, 2]`` crossings (NaN: never)."""
    reached = ~np.isnan(crossings[:, 0])
    if not reached.any():
        return 0, math.nan, math.nan
    return int(reached.sum()), float(np.median(crossings[reached, 0])), float(np.median(crossings[reached, 1]))


def summary_rows(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None) -> list[dict]:
    """One row per (physics, algorithm) with the columns of ``SUMMARY_COLUMNS`` (statistics over its seeds; the
    optimum columns of the mean over seeds)."""
    optima = optima or {}
    rows = []
    for (trained_on, algo), group in group_runs(runs).items():
        physics = {evaluation_physics(run) for run in group}
        physics_name = physics.pop() if len(physics) == 1 else ""
        finals = np.array([run.final_return for run in group])
        mean_low, mean_high = bootstrap_ci(finals)
        iqm_low, iqm_high = bootstrap_ci(finals, iqm)
        crossings = np.array([run.first_reaching(threshold) for run in group]).reshape(-1, 2)
        reached = ~np.isnan(crossings[:, 0])
        n_90, steps_90, wall_90 = _median_reached(
            np.array([first_reaching_score(run, optima) for run in group]).reshape(-1, 2))
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
            **optimum_columns(finals.mean(), physics_name, optima),
            "physics": trained_on,
            "return_at_90": return_at_score(physics_name, optima),
            "seeds_reaching_90": n_90, "env_steps_to_90": steps_90, "wall_time_s_to_90": wall_90,
        })
    return rows


def run_rows(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None) -> list[dict]:
    """One row per run with the columns of ``RUN_COLUMNS``."""
    optima = optima or {}
    rows = []
    for run in runs:
        evaluation = run.summary["eval"]
        steps, wall = run.first_reaching(threshold)
        steps_90, wall_90 = first_reaching_score(run, optima)
        rows.append({
            "algo": run.algo, "seed": run.seed,
            "final_return_mean": evaluation["return_mean"], "final_return_iqm": evaluation["return_iqm"],
            "final_return_median": evaluation["return_median"], "final_return_min": evaluation["return_min"],
            "success_rate": evaluation["success_rate"], "env_steps": run.summary["env_steps"],
            "wall_time_s": run.summary["wall_time_s"], "env_steps_to_threshold": steps,
            "wall_time_s_to_threshold": wall, "config_hash": run.summary.get("config_hash", ""),
            **optimum_columns(evaluation["return_mean"], evaluation_physics(run), optima),
            "physics": run.physics,
            "env_steps_to_90": steps_90, "wall_time_s_to_90": wall_90,
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


def csv_texts(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None) -> tuple[str, str]:
    """``(summary.csv text, runs.csv text)`` of the runs (``optima``: :func:`load_optima`; none: empty columns)."""
    return (to_csv(summary_rows(runs, threshold, optima), SUMMARY_COLUMNS),
            to_csv(run_rows(runs, threshold, optima), RUN_COLUMNS))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="return for the time-to-threshold columns")
    parser.add_argument("--optimal", type=Path, default=None,
                        help="the yardstick's summary.csv (default: <results>/optimal/summary.csv)")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    if not has_finished_runs(exp_dir):
        print(f"{exp_dir}: no finished training runs ([<physics>/]<algo>/seed_<k>/summary.json); nothing to aggregate")
        return 0
    optima = load_optima(args.optimal or optimal_summary_path(exp_dir))
    summary, per_run = csv_texts(load_runs(exp_dir), args.threshold, optima)
    (exp_dir / "summary.csv").write_text(summary)
    (exp_dir / "runs.csv").write_text(per_run)
    print(f"wrote {exp_dir / 'summary.csv'} and {exp_dir / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
