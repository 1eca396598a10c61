"""Aggregates an experiment's run directories into ``summary.csv`` (one row per physics and algorithm) and ``runs.csv``
(one per run).

    python scripts/aggregate.py results/pendulum_compare [--threshold -200]

Per algorithm and physics preset (one preset unless the experiment has a physics axis), over seeds: the mean and interquartile mean of the final evaluation return (each run's
``summary.json`` ``eval.return_mean``) with 95% stratified-bootstrap confidence intervals (rliable's, through
``research.statistics``; ``BOOTSTRAP_REPS`` resamples of the seeds, fixed RNG seed), the median and standard deviation, the mean success rate, mean total env steps and
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

The statistics of the field's standard (rliable, :mod:`research.statistics`; a *task* is one physics preset or
system, scores are normalized scores): ``normalized_score_iqm`` with its 95% stratified-bootstrap interval
(``BOOTSTRAP_REPS`` resamples of the seeds); ``failed_seeds`` of ``n_seeds`` ended below a normalized score of
``failure_score`` (0.9), ``failure_rate`` with its Clopper-Pearson exact 95% interval; ``best_algo`` is the method
with the highest IQM final return on the preset and ``prob_best_improves`` the probability that a run of it ends
above a run of this method (with its interval; empty on its own row); ``*_to_99``: as ``*_to_90`` at a normalized
score of 0.99; ``*_to_2x_best_gap``: as ``*_to_90`` at the return within twice the best method's final gap to the
optimum (``return_at_2x_best_gap = R_opt - 2 (R_opt - IQM final return of best_algo)``, at most ``R_opt``).

``overall.csv`` (one row per method) aggregates over the tasks where the method has a normalized score: the IQM
over all its runs and tasks with a stratified-bootstrap interval, the failure rate over all its runs with its
Clopper-Pearson interval, and the probability of improvement over ``opponent``, the best method (by that IQM) of the
other family (backprop: ``research.statistics.is_backprop``; with one family only, the best other method), on the
tasks both ran, with its interval. Methods with different seed counts on different tasks use the first
``runs`` seeds of each task (the stratified bootstrap needs a ``[runs, tasks]`` table).
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

from research.statistics import (
    FAILURE_SCORE,
    SCORE_TARGET,
    failure_rate,
    family,
    gap_target_score,
    iqm_interval,
    probability_of_improvement,
)

SUMMARY_COLUMNS = (
    "physics", "algo", "n_seeds", "seeds",
    "final_return_mean", "final_return_mean_ci_low", "final_return_mean_ci_high",
    "final_return_iqm", "final_return_iqm_ci_low", "final_return_iqm_ci_high",
    "final_return_median", "final_return_std", "success_rate", "env_steps", "wall_time_s",
    "threshold", "seeds_reaching_threshold", "env_steps_to_threshold", "wall_time_s_to_threshold",
    "optimum", "gap_to_optimum", "normalized_score",
    "return_at_90", "seeds_reaching_90", "env_steps_to_90", "wall_time_s_to_90",
    "normalized_score_iqm", "normalized_score_iqm_ci_low", "normalized_score_iqm_ci_high",
    "failure_score", "failed_seeds", "failure_rate", "failure_rate_ci_low", "failure_rate_ci_high",
    "best_algo", "prob_best_improves", "prob_best_improves_ci_low", "prob_best_improves_ci_high",
    "return_at_99", "seeds_reaching_99", "env_steps_to_99", "wall_time_s_to_99",
    "return_at_2x_best_gap", "seeds_reaching_2x_best_gap", "env_steps_to_2x_best_gap", "wall_time_s_to_2x_best_gap",
)
RUN_COLUMNS = (
    "physics", "algo", "seed", "final_return_mean", "final_return_iqm", "final_return_median", "final_return_min",
    "success_rate", "env_steps", "wall_time_s", "env_steps_to_threshold", "wall_time_s_to_threshold", "config_hash",
    "optimum", "gap_to_optimum", "normalized_score", "env_steps_to_90", "wall_time_s_to_90",
    "failed", "env_steps_to_99", "wall_time_s_to_99", "env_steps_to_2x_best_gap", "wall_time_s_to_2x_best_gap",
)
OVERALL_COLUMNS = (
    "algo", "family", "tasks", "runs", "normalized_score_iqm", "normalized_score_iqm_ci_low",
    "normalized_score_iqm_ci_high", "failed_runs", "failure_rate", "failure_rate_ci_low", "failure_rate_ci_high",
    "opponent", "prob_improvement", "prob_improvement_ci_low", "prob_improvement_ci_high",
)
#: The files :func:`main` writes, in the order of :func:`csv_texts`.
CSV_FILES = ("summary.csv", "runs.csv", "overall.csv")
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
        zero = evaluate_policy(lambda obs, dim=system.action_dim: torch.zeros(*obs.shape[:-1], dim), physics=system)
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


def run_score(run: Run, optima: Optima) -> float:
    """The run's final normalized score (NaN: no optimum applies)."""
    return optimum_columns(run.final_return, evaluation_physics(run), optima)["normalized_score"]


