"""Writes ``results/optimal/REPORT.md`` from ``summary.csv`` and ``config.json`` (``python -m research.analysis.optimal``)
and, for the systems without a grid DP, each ``<system>/summary.json`` (``python -m research.analysis.trajopt``).

    python scripts/optimal_report.py results/optimal

Every number comes from those files; this script only formats them and computes differences (stdlib only).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

#: The knob each study row varies (``role`` in summary.csv), and how the report names it.
STUDIES = {"actions": ("actions", "torques"), "noise_nodes": ("noise_nodes", "Gauss-Hermite nodes"),
           "param_bins": ("param_bins", "parameter bins")}


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def fmt(text: str | float | None, digits: int = 2) -> str:
    """``text`` as a number with ``digits`` decimals; empty for an empty cell or NaN."""
    if text in ("", None) or float(text) != float(text):
        return ""
    return f"{float(text):.{digits}f}"


def percent(text: str) -> str:
    return "" if text in ("", None) else f"{100 * float(text):.1f}%"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def by_physics(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["physics"], []).append(row)
    return groups


def setting(row: dict) -> str:
    """``401x401 x 11`` (with the noise nodes or parameter bins when they apply)."""
    text = f"{row['grid']} x {row['actions']}"
    if int(row.get("noise_nodes") or 0):
        text += f", {row['noise_nodes']} noise nodes"
    if int(row.get("param_bins") or 0):
        text += f", {row['param_bins']} bins"
    return text


def optimum_table(rows: list[dict]) -> list[str]:
    body = []
    for name, group in by_physics(rows).items():
        best = next((r for r in group if r["optimum"] == "1"), None)
        if best is None:
            continue
        kind = "clairvoyant" if best["bound"] == "clairvoyant" else "lower bound"
        body.append([f"`{name}`", kind, setting(best), fmt(best["return_mean"]), fmt(best["return_median"]),
                     fmt(best["return_min"]), percent(best["success_rate"]), fmt(best["dp_value_mean"]),
                     fmt(best["zero_torque_return_mean"]), fmt(best["seconds"], 1)])
    return markdown_table(["physics", "yardstick", "grid x torques", "return mean", "median", "worst",
                           "success", "DP estimate V_0", "zero torque", "seconds"], body)


def refinement_tables(rows: list[dict]) -> list[str]:
    lines = []
    for name, group in by_physics(rows).items():
        for role, title in (("refinement", ""), ("clairvoyant", ", clairvoyant")):
            series = [r for r in group if r["role"] == role]
            if len(series) < 2:
                continue
            body, means = [], []
            for row in series:
                means.append(float(row["return_mean"]))
                change = "" if len(means) == 1 else f"{means[-1] - means[-2]:+.2f}"
                body.append([setting(row), fmt(row["return_mean"]), change, fmt(row["return_median"]),
                             fmt(row["return_min"]), fmt(row["dp_value_mean"]), fmt(row["solve_seconds"], 1)])
            lines += [f"### `{name}`{title}", ""]
            lines += markdown_table(["grid x torques", "return mean", "change", "median", "worst", "DP estimate V_0",
                                     "solve (s)"], body)
            steps = [b - a for a, b in zip(means, means[1:], strict=False)]
            trend = "rises with every refinement" if all(d >= 0 for d in steps) else "does not rise monotonically"
            lines += ["", f"The mean return {trend}; the two finest grids ({series[-2]['grid']}, "
                          f"{series[-1]['grid']}) differ by {abs(steps[-1]):.2f}.", ""]
    return lines


def study_tables(rows: list[dict]) -> list[str]:
    """Each study (torques, noise nodes, parameter bins) beside the row of the same grid it varies."""
    lines = []
    for role, (column, label) in STUDIES.items():
        study = [r for r in rows if r["role"] == role]
        if not study:
            continue
        physics, grid = study[0]["physics"], study[0]["grid"]
        base = "clairvoyant" if role == "param_bins" else "refinement"
        same = [r for r in rows if r["physics"] == physics and r["grid"] == grid and r["role"] == base]
        table = sorted(same + study, key=lambda r: int(r[column] or 0))
        body = [[r[column], fmt(r["return_mean"], 3), fmt(r["return_median"], 3), fmt(r["return_min"], 3),
                 fmt(r["solve_seconds"], 1)] for r in table]
        lines += [f"### {label[0].upper() + label[1:]} (`{physics}`, {grid})", ""]
        lines += markdown_table([label, "return mean", "median", "worst", "solve (s)"], body) + [""]
    return lines


def randomized_note(rows: list[dict]) -> list[str]:
    lines = []
    for name, group in by_physics(rows).items():
        nominal = [r for r in group if r["bound"] == "lower"]
        cells = [r for r in group if r["role"] in ("clairvoyant", "param_bins")]
        best_of = next((r for r in group if r["role"] == "best_of"), None)
        per_draw = next((r for r in group if r["role"] == "per_draw"), None)
        if not (nominal and cells):
            continue
        best_nominal = max(nominal, key=lambda r: float(r["return_mean"]))
        best_cell = max(cells, key=lambda r: float(r["return_mean"]))
        text = (
            f"`{name}` draws its parameters per episode, so no one DP solves it. On the evaluator's 1000 fixed "
            f"draws: the **nominal** DP (solved at the middle of each range) played without knowing the draw "
            f"reaches {fmt(best_nominal['return_mean'])} at best (worst episode {fmt(best_nominal['return_min'])}): "
            "achievable by a policy that is not told the parameters, so a lower bound for such policies, and a loose "
            "one (one policy for all pendulums misjudges the swing-up of the heavy and long ones). The "
            "**clairvoyant** policy is told each episode's parameters: one DP per cell of parameter bins (each "
            "ranged parameter's interval cut into equal bins, the DP solved at the cell's centre), its greedy "
            "choices made with the episode's own parameters; the best cell row reaches "
            f"{fmt(best_cell['return_mean'])} ({setting(best_cell)}).")
        if best_of is not None:
            text += (f" Per episode the best of these {best_of['grid'].split()[-1]} cell policies reaches "
                     f"**{fmt(best_of['return_mean'])}** (worst {fmt(best_of['return_min'])}): with the parameters "
                     "and the state known the physics is deterministic, so such a policy can simulate each candidate "
                     "and play the best; it is achievable. A cell's DP solves slightly wrong parameters, and on some "
                     "episodes that costs an extra swing; another cell size or grid usually does not.")
        if per_draw is not None:
            text += (f" The exact per-episode DP ({per_draw['grid']}, one solve per draw) on the first "
                     f"{per_draw['episodes']} episodes: {fmt(per_draw['return_mean'])}, against "
                     f"{fmt(per_draw['best_of_same_episodes'])} for the best-of policy on the same episodes.")
        text += (" Every clairvoyant return is a lower bound on the clairvoyant optimum, which in turn bounds, in "
                 "expectation, what a policy that is not told the parameters can reach; the reports' yardstick for "
                 "this physics is the best clairvoyant row, so a normalised score near 1 means a learned policy "
                 "adapts to the draw about as well as knowing it.")
        lines += [text, ""]
    return lines


def noisy_note(rows: list[dict]) -> list[str]:
    noisy = sorted({r["physics"] for r in rows if int(r.get("noise_nodes") or 0)})
    if not noisy:
        return []
    names = ", ".join(f"`{n}`" for n in noisy)
    return [f"{names}: the torque noise enters the DP as an expectation, `V_t(s) = max_u sum_k w_k [r(s, u) + "
            "V_{t+1}(f(s, u, eps_k))]` over Gauss-Hermite nodes `eps_k` of the standard normal (the step scales them "
            "by `torque_noise`), and the greedy policy is rolled out with the evaluator's fixed noise (noise seed "
            "1000033), the noise every method meets. Its mean is one sample of the policy's expected return: a "
            "lucky policy can score above it on that noise, but no policy's expected return is above the optimum.",
            ""]


def read_systems(out: Path) -> list[dict]:
    """Every ``<out>/<system>/summary.json`` written by ``research.analysis.trajopt``, by system name."""
    found = []
    for path in sorted(out.glob("*/summary.json")):
        data = json.loads(path.read_text())
        if data.get("method") == "trajopt":
            found.append(data)
    return found


def systems_section(systems: list[dict]) -> list[str]:
    """A row per system (the trajectory-optimisation reference against its reference controller) and the notes."""
    if not systems:
        return []
    body = []
    for data in systems:
        ref, traj, ctrl = data["reference"], data["trajopt"], data.get("controller") or {}
        settings = data["settings"]
        method = (f"best of trajopt ({settings['restarts']} restarts x {settings['iterations']} Adam steps, "
                  f"feedback: {settings.get('feedback', 'none')}) and the reference controller")
        body.append([f"`{data['system']}`", method, str(settings["episodes"]), fmt(ref["return_mean"]),
                     fmt(ref["return_median"]), fmt(ref["return_min"]), percent(ref["success_rate"]),
                     fmt(traj["return_mean"]), fmt(traj["return_median"]), fmt(ctrl.get("return_mean")),
                     fmt(ctrl.get("return_median")), fmt(data.get("wall_clock_s"), 0)])
    lines = ["## Cart-pole and acrobot: per-start trajectory optimisation", ""]
    lines += [
        "A grid DP of four state dimensions is out of reach, so these systems' yardstick is per start: an action "
        "sequence optimised for each of the evaluator's fixed starts (`research/analysis/trajopt.py`: Adam on "
        "`max_action * tanh(u_t + f_t)` through the differentiable physics, all starts and restarts batched; `f_t` a "
        "stabilising feedback's value at the current state on the feedback restarts, 0 on the open-loop ones; "
        "warm-started from the reference controller's rollout and perturbed restarts; the best sequence per start "
        "over restarts and iterations kept). The kept sequences are rolled out again, open-loop, in the exact "
        "physics (float32 on the CPU, as the evaluator), and per start the better of that and the reference "
        "controller's closed-loop return is the **reference** (both achievable by a policy told its start: a lower "
        "bound on the optimum, not the optimum). A sequence that balances at the top is reproduced only in the "
        "arithmetic it was found in: replayed in float64 its rounding differences grow at the unstable upright "
        "(fast for the acrobot, slowly for the cart-pole), so the float64 replays below measure that sensitivity, "
        "not another optimum.", ""]
    lines += markdown_table(["system", "method", "starts", "reference mean", "median", "worst", "success",
                             "trajopt mean", "trajopt median", "controller mean", "controller median", "seconds"],
                            body)
    lines += [""]
    for data in systems:
        settings = data["settings"]
        text = (f"`{data['system']}`: trajectory optimisation beats the reference controller on "
                f"{100 * data['trajopt_better_than_controller']:.1f}% of the starts; the kept sequences replayed in "
                f"float64 average {fmt(data['trajopt_float64']['return_mean'])} (float32: "
                f"{fmt(data['trajopt']['return_mean'])}; largest difference on one start "
                f"{fmt(data['float64_gap_max'], 3)}). Horizon {settings['horizon']}, lr {settings['lr']:g} (cosine to "
                f"{settings['lr_final']:g}), gradient factor per step back {settings['grad_decay']:g}; git commit "
                f"`{data.get('git_commit')}`.")
        if data.get("note"):
            text += " " + data["note"]
        lines += [text, ""]
    return lines


def render(rows: list[dict], config: dict, systems: list[dict] | None = None) -> str:
    lines = [
        "# The optimal-control yardstick",
        "",
        "Finite-horizon dynamic programming on a `(th, thdot)` grid (`research/analysis/optimal.py`): backward value "
        "iteration over the 200 steps of an episode, `V_200 = 0`, `V_t(s) = max_u E[r(s, u) + V_{t+1}(f(s, u))]`, "
        "with the library's own `pendulum_step` as `f` and `r`, `V_{t+1}` interpolated bilinearly between the nodes "
        "(periodic in `th`, or on the wall's range `[phi - 2 pi, phi]`, widened past a soft wall; `thdot` on "
        "`[-max_speed, max_speed]`) and torques evenly spaced over `[-max_torque, max_torque]`, the action space. "
        "The return reported is that of the **greedy time-varying policy** (at step `t`, the torque of the set that "
        "maximises `r + V_{t+1}` at the current state) rolled out in the exact physics from the evaluator's 1000 "
        "fixed initial states, with its parameter draws and torque noise (`docs/protocol.md`). It is a policy anyone "
        "could run, so each return is achievable: a **lower bound on the optimum**, tightened by finer grids. "
        "`DP estimate V_0` is the value table itself interpolated at the initial states: an estimate, not a bound "
        "(interpolation errs both ways). Success: the evaluator's (ending within 0.5 rad of upright, slower than "
        "1 rad/s).",
        "",
        "## Optimum per physics",
        "",
    ]
    lines += optimum_table(rows)
    lines += [
        "",
        "Each physics' yardstick is its best row (`optimum = 1` in `summary.csv`): every row is an achievable policy, "
        "so the best of them is the tightest lower bound (for a randomised physics, the best clairvoyant row, below). "
        "`zero torque`: the evaluator's return of never pushing, `R_zero`. Experiment reports add "
        "`gap_to_optimum = R_opt - R` and `normalized_score = (R - R_zero) / (R_opt - R_zero)` per run "
        "(`scripts/aggregate.py`).",
        "",
    ]
    lines += randomized_note(rows) + noisy_note(rows)
    lines += systems_section(systems or [])
    lines += ["## Grid refinement", "", "`change`: the mean return against the next coarser grid (same torques).", ""]
    lines += refinement_tables(rows)
    studies = study_tables(rows)
    if studies:
        lines += ["## Other discretisations", ""] + studies
    lines += ["## Setup", ""]
    commit = str(config.get("git_commit"))
    lines += [f"- Code: git commit `{commit}`" + (" (the working tree had uncommitted changes)"
                                                  if commit.endswith("-dirty") else "")]
    lines += [f"- Machine: {config.get('device', 'unknown')}, {config.get('torch_threads', '?')} torch thread(s); "
              f"all solves and rollouts together {float(config.get('seconds', 0)):.0f} s"]
    versions = config.get("versions", {})
    if versions:
        lines += ["- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    argv = config.get("argv", [])
    lines += [f"- Command: `python -m research.analysis.optimal {' '.join(argv)}`", ""]
    physics = argv[argv.index("--physics") + 1:] if "--physics" in argv else []
    physics = physics[:next((i for i, a in enumerate(physics) if a.startswith("--")), len(physics))]
    make = "make optimal" + (f' PHYSICS="{" ".join(physics)}"' if physics else "")
    if "--grids" in argv:  # not the default plan: only the command itself reproduces it
        make = f"python -m research.analysis.optimal {' '.join(argv)}"
    extra = ["make optimal-systems  # only the trajectory-optimisation rows (part of make optimal)"] if systems else []
    lines += ["## Regenerate", "", "```bash", make, *extra, "```", ""]
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
    (args.out / "REPORT.md").write_text(render(read_rows(summary), config, read_systems(args.out)))
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
