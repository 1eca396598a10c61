"""Writes ``results/gap/REPORT.md`` and ``figures/gap.png`` from ``summary.csv``, ``dp.csv`` and ``config.json``
(``python -m research.analysis.gap``).

    python scripts/gap_report.py results/gap

Every number comes from those files; this script only formats them (and draws the figure with matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

PARTS = ("stationarity", "objective", "representation", "optimisation")
#: What a physics' R* is, where it is not the optimum of that physics.
NOTES = {"randomized": "R* here is the nominal parameters' DP played without knowing each episode's draw "
                       "(results/optimal: an achievable policy, not an optimum for the randomised episodes); a learner "
                       "can beat it, and the parts then carry that sign. So can the value-based student: it "
                       "trains in the randomised physics (a fresh draw per rollout) against the nominal DP's value, "
                       "and where it beats its teacher the representation part is negative.",
         "noisy": "R* is the DP of the expected return (Gauss-Hermite over the torque noise), scored on the fixed "
                  "noise draws."}
COLOURS = {"stationarity": "#4c72b0", "objective": "#dd8452", "representation": "#55a868", "optimisation": "#c44e52"}


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def num(text: str | None) -> float:
    return math.nan if text in ("", None) else float(text)


def fmt(text: str | float | None, digits: int = 2) -> str:
    value = num(text) if not isinstance(text, float) else text
    return "n/d" if value != value else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def figure(rows: list[dict], path: Path) -> bool:
    """Signed stacked bars of the parts per learner row; ``False`` without matplotlib or rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    learners = [r for r in rows if r["role"] == "learner"]
    if not learners:
        return False
    labels = [f"{r['physics']} / {r['algo']} ({r['experiment']})" for r in learners]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(learners) + 1.5))
    for i, row in enumerate(learners):
        pos = neg = 0.0
        for part in PARTS:
            value = num(row[part])
            if value != value:
                continue
            left = pos if value >= 0 else neg
            ax.barh(i, value, left=left, color=COLOURS[part], label=part if i == 0 else None)
            if value >= 0:
                pos += value
            else:
                neg += value
        ax.plot([num(row["gap"])], [i], "k|", markersize=9)
    ax.set_yticks(range(len(learners)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("return below the optimum, by part (symlog; | marks the total gap)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(root: Path) -> str:
    rows, dp = read_rows(root / "summary.csv"), read_rows(root / "dp.csv")
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    has_figure = figure(rows, root / "figures" / "gap.png")
    out = ["# The gap to the optimum, taken apart (issue #22)", "",
           "Written by `scripts/gap_report.py` from `summary.csv`, `dp.csv` and `config.json` "
           "(`python -m research.analysis.gap`, `make gap`). Every return is the evaluation protocol's mean "
           "(1000 fixed starts, 200 steps, undiscounted).", "",
           "## Method", "",
           "For a learner trained at discount g, the chain R* -> R_stat -> R_g -> R_dist -> R_L telescopes:", "",
           "- **stationarity** = R* - R_stat: the time-varying 200-step DP policy against the DP's stationary "
           "greedy policy (greedy w.r.t. V_1 at every step; the best stationary policy at hand, not a proven best).",
           "- **objective** = R_stat - R_g: R_g is the stationary greedy policy of the DP of the learner's own "
           "discounted objective (discount read from each run's config.json: the last stage's `discount`, else "
           "`gamma`). Exactly 0 at g = 1 (the same DP).",
           "- **representation** = R_g - R_dist: R_dist is the better on the protocol of two students of R_g in the "
           "learners' 2x64 tanh squashed MLP (the `reference` column says which): `distilled_dp_g*`, DAgger with an "
           "MSE loss on the teacher's actions (teacher rollouts, then rounds of student rollouts labelled by the "
           "teacher, aggregated, refit); and `value_dp_g*`, *SHAC with an oracle critic*: the MSE student "
           "fine-tuned to maximise the DP's own objective, -(sum_{t<K} g^t r_t + g^K V_g(s_K)), through K-step "
           "differentiable rollouts of the physics from states its own rollouts visit (aggregated over rounds, plus "
           "fresh starts of another seed than the evaluation's), V_g the DP's time-0 value table at the teacher's "
           "discount (at g = 1 the undiscounted 200-step DP's V_0) interpolated bilinearly; K in {1, 4, 16}, the "
           "best on the protocol kept. Both students are `reference` rows, never learners.",
           "- **optimisation** = R_dist - R_L: what remains. Negative when the learner beats the distilled "
           "reference: the distillation (its budget is in config.json, its protocol return after each DAgger round "
           "in the reference tables) then reached less than the learner did, and the representation part "
           "*overstates* what the MLP cannot represent (it bounds it from above; only the sum of the two parts is "
           "then firm: the last column, R_g - R_L, the learner's shortfall from the optimum of its own objective).", "",
           "Signs are as measured: any part may be negative. The off-policy learners (DDPG, TD3, SAC) use larger "
           "ReLU actors than the 2x64 tanh MLP of the representation part; for them that part is the cost of the "
           "*BPTT* learners' network, and their optimisation part absorbs the difference.", "",
           "**Grid error.** Each DP return is measured at the main grid and a coarse grid; |main - coarse| is its "
           "resolution error (an overestimate: refining roughly halves it). `*` marks a part no larger than the sum "
           "of the errors of its two ends: it is within the DP's own resolution and its sign is not established.",
           "", "**Cart-pole and acrobot** have no grid DP: R* is the per-start reference of "
           "`results/optimal/<system>` (the better of the trajectory-optimisation plan and the reference controller "
           "per start: time-varying plans), R_stat the reference controller (stationary), the representation part "
           "distills that controller into the MLP. The **objective part is not defined** there (no discounted "
           "optimum: `n/d`), nor a grid error; the stationarity part there is also a lower bound's difference "
           "(trajopt is local, not an optimum).", ""]
    if has_figure:
        out += ["![the parts per learner](figures/gap.png)", ""]
    winners = []
    for r in rows:
        if r["role"] == "reference" and (r.get("reference") or "mse") == "mse":
            value = next((v for v in rows if v["role"] == "reference" and v["physics"] == r["physics"]
                          and v["discount"] == r["discount"] and (v.get("reference") or "").startswith("value")), None)
            winners.append([r["physics"], fmt(r["discount"], 3), fmt(r["discounted"]), fmt(r["distilled"]),
                            fmt(value["distilled"]) if value else
                            ("n/d (no DP value)" if num(r["discounted"]) != num(r["discounted"]) else "not run"),
                            value.get("value_horizon") or "" if value else "",
                            r.get("reference_used") or "mse"])
    if winners:
        out += ["## Which student is R_dist", "",
                "Per physics and teacher discount: the teacher (the DP's stationary greedy policy at that discount), the "
                "MSE student, the value-based student (K kept) and the one R_dist is taken from (`not run`: rows of an "
                "invocation without the value-based student, see Provenance).", ""]
        out += markdown_table(["physics", "discount", "teacher", "MSE student", "value student", "K", "R_dist from"],
                              winners) + [""]
    for physics in dict.fromkeys(r["physics"] for r in rows):
        mine = [r for r in rows if r["physics"] == physics]
        first = mine[0]
        out += [f"## {physics}", "",
                f"R* = {fmt(first['optimum'])}, R_stat = {fmt(first['stationary'])}"
                + (f" (DP grid {first['grid']})" if first.get("grid") else "") + ".", ""]
        if physics in NOTES:
            out += [NOTES[physics], ""]
        table = []
        for r in mine:
            if r["role"] != "learner":
                continue
            cells = []
            for part in PARTS:
                value, error = num(r[part]), num(r.get(f"{part}_dp_error"))
                mark = "*" if part in (r.get("within_dp_error") or "").split() else ""
                cells.append(fmt(value) + mark + (f" (±{error:.2f})" if error == error and error > 0 else ""))
            together = num(r["representation"]) + num(r["optimisation"])
            table.append([r["experiment"], r["algo"], r["n_seeds"], fmt(r["discount"], 3), fmt(r["learner_return"]),
                          fmt(r["gap"]), *cells, fmt(together), r.get("reference") or "mse"])
        out += markdown_table(["experiment", "learner", "seeds", "discount", "R_L", "gap", *PARTS,
                               "repr. + optim.", "R_dist from"], table) + [""]
        refs = [[r["algo"], fmt(r["discount"], 3), fmt(r["discounted"]), fmt(r["distilled"]), fmt(r["distill_mae"], 3),
                 r["distill_rounds"], r.get("value_by_horizon") or "",
                 "yes" if (r.get("reference_used") or "mse") == (r.get("reference") or "mse") else ""]
                for r in mine if r["role"] == "reference"]
        out += ["Reference rows (students of the DP policy, never learners; `used`: the one R_dist is taken from):", ""]
        out += markdown_table(["reference", "teacher discount", "teacher return", "student return",
                               "action MAE / max", "protocol return after each round", "last round per K", "used"],
                              refs) + [""]
    if dp:
        keys = [k for k in dp[0] if k not in ("physics", "grid", "actions", "seconds")]
        out += ["## DP returns at each grid (resolution check)", ""]
        out += markdown_table(["physics", "grid", *keys, "seconds"],
                              [[r["physics"], r["grid"], *(fmt(r.get(k)) for k in keys), fmt(r["seconds"], 1)]
                               for r in dp]) + [""]
    out += ["## Provenance", ""]
    for inv in config.get("invocations", []):
        head = (f"- {' '.join(inv['physics'])}: commit `{inv.get('git_commit')}`"
                + (f", modified {inv['modified_paths']}" if inv.get("modified_paths") else ""))
        if inv.get("references"):  # make gap REUSE=1: learners only, no DP or student computed
            out.append(f"{head}: the learner rows only ({inv['references']}; `--reuse-references`), "
                       f"{inv.get('device')}, {inv.get('seconds', 0):.0f} s")
            continue
        out.append(f"{head}, grid {inv.get('grid')} (coarse {inv.get('coarse_grid')}), distill {inv.get('distill')}, "
                   f"value-based student {inv.get('value_distill') or 'none (MSE student only)'}, "
                   f"{inv.get('device')}, {inv.get('seconds', 0):.0f} s")
    out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, nargs="?", default=Path("results/gap"))
    args = parser.parse_args(argv)
    (args.root / "REPORT.md").write_text(report(args.root))
    print(f"wrote {args.root / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
