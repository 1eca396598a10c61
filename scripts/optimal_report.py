"""Writes ``results/optimal/REPORT.md`` from ``summary.csv`` and ``config.json`` (``python -m research.analysis.optimal``).

    python scripts/optimal_report.py results/optimal

Every number comes from those two files; this script only formats them (stdlib only).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def fmt(text: str, digits: int = 2) -> str:
    return "" if text in ("", None) else f"{float(text):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def by_physics(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["physics"], []).append(row)
    return groups


def optimum_table(rows: list[dict]) -> list[str]:
    body = []
    for name, group in by_physics(rows).items():
        best = next((r for r in group if r["optimum"] == "1"), None)
        if best is None:
            continue
        zero = float(best["zero_torque_return_mean"])
        body.append([f"`{name}`", f"{best['grid']} x {best['actions']}", fmt(best["return_mean"]),
                     fmt(best["return_median"]), fmt(best["return_min"]), f"{100 * float(best['success_rate']):.1f}%",
                     fmt(best["dp_value_mean"]), fmt(str(zero)), fmt(best["seconds"], 1)])
    return markdown_table(["physics", "grid x torques", "return mean", "median", "worst", "upright at the end",
                           "DP estimate V_0", "zero torque", "seconds"], body)


def refinement_tables(rows: list[dict]) -> list[str]:
    lines = []
    for name, group in by_physics(rows).items():
        refinement = [r for r in group if r["role"] == "refinement"]
        if len(refinement) < 2:
            continue
        body, means = [], []
        for row in refinement:
            means.append(float(row["return_mean"]))
            change = "" if len(means) == 1 else f"{means[-1] - means[-2]:+.2f}"
            body.append([row["grid"], row["actions"], fmt(row["return_mean"]), change, fmt(row["return_median"]),
                         fmt(row["return_min"]), fmt(row["dp_value_mean"]), fmt(row["solve_seconds"], 1)])
        lines += [f"### `{name}`", ""]
        lines += markdown_table(["grid", "torques", "return mean", "change", "median", "worst", "DP estimate V_0",
                                 "solve (s)"], body)
        steps = [b - a for a, b in zip(means, means[1:], strict=False)]
        trend = "rises with every refinement" if all(d >= 0 for d in steps) else "does not rise monotonically"
        lines += ["", f"The mean return {trend}; the two finest grids ({refinement[-2]['grid']}, "
                      f"{refinement[-1]['grid']}) differ by {abs(steps[-1]):.2f}.", ""]
    return lines


def actions_table(rows: list[dict]) -> list[str]:
    study = [r for r in rows if r["role"] == "actions"]
    if not study:
        return []
    grids = {r["grid"] for r in study}
    physics = study[0]["physics"]
    same_grid = [r for r in rows if r["physics"] == physics and r["grid"] in grids and r["role"] != "actions"]
    body = [[r["grid"], r["actions"], fmt(r["return_mean"], 3), fmt(r["return_median"], 3), fmt(r["return_min"], 3),
             fmt(r["solve_seconds"], 1)]
            for r in sorted(same_grid + study, key=lambda r: (r["grid"], int(r["actions"])))]
    return [f"### Torque set (`{physics}`)", ""] + markdown_table(
        ["grid", "torques", "return mean", "median", "worst", "solve (s)"], body) + [""]


def render(rows: list[dict], config: dict) -> str:
    refinement = [r for r in rows if r["role"] == "refinement"]
    lines = [
        "# The optimal-control yardstick",
        "",
        "Finite-horizon dynamic programming on a `(th, thdot)` grid (`research/analysis/optimal.py`): backward value "
        "iteration over the 200 steps of an episode, `V_200 = 0`, `V_t(s) = max_u E[r(s, u) + V_{t+1}(f(s, u))]`, "
        "with the library's own `pendulum_step` as `f` and `r`, `V_{t+1}` interpolated bilinearly between the nodes "
        "(periodic in `th`; `thdot` on `[-8, 8]`) and a set of torques evenly spaced over `[-2, 2]`. The return "
        "reported is that of the **greedy time-varying policy** (at step `t`, the torque of the set that maximises "
        "`r + V_{t+1}` at the current state) rolled out in the exact physics from the evaluator's 1000 fixed "
        "initial states (`docs/protocol.md`). It is a policy anyone could run, so each return is achievable: a "
        "**lower bound on the optimum**, tightened by finer grids. `DP estimate V_0` is the value table itself "
        "interpolated at the initial states: an estimate, not a bound (interpolation errs both ways).",
        "",
        "## Optimum per physics",
        "",
    ]
    lines += optimum_table(rows)
    lines += [
        "",
        "The row used for each physics is its best return (`optimum = 1` in `summary.csv`): every row is an "
        "achievable policy, so the best of them is the tightest lower bound. `zero torque`: the evaluator's return of "
        "never pushing, `R_zero`. Experiment reports add `gap_to_optimum = R_opt - R` and `normalized_score = "
        "(R - R_zero) / (R_opt - R_zero)` per run (`scripts/aggregate.py`).",
        "",
        "## Grid refinement",
        "",
    ]
    if refinement:
        lines += ["`change`: the mean return against the next coarser grid (same torque set).", ""]
    lines += refinement_tables(rows)
    lines += actions_table(rows)
    lines += ["## Setup", ""]
    commit = str(config.get("git_commit"))
    lines += [f"- Code: git commit `{commit}`" + (" (the working tree had uncommitted changes)"
                                                  if commit.endswith("-dirty") else "")]
    lines += [f"- Machine: {config.get('device', 'unknown')}, {config.get('torch_threads', '?')} torch threads; "
              f"total {float(config.get('seconds', 0)):.0f} s"]
    versions = config.get("versions", {})
    if versions:
        lines += ["- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    argv = config.get("argv", [])
    lines += [f"- Command: `python -m research.analysis.optimal {' '.join(argv)}`", ""]
    physics = argv[argv.index("--physics") + 1:] if "--physics" in argv else []
    physics = physics[:next((i for i, a in enumerate(physics) if a.startswith("--")), len(physics))]
    make = "make optimal" + (f' PHYSICS="{" ".join(physics)}"' if physics else "")
    lines += ["## Regenerate", "", "```bash", make, "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("results/optimal"), help="results/optimal")
    args = parser.parse_args(argv)
    summary = args.out / "summary.csv"
    if not summary.is_file():
        sys.exit(f"error: {summary} is missing; run `make optimal` (python -m research.analysis.optimal) first")
    config_path = args.out / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    (args.out / "REPORT.md").write_text(render(read_rows(summary), config))
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
