"""The tuning part of a race's ``REPORT.md``: what each search tried, what it picked, and which budget bound it.

An experiment written by ``make tune TUNE=<name>`` (``experiments/tuned/<name>.toml``) runs into
``<results>/<name>/``; its searches' records lie in ``<results>/tune/<name>/<task>/<algo>/search.json``
(:mod:`research.tune`). :func:`tuning_section` reads them alone, so the report says, per task and method: the trials
run, the best trial's tuning return, the env steps and training seconds a trial used (medians), how many trials the
clock stopped rather than the env-step budget, and the CPUs they ran on; then the tuning's total compute.

    python scripts/tuning.py results/tune_race     # prints the section
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

CLOCK_SHARE = 0.97
"""A trial run whose training seconds reach this share of the wall-clock cap was stopped by the clock (the harness
stops at the first iteration past the cap); any other finished run used its env-step budget."""


def tuning_dir(exp_dir: Path) -> Path:
    """Where the searches of the experiment ``<results>/<name>`` lie: ``<results>/tune/<name>``."""
    return exp_dir.parent / "tune" / exp_dir.name


def load_searches(directory: Path) -> list[dict]:
    """Every ``search.json`` under ``directory`` (``<task>/<algo>/search.json``), tasks and methods in file order."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*/*/search.json"))]


def _runs(search: dict) -> list[dict]:
    return [run for trial in search["trials"] if trial["state"] == "COMPLETE" for run in trial["runs"].values()]


def bound_by(search: dict) -> tuple[int, int]:
    """``(clock, runs)``: how many of the search's finished trial runs the wall-clock cap stopped."""
    cap = float(search["budget"]["wall_time_s"])
    runs = _runs(search)
    return sum(float(run["wall_time_s"]) >= CLOCK_SHARE * cap for run in runs), len(runs)


def search_row(search: dict) -> dict:
    """One search's line of the table."""
    runs = _runs(search)
    clock, n = bound_by(search)
    best = search.get("best") or {}
    return {"task": search["task"], "algo": search["algo"],
            "trials": f"{search['trials_finished']}/{search['trials_planned']}",
            "best": "n/a" if best.get("value") is None else f"{best['value']:.1f} (trial {best['number']})",
            "env_steps": statistics.median(int(run["env_steps"]) for run in runs) if runs else None,
            "seconds": statistics.median(float(run["wall_time_s"]) for run in runs) if runs else None,
            "clock": f"{clock}/{n}",
            "cpus": ", ".join(sorted({str(t.get("cpu") or "unknown") for t in search["trials"]}))}


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def tuning_section(exp_dir: Path) -> list[str]:
    """The ``## Tuning`` lines of ``exp_dir``'s report (``[]`` when no search of that name lies beside it)."""
    searches = load_searches(tuning_dir(exp_dir))
    if not searches:
        return []
    first = searches[0]
    budget = first["budget"]
    rows = [search_row(search) for search in searches]
    seconds = sum(float(t.get("seconds") or 0.0) for search in searches for t in search["trials"])
    trials = sum(search["trials_finished"] for search in searches)
    planned = sum(search["trials_planned"] for search in searches)
    lines = ["## Tuning", "",
             f"The `_tuned` rows are the best trials of `make tune TUNE={exp_dir.name}` (`{first['source']}`): one "
             f"Optuna search per task and method ({first['sampler']['name']}, sampler seed {first['sampler']['seed']}), "
             f"{first['trials_planned']} trials each, every trial capped at {budget['env_steps']:,} env steps and "
             f"{float(budget['wall_time_s']):g} s of training, whichever comes first; trained on seeds "
             f"{first['seeds']['tuning']} and scored on start states of seed {first['eval']['tuning']['seed']}, "
             f"neither of them reported (the rows below run seeds {first['seeds']['reported']} and are scored on the "
             f"reported states, seed {first['eval']['reported']['seed']}). The policy is the same "
             f"{first['architecture']['policy_hidden_sizes']} MLP for every method. The recipe rows are each trainer's "
             "own defaults at the same budget. Records, ranges and every trial: "
             f"`{tuning_dir(exp_dir)}/<task>/<algo>/search.json` and `trials.csv`.", ""]
    header = ["task", "method", "trials", "best tuning return (trial)", "env steps per trial (median)",
              "training s per trial (median)", "stopped by the clock", "CPU"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        seconds_cell = "n/a" if row["seconds"] is None else f"{row['seconds']:.1f}"
        lines.append(f"| `{row['task']}` | `{row['algo']}` | {row['trials']} | {row['best']} | "
                     f"{_count(row['env_steps'])} | {seconds_cell} | {row['clock']} | {row['cpus']} |")
    lines += ["", f"A trial's run counts as stopped by the clock when its training seconds reach "
              f"{CLOCK_SHARE:.0%} of the cap; the others used their env-step budget: a method stopped by the clock "
              "would gain from a faster CPU, one stopped by env steps would not. Total: "
              f"{trials} of {planned} trials, {seconds / 3600:.2f} CPU-hours of trial runs (training, evaluation "
              "and start-up, one CPU each).", ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment> of a tuned experiment")
    args = parser.parse_args(argv)
    lines = tuning_section(args.experiment_dir)
    if not lines:
        print(f"no searches under {tuning_dir(args.experiment_dir)}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
