"""The physics-axis part of ``REPORT.md``: who wins on each preset and along each axis, and by how much.

``scripts/report.py`` calls :func:`study_section` when an experiment's runs span several presets
(``experiment.physics``). Every number comes from ``summary.csv`` and ``runs.csv`` (``scripts/aggregate.py``) and,
when it exists, from the gradient study of the same presets (``<results>/<GRADIENTS>/gradient_study.csv``, written
by ``make experiment EXP=when_gradients``).

The comparison is between two families, as the algorithm registry gives them (:func:`research.statistics.family`:
backpropagation through the simulator or model-free RL; variants such as ``bptt_squash`` by their trainer). On each
preset the better method of each family (by mean final return over seeds) is compared: the difference of their mean
final returns with a 95% stratified-bootstrap interval (rliable's, each method's seeds resampled independently,
:func:`research.statistics.mean_difference_interval`), and the training seconds and env steps each needed to reach a
normalized score of 0.9. Picking the better of several methods per family slightly favours the family with more
methods. The physics axes are those of the presets (:data:`research.envs.presets.AXES`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.algos import BACKPROP, MODEL_FREE
from research.envs.presets import AXES
from research.statistics import family, mean_difference_interval

GRADIENTS = "when_gradients"
"""The gradient study of the presets, beside the experiment: ``<results>/when_gradients/gradient_study.csv``."""
TIE_MARGIN = 0.0
"""A difference whose 95% interval contains 0 (or lies within this many return units of it) is a tie."""


def _float(text: str | None) -> float:
    return float(text) if text not in ("", None) else math.nan


def difference_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: the difference of two means over seeds with its stratified-bootstrap
    interval (:func:`research.statistics.mean_difference_interval`; fixed RNG seed, so the report is reproducible)."""
    return mean_difference_interval(a, b, level)


def members(rows: list[dict], of_family: str) -> list[str]:
    """The method labels of ``rows`` in the registry family ``of_family``, in order of appearance."""
    return [algo for algo in dict.fromkeys(row["algo"] for row in rows) if family(algo) == of_family]


def best_of(rows: list[dict], of_family: str) -> dict | None:
    """The row of the registry family ``of_family`` with the best mean final return (``None``: it did not run)."""
    candidates = [row for row in rows if family(row["algo"]) == of_family]
    return max(candidates, key=lambda row: _float(row["final_return_mean"])) if candidates else None


def preset_verdicts(summary: list[dict], per_run: list[dict]) -> list[dict]:
    """Per preset: the better method of each family, their scores, the difference of final returns with its CI,
    and the time each took to a normalized score of 0.9. Presets lacking either family are left out."""
    finals: dict[tuple[str, str], list[float]] = {}
    for row in per_run:
        finals.setdefault((row["physics"], row["algo"]), []).append(float(row["final_return_mean"]))
    verdicts = []
    for physics in dict.fromkeys(row["physics"] for row in summary):
        rows = [row for row in summary if row["physics"] == physics]
        bp, mf = best_of(rows, BACKPROP), best_of(rows, MODEL_FREE)
        if bp is None or mf is None:
            continue
        diff, low, high = difference_ci(np.array(finals[(physics, bp["algo"])]), np.array(finals[(physics, mf["algo"])]))
        if low > TIE_MARGIN:
            winner = "backprop"
        elif high < -TIE_MARGIN:
            winner = "model-free"
        else:
            winner = "tie"
        verdicts.append({"physics": physics, "backprop": bp, "model_free": mf, "difference": diff, "low": low,
                         "high": high, "winner": winner,
                         "time_ratio": _cell_ratio(mf["wall_time_s_to_90"], bp["wall_time_s_to_90"]),
                         "steps_ratio": _cell_ratio(mf["env_steps_to_90"], bp["env_steps_to_90"])})
    return verdicts


def _cell_ratio(a: object, b: object) -> float:
    """``a / b`` of two table cells, NaN when either is missing or ``b`` is 0 (a threshold met at the start)."""
    a, b = _float(a), _float(b)
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _score(row: dict) -> str:
    score, gap = _float(row["normalized_score"]), _float(row["gap_to_optimum"])
    return "n/a" if math.isnan(score) else f"{score:.3f} (gap {gap:.1f})"