def best_methods(runs: list[Run], optima: Optima) -> dict[str, tuple[str, float]]:
    """``{physics (trained on): (best algorithm, target return)}``: the algorithm with the highest IQM final return on
    the preset, and the return within twice its final gap to the optimum (``R_opt - 2 max(gap, 0)``; NaN without an
    optimum). The gap is the one of its IQM final return."""
    best: dict[str, tuple[str, float]] = {}
    groups = group_runs(runs)
    for physics in dict.fromkeys(p for p, _ in groups):
        algo = max((a for p, a in groups if p == physics),
                   key=lambda a: float(iqm(np.array([r.final_return for r in groups[(physics, a)]]))))
        group = groups[(physics, algo)]
        names = {evaluation_physics(run) for run in group}
        name = names.pop() if len(names) == 1 else ""
        score = optimum_columns(float(iqm(np.array([r.final_return for r in group]))), name, optima)["normalized_score"]
        best[physics] = (algo, math.nan if math.isnan(score) else return_at_score(name, optima, gap_target_score(score)))
    return best


def first_reaching_gap(run: Run, targets: dict[str, tuple[str, float]]) -> tuple[float, float]:
    """``(env_steps, wall_time_s)`` of the run's first evaluation within twice the best method's final gap (NaN: none
    or no optimum); ``targets`` from :func:`best_methods`."""
    mark = targets.get(run.physics, ("", math.nan))[1]
    return (math.nan, math.nan) if math.isnan(mark) else run.first_reaching(mark)


def summary_rows(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None) -> list[dict]:
    """One row per (physics, algorithm) with the columns of ``SUMMARY_COLUMNS`` (statistics over its seeds; the
    optimum columns of the mean over seeds)."""
    optima = optima or {}
    groups = group_runs(runs)
    targets = best_methods(runs, optima)
    rows = []
    for (trained_on, algo), group in groups.items():
        physics = {evaluation_physics(run) for run in group}
        physics_name = physics.pop() if len(physics) == 1 else ""
        finals = np.array([run.final_return for run in group])
        scores = np.array([run_score(run, optima) for run in group])
        mean_low, mean_high = bootstrap_ci(finals)
        iqm_low, iqm_high = bootstrap_ci(finals, iqm)
        crossings = np.array([run.first_reaching(threshold) for run in group]).reshape(-1, 2)
        reached = ~np.isnan(crossings[:, 0])
        n_90, steps_90, wall_90 = _median_reached(
            np.array([first_reaching_score(run, optima) for run in group]).reshape(-1, 2))
        n_99, steps_99, wall_99 = _median_reached(
            np.array([first_reaching_score(run, optima, SCORE_TARGET) for run in group]).reshape(-1, 2))
        n_gap, steps_gap, wall_gap = _median_reached(
            np.array([first_reaching_gap(run, targets) for run in group]).reshape(-1, 2))
        failed, _, rate, rate_low, rate_high = failure_rate(scores)
        best = targets[trained_on][0]
        improves = ((math.nan,) * 3 if best == algo else probability_of_improvement(
            np.array([run.final_return for run in groups[(trained_on, best)]]), finals))
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
            **dict(zip(("normalized_score_iqm", "normalized_score_iqm_ci_low", "normalized_score_iqm_ci_high"),
                       iqm_interval(scores), strict=True)),
            "failure_score": FAILURE_SCORE, "failed_seeds": failed if not math.isnan(rate) else math.nan,
            "failure_rate": rate, "failure_rate_ci_low": rate_low, "failure_rate_ci_high": rate_high,
            "best_algo": best, "prob_best_improves": improves[0], "prob_best_improves_ci_low": improves[1],
            "prob_best_improves_ci_high": improves[2],
            "return_at_99": return_at_score(physics_name, optima, SCORE_TARGET),
            "seeds_reaching_99": n_99, "env_steps_to_99": steps_99, "wall_time_s_to_99": wall_99,
            "return_at_2x_best_gap": targets[trained_on][1],
            "seeds_reaching_2x_best_gap": n_gap, "env_steps_to_2x_best_gap": steps_gap,
            "wall_time_s_to_2x_best_gap": wall_gap,
        })
    return rows


def run_rows(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None) -> list[dict]:
    """One row per run with the columns of ``RUN_COLUMNS``."""
    optima = optima or {}
    targets = best_methods(runs, optima)
    rows = []
    for run in runs:
        evaluation = run.summary["eval"]
        steps, wall = run.first_reaching(threshold)
        steps_90, wall_90 = first_reaching_score(run, optima)
        steps_99, wall_99 = first_reaching_score(run, optima, SCORE_TARGET)
        steps_gap, wall_gap = first_reaching_gap(run, targets)
        score = run_score(run, optima)
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
            "failed": math.nan if math.isnan(score) else int(score < FAILURE_SCORE),
            "env_steps_to_99": steps_99, "wall_time_s_to_99": wall_99,
            "env_steps_to_2x_best_gap": steps_gap, "wall_time_s_to_2x_best_gap": wall_gap,
        })
    return rows


def score_tables(runs: list[Run], optima: Optima) -> dict[str, dict[str, np.ndarray]]:
    """``{algo: {physics: final normalized scores [seeds]}}`` of the presets where every seed has a score."""
    tables: dict[str, dict[str, np.ndarray]] = {}
    for (physics, algo), group in group_runs(runs).items():
        scores = np.array([run_score(run, optima) for run in sorted(group, key=lambda r: r.seed)])
        if scores.size and not np.isnan(scores).any():
            tables.setdefault(algo, {})[physics] = scores
    return tables


def score_table(per_task: dict[str, np.ndarray], tasks: Sequence[str]) -> np.ndarray:
    """``[runs, tasks]``: the first ``runs`` (the fewest any task has) seeds' scores of each task in ``tasks``."""
    runs = min(per_task[task].size for task in tasks)
    return np.stack([per_task[task][:runs] for task in tasks], axis=1)


def overall_rows(runs: list[Run], optima: Optima | None = None) -> list[dict]:
    """One row per algorithm with a normalized score on some task, the columns of ``OVERALL_COLUMNS``: statistics
    over all its runs and tasks, and its probability of improvement over the best method of the other family."""
    tables = score_tables(runs, optima or {})
    iqms = {algo: iqm_interval(score_table(per_task, list(per_task))) for algo, per_task in tables.items()}
    rows = []
    for algo, per_task in tables.items():
        tasks = list(per_task)
        table = score_table(per_task, tasks)
        failed, n, rate, rate_low, rate_high = failure_rate(table)
        others = [a for a in tables if family(a) != family(algo)] or [a for a in tables if a != algo]
        opponent = max(others, key=lambda a: iqms[a][0]) if others else ""
        shared = [task for task in tasks if opponent and task in tables[opponent]]
        improvement = (probability_of_improvement(table[:, [tasks.index(t) for t in shared]],
                                                  score_table(tables[opponent], shared))
                       if shared else (math.nan,) * 3)
        rows.append({"algo": algo, "family": family(algo), "tasks": " ".join(tasks), "runs": n,
                     "normalized_score_iqm": iqms[algo][0], "normalized_score_iqm_ci_low": iqms[algo][1],
                     "normalized_score_iqm_ci_high": iqms[algo][2], "failed_runs": failed, "failure_rate": rate,
                     "failure_rate_ci_low": rate_low, "failure_rate_ci_high": rate_high, "opponent": opponent,
                     "prob_improvement": improvement[0], "prob_improvement_ci_low": improvement[1],
                     "prob_improvement_ci_high": improvement[2]})
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


def csv_texts(runs: list[Run], threshold: float = THRESHOLD, optima: Optima | None = None
              ) -> tuple[str, str, str]:
    """``(summary.csv, runs.csv, overall.csv)`` texts of the runs (``optima``: :func:`load_optima`; none: empty
    optimum columns and no overall rows)."""
    return (to_csv(summary_rows(runs, threshold, optima), SUMMARY_COLUMNS),
            to_csv(run_rows(runs, threshold, optima), RUN_COLUMNS),
            to_csv(overall_rows(runs, optima), OVERALL_COLUMNS))


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
    texts = csv_texts(load_runs(exp_dir), args.threshold, optima)
    for name, text in zip(CSV_FILES, texts, strict=True):
        (exp_dir / name).write_text(text)
    print(f"wrote {', '.join(str(exp_dir / name) for name in CSV_FILES)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as error:  # rliable missing: research.statistics names the install command
        sys.exit(f"error: {error}")