def _to90(row: dict) -> str:
    seconds, steps = _float(row["wall_time_s_to_90"]), _float(row["env_steps_to_90"])
    if math.isnan(seconds):
        return "never"
    return f"{seconds:.1f} s / {steps:.3g} steps ({row['seeds_reaching_90']}/{row['n_seeds']})"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2g}x"


def verdict_table(verdicts: list[dict]) -> list[str]:
    header = ["physics", "best backprop", "its score (gap)", "best model-free", "its score (gap)",
              "final return, backprop - model-free [95% CI]", "better final return",
              "to 0.9: backprop", "to 0.9: model-free", "model-free / backprop time to 0.9 (wall-clock, env steps)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for v in verdicts:
        bp, mf = v["backprop"], v["model_free"]
        lines.append("| " + " | ".join([
            f"`{v['physics']}`", f"`{bp['algo']}`", _score(bp), f"`{mf['algo']}`", _score(mf),
            f"{v['difference']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}]", v["winner"], _to90(bp), _to90(mf),
            f"{_ratio(v['time_ratio'])} / {_ratio(v['steps_ratio'])}",
        ]) + " |")
    return lines


def axis_sentences(verdicts: list[dict]) -> list[str]:
    """One bullet per axis: how the final-return difference and the time ratio move from the reference preset."""
    by_physics = {v["physics"]: v for v in verdicts}
    lines = []
    for axis, presets, reference, what in AXES:
        present = [p for p in presets if p in by_physics]
        if not present:
            continue
        parts = []
        for physics in (reference, *present):
            if physics not in by_physics:
                continue
            v = by_physics[physics]
            parts.append(f"`{physics}` {v['winner']} ({v['difference']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}], "
                         f"model-free needs {_ratio(v['time_ratio'])} backprop's seconds to 0.9)")
        lines.append(f"- **{axis}** ({what}): " + "; ".join(parts) + ".")
    return lines


def load_gradients(exp_dir: Path) -> list[dict]:
    """The rows of the presets' gradient study (``[]`` when it has not run)."""
    path = exp_dir.parent / GRADIENTS / "gradient_study.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


GRADIENT_HORIZON = 64
"""The horizon of the gradient table: BPTT's default rollout length."""


def gradient_table(rows: list[dict], policy: str = "trained", horizon: int = GRADIENT_HORIZON) -> tuple[list[str], dict]:
    """Markdown lines of the first-order gradient statistics per preset at ``policy`` and ``horizon`` (the nearest
    measured horizon), against default physics and the likelihood-ratio estimator; and ``{physics: statistics}``."""
    rows = [row for row in rows if row.get("policy") == policy]
    if not rows:
        return [], {}
    horizons = sorted({int(row["horizon"]) for row in rows})
    h = min(horizons, key=lambda x: abs(x - horizon))
    cell = {(row.get("physics") or "default", row["estimator"]): row for row in rows if int(row["horizon"]) == h}
    presets = list(dict.fromkeys(row.get("physics") or "default" for row in rows))
    stats = {}
    for physics in presets:
        first, zeroth = cell.get((physics, "first_order")), cell.get((physics, "likelihood_ratio"))
        if first is None:
            continue
        stats[physics] = {"norm": _float(first["grad_norm"]), "variance": _float(first["variance_total"]),
                          "relative_se": _float(first["relative_se"]),
                          "zeroth_variance": _float(zeroth["variance_total"]) if zeroth else math.nan}
    base = stats.get("default", {}).get("variance", math.nan)
    header = ["physics", "first-order: norm of the mean", "total variance", "variance / default's",
              "relative standard error", "first-order / likelihood-ratio variance"]
    lines = [f"First-order gradient of the {h}-step return at each preset's BPTT policy (`{policy}`: seed 0 of this "
             "experiment) from the gradient study of the presets (`make experiment EXP=when_gradients`; norm and "
             "total variance per sample, relative standard error of the mean's norm):", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for physics, st in stats.items():
        lines.append(f"| `{physics}` | {st['norm']:.3g} | {st['variance']:.3g} | {st['variance'] / base:.3g} | "
                     f"{st['relative_se']:.2g} | {st['variance'] / st['zeroth_variance']:.3g} |")
    return lines + [""], stats


def summary_index(summary: list[dict]) -> dict[tuple[str, str], dict]:
    """``{(physics, algo): summary row}``."""
    return {(row["physics"], row["algo"]): row for row in summary}


def all_seeds_at_90(row: dict | None) -> bool:
    """Whether every seed of the row reached a normalized score of 0.9 (``False`` for a method that did not run)."""
    return row is not None and row["seeds_reaching_90"] == row["n_seeds"]


def suh_comparison(summary: list[dict], verdicts: list[dict], gradients: dict) -> list[str]:
    """Where the results agree or disagree with Suh et al. 2022 ("Do differentiable simulators give better policy
    gradients?", ICML): first-order gradients win on smooth dynamics, suffer bias at discontinuities and high
    variance under stiffness. Each sentence is decided by the numbers it quotes."""
    by_physics = {v["physics"]: v for v in verdicts}
    cell = summary_index(summary)
    lines = ["### Against Suh et al. 2022", "",
             "Suh et al. (*Do differentiable simulators give better policy gradients?*, ICML 2022) argue that "
             "first-order gradients beat zeroth-order ones on smooth dynamics, are biased at discontinuities (a "
             "jump whose gradient is zero almost everywhere) and have high variance on stiff dynamics. Here:", ""]
    smooth = [p for p in ("default", "coulomb_smooth", "damped") if p in by_physics]
    if smooth:
        faster = [p for p in smooth if by_physics[p]["time_ratio"] > 1 and by_physics[p]["winner"] != "model-free"]
        verdict = "agrees" if len(faster) == len(smooth) else "partly agrees"
        lines.append(f"- **Smooth dynamics** ({', '.join(f'`{p}`' for p in smooth)}): backprop reaches 0.9 "
                     + ", ".join(f"{by_physics[p]['time_ratio']:.2g}x sooner in wall-clock on `{p}` "
                                 f"({by_physics[p]['winner']} in final return)" for p in smooth)
                     + f": {verdict}.")

    def variance_note(physics: str) -> str:
        st, base = gradients.get(physics), gradients.get("default")
        if not st or not base:
            return ""
        return (f"; at its BPTT policy the first-order gradient's variance is {st['variance'] / base['variance']:.3g}x "
                f"default's and {st['variance'] / st['zeroth_variance']:.3g}x the likelihood-ratio estimator's "
                f"(default: {base['variance'] / base['zeroth_variance']:.2g}x)")

    def methods(physics: str, algos: Sequence[str] = ("bptt", "shac", "ddpg")) -> str:
        parts = []
        for algo in algos:
            row = cell.get((physics, algo))
            parts.append(f"`{algo}` not run" if row is None else f"`{algo}` {float(row['final_return_mean']):.1f} "
                         f"({row['seeds_reaching_90']}/{row['n_seeds']} seeds at 0.9)")
        return ", ".join(parts)

    for physics, twin, what in (("coulomb", "coulomb_smooth", "exact-sign dry friction"),
                                ("wall", "wall_soft", "a hard wall with restitution")):
        if physics not in by_physics:
            continue
        hurt = not all_seeds_at_90(cell.get((physics, "bptt"))) or by_physics[physics]["winner"] == "model-free"
        shac_survives = all_seeds_at_90(cell.get((physics, "shac")))
        lines.append(f"- **Discontinuity** (`{physics}`, {what}): {methods(physics)}; on `{twin}` plain BPTT has "
                     f"{methods(twin, ('bptt',))}" + variance_note(physics)
                     + (": agrees, the discontinuity breaks plain BPTT" if hurt else
                        ": disagrees, plain BPTT is not hurt by this discontinuity")
                     + ("; SHAC's short windows and critic survive it." if hurt and shac_survives else "."))
    if "wall_soft" in by_physics:
        v, bptt = by_physics["wall_soft"], cell.get(("wall_soft", "bptt"))
        bptt_loses = bptt is not None and float(bptt["final_return_mean"]) < float(v["model_free"]["final_return_mean"])
        lines.append(f"- **Stiffness** (`wall_soft`, a penalty spring): {methods('wall_soft')}"
                     + variance_note("wall_soft")
                     + (": agrees for plain BPTT, which falls behind model-free," if bptt_loses
                        else ": disagrees, plain BPTT keeps up with model-free,")
                     + (" while SHAC's truncated windows beat both." if v["backprop"]["algo"] == "shac"
                        and v["winner"] == "backprop" else "."))
    return lines + [""]


def answer_lines(summary: list[dict], verdicts: list[dict]) -> list[str]:
    """The section's first paragraph: on how many presets backprop got to 0.9 sooner, who has the better final
    return where, and where plain BPTT's seeds failed (all counted from the tables below)."""
    n = len(verdicts)
    sooner = [v for v in verdicts if v["time_ratio"] > 1]
    ratios = [v["time_ratio"] for v in sooner]
    groups = {w: [v for v in verdicts if v["winner"] == w] for w in ("backprop", "tie", "model-free")}

    def names(items: list[dict]) -> str:
        return ", ".join(f"`{v['physics']}` ({v['difference']:+.1f})" for v in items) or "none"

    lines = [f"- **Speed.** Backprop reached a normalized score of 0.9 sooner in training wall-clock on "
             f"{len(sooner)} of {n} presets"
             + (f" ({min(ratios):.2g}x to {max(ratios):.2g}x sooner)" if ratios else "")
             + f"; it used more env steps to get there on {sum(v['steps_ratio'] < 1 for v in verdicts)} of them "
               f"({min(1 / v['steps_ratio'] for v in verdicts):.3g}x to {max(1 / v['steps_ratio'] for v in verdicts):.3g}x"
               " as many: simulated transitions are cheap, model-free gradient steps are not).",
             f"- **Final return** (better of each family, difference of means): backprop better on "
             f"{names(groups['backprop'])}; tied on {names(groups['tie'])}; model-free better on "
             f"{names(groups['model-free'])}."]
    failures = []
    for row in summary:
        if family(row["algo"]) == BACKPROP and row["seeds_reaching_90"] not in ("", None):
            reached, seeds = int(row["seeds_reaching_90"]), int(row["n_seeds"])
            if reached < seeds:
                failures.append(f"`{row['algo']}` on `{row['physics']}` {reached}/{seeds} "
                                f"(mean {float(row['final_return_mean']):.1f}, median "
                                f"{float(row['final_return_median']):.1f})")
    if failures:
        model_free = [row for row in summary if family(row["algo"]) == MODEL_FREE]
        every = " Every model-free run did." if all(all_seeds_at_90(row) for row in model_free) else ""
        lines.append("- **Robustness.** Backprop methods whose seeds did not all reach 0.9: " + "; ".join(failures)
                     + "." + every)
    return lines + [""]


def study_section(exp_dir: Path, summary: list[dict], per_run: list[dict]) -> list[str]:
    """The ``REPORT.md`` section of an experiment with a physics axis (``[]`` when no preset has both families)."""
    verdicts = preset_verdicts(summary, per_run)
    if not verdicts:
        return []
    lines = ["## When does backpropagation win?", "",
             f"Backpropagation through the simulator ({', '.join(f'`{a}`' for a in members(summary, BACKPROP))}) "
             f"against model-free RL ({', '.join(f'`{a}`' for a in members(summary, MODEL_FREE))}): on each preset the better method of each family by mean "
             "final return. The difference is of mean final returns over seeds, with a 95% bootstrap interval (each "
             "method's seeds resampled independently, rliable's stratified bootstrap); `tie` when the interval contains 0. The last column divides "
             "the model-free method's training seconds (and env steps) to a normalized score of 0.9 by the backprop "
             "method's (medians over the seeds that got there; above 1: backprop got there sooner; `n/a` when either "
             "never did).", ""]
    lines += answer_lines(summary, verdicts)
    lines += verdict_table(verdicts) + [""]
    lines += ["Along each axis, against default physics:", ""] + axis_sentences(verdicts) + [""]
    figures = [name for name in ("heatmap_normalized_score.png", "heatmap_time_to_90.png")
               if (exp_dir / "figures" / name).is_file()]
    for name in figures:
        lines += [f"![{name[:-4].replace('_', ' ')}](figures/{name})", ""]
    table, gradients = gradient_table(load_gradients(exp_dir))
    lines += table
    lines += suh_comparison(summary, verdicts, gradients)
    return lines
