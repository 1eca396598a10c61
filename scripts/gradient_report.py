"""Figures and ``REPORT.md`` of a gradient study, from its ``gradient_study.csv`` and ``config.json`` alone.

    python scripts/gradient_report.py results/gradient_study

The measurement (``research.analysis.gradients``, run by ``python -m research.experiment
experiments/gradient_study.toml``) writes the two files; ``make experiment EXP=gradient_study`` runs it and then this
script. Three figures against the horizon H, log-log: ``figures/gradient_norm.png`` (norm of the mean gradient, mean
per-sample norm), ``figures/gradient_variance.png`` (trace of the covariance, relative standard error of the mean)
and ``figures/cosine.png`` (cosine between the two estimators' mean gradients). Every statement under "Findings" is
computed from the CSV rows; none is written in advance.

A study on several physics presets (its CSV's ``physics`` column; a CSV without one is default physics) gets those
three figures per preset under ``figures/<preset>/`` and findings per preset, plus figures with one line per preset
(:data:`PHYSICS_FIGURES`: the first-order and the zeroth-order variance and norm of the mean against H, and their
variance ratio) and per-preset tables at a few horizons (:data:`TABLE_HORIZONS`, or the nearest measured ones).
Rows may come from several systems (``physics`` entries such as ``cartpole`` and ``acrobot``; ``config.json`` says
each one's system, preset, time step and action-noise std): the horizon axis then names each task's time step, the
cross-preset variance findings compare presets within a system, and the text speaks of each system's reset and
action units; a study on the pendulum alone reads as before.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _rundata import experiment_dir  # noqa: E402

DATA = "gradient_study.csv"
CONFIG = "config.json"
FIGURES = ("gradient_norm.png", "gradient_variance.png", "cosine.png")
#: The cross-preset figures of a study on several presets, in ``figures/``.
PHYSICS_FIGURES = ("physics_first_order.png", "physics_zeroth_order.png", "physics_variance_ratio.png")
#: Horizons of the per-preset tables (each replaced by the nearest measured one, on a log scale).
TABLE_HORIZONS = (1, 20, 64, 200)
ESTIMATORS = ("first_order", "likelihood_ratio")
ESTIMATOR_LABELS = {"first_order": "first order (BPTT)", "likelihood_ratio": "zeroth order (likelihood ratio)"}
LR_BASELINE_LABELS = {"none": "plain", "reward_to_go": "reward-to-go",
                      "reward_to_go_baseline": "reward-to-go − noise-free baseline"}
LR_BASELINE_FORMULAS = {
    "none": "R_H · Σ_t ε_t / σ · ∇θ μθ(s_t) (plain REINFORCE, no baseline)",
    "reward_to_go": "Σ_t G_t · ε_t / σ · ∇θ μθ(s_t), G_t = Σ_{t'≥t} r_t' the reward-to-go (causality, no baseline)",
    "reward_to_go_baseline": "Σ_t (G_t − G⁰_t) · ε_t / σ · ∇θ μθ(s_t), G_t = Σ_{t'≥t} r_t' the reward-to-go and "
                             "G⁰_t the same on the noise-free rollout from the same initial state (a baseline that "
                             "depends on s_0 only, so the estimator stays unbiased)",
}
#: A mean gradient counts as resolved when its relative standard error is below this: only then is a cosine with it
#: evidence about its direction.
RESOLVED_RELATIVE_SE = 0.5
TEXT_COLUMNS = ("physics", "policy", "estimator", "lr_baseline")
#: The preset of rows from a CSV without a ``physics`` column (studies before it had one).
DEFAULT_PHYSICS = "default"
#: The system and time step (s) of a task that ``config.json`` does not describe (studies of the pendulum alone,
#: before they recorded them).
DEFAULT_SYSTEM = "pendulum"
DEFAULT_TIME_STEP = 0.05
#: The horizon axis' label when every task steps ``DEFAULT_TIME_STEP`` (the pendulum's).
XLABEL = f"horizon H (steps of {DEFAULT_TIME_STEP:g} s)"
INTEGER_COLUMNS = ("horizon", "samples")


# ---------------------------------------------------------------------------------------------------- reading
def parse_row(row: Mapping[str, str]) -> dict[str, Any]:
    """A CSV row with its numbers as numbers (``horizon`` and ``samples`` as ints, the statistics as floats); a row
    without a ``physics`` value is :data:`DEFAULT_PHYSICS`."""
    parsed = {key: value if key in TEXT_COLUMNS else int(value) if key in INTEGER_COLUMNS else float(value)
              for key, value in row.items()}
    parsed["physics"] = parsed.get("physics") or DEFAULT_PHYSICS
    return parsed


def load_study(exp_dir: Path) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """``(columns, rows, config.json)`` of a gradient study directory; exits with a message when a file is missing."""
    data, config = exp_dir / DATA, exp_dir / CONFIG
    if not (data.is_file() and config.is_file()):
        sys.exit(f"error: {exp_dir} holds no {DATA} and {CONFIG}; measure first: "
                 f"python -m research.experiment experiments/{exp_dir.name}.toml")
    with data.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [parse_row(row) for row in reader]
        columns = list(reader.fieldnames or [])
    return columns, rows, json.loads(config.read_text())


def _series(rows: Sequence[Mapping[str, Any]], policy: str, estimator: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    chosen = sorted((r for r in rows if r["policy"] == policy and r["estimator"] == estimator),
                    key=lambda r: r["horizon"])
    return np.array([r["horizon"] for r in chosen]), np.array([r[key] for r in chosen], dtype=float)


def _policies(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["policy"] for r in rows))


def physics_presets(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The presets of ``rows``, in the order of the CSV."""
    return list(dict.fromkeys(r.get("physics") or DEFAULT_PHYSICS for r in rows))


def preset_rows(rows: Sequence[Mapping[str, Any]], physics: str) -> list[Mapping[str, Any]]:
    """The rows of one preset."""
    return [r for r in rows if (r.get("physics") or DEFAULT_PHYSICS) == physics]


def task(info: Mapping[str, Any], physics: str) -> dict[str, Any]:
    """What ``config.json`` says of one task: its ``system`` and ``preset`` (the pendulum and the entry itself when it
    does not say), ``time_step``, ``description``, ``sigma`` (the std of the action noise) and ``max_action`` when
    recorded."""
    recorded = dict(info.get("physics", {}).get(physics, {}))
    return {"system": DEFAULT_SYSTEM, "preset": physics, "time_step": DEFAULT_TIME_STEP, **recorded}


def horizon_label(info: Mapping[str, Any], presets: Sequence[str]) -> str:
    """The horizon axis' label: :data:`XLABEL` when every task of ``presets`` steps alike (the pendulum's 0.05 s),
    else each time step with its tasks."""
    steps: dict[float, list[str]] = {}
    for name in presets:
        steps.setdefault(task(info, name)["time_step"], []).append(name)
    if len(steps) == 1:
        return f"horizon H (steps of {next(iter(steps)):g} s)"
    return "horizon H (steps: " + "; ".join(f"{dt:g} s on {', '.join(names)}" for dt, names in steps.items()) + ")"


def table_horizons(horizons: Sequence[int], wanted: Sequence[int] = TABLE_HORIZONS) -> list[int]:
    """Each of ``wanted``, or the measured horizon nearest to it on a log scale (ties: the smaller), without
    repeats, sorted."""
    measured = sorted(set(int(h) for h in horizons))
    if not measured:
        return []
    nearest = {min(measured, key=lambda h: (abs(math.log(h / w)), h)) for w in wanted}
    return sorted(nearest)


def _resolved(rows: Sequence[Mapping[str, Any]], policy: str, estimator: str | None = None) -> np.ndarray:
    """Per horizon: is the estimator's mean (both means when ``estimator`` is None) resolved, its relative standard
    error below :data:`RESOLVED_RELATIVE_SE`?"""
    resolved = True
    for name in ESTIMATORS if estimator is None else (estimator,):
        resolved = resolved & (_series(rows, policy, name, "relative_se")[1] < RESOLVED_RELATIVE_SE)
    return resolved


def _estimator_label(rows: Sequence[Mapping[str, Any]], estimator: str) -> str:
    baselines = sorted({r["lr_baseline"] for r in rows if r["estimator"] == estimator})
    if estimator != "likelihood_ratio" or len(baselines) != 1:
        return ESTIMATOR_LABELS[estimator]
    return f"{ESTIMATOR_LABELS[estimator][:-1]}, {LR_BASELINE_LABELS.get(baselines[0], baselines[0])})"


# ---------------------------------------------------------------------------------------------------- figures
def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=130)
    os.replace(tmp, path)


def plot_study(rows: Sequence[Mapping[str, Any]], figures: Path, samples: int, xlabel: str = XLABEL) -> None:
    """``gradient_norm.png``, ``gradient_variance.png`` and ``cosine.png`` against the horizon, log-log."""
    figures.mkdir(parents=True, exist_ok=True)
    policies = _policies(rows)
    colors = {"first_order": "tab:blue", "likelihood_ratio": "tab:orange"}
    styles = {"random": ("--", "o"), "trained": ("-", "s")}

    def lines(ax: Any, key: str) -> None:
        for policy in policies:
            for estimator in ESTIMATORS:
                h, y = _series(rows, policy, estimator, key)
                linestyle, marker = styles.get(policy, ("-", "^"))
                ax.loglog(h, y, linestyle=linestyle, marker=marker, color=colors[estimator],
                          label=f"{_estimator_label(rows, estimator)}, {policy} policy")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    lines(axes[0], "grad_norm")
    axes[0].set_ylabel("‖mean gradient‖ (return per unit parameter)")
    axes[0].set_title("norm of the mean gradient of the H-step return")
    lines(axes[1], "mean_sample_norm")
    axes[1].set_ylabel("mean ‖per-sample gradient‖ (return per unit parameter)")
    axes[1].set_title("mean norm of the per-sample gradients")
    axes[1].legend(fontsize=8)
    _save(fig, figures / "gradient_norm.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    lines(axes[0], "variance_total")
    axes[0].set_ylabel("trace of the per-sample covariance ((return per unit parameter)²)")
    axes[0].set_title("total per-parameter variance across samples")
    lines(axes[1], "relative_se")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    axes[1].set_ylabel(f"standard error / ‖mean‖, N = {samples}")
    axes[1].set_title("relative standard error of the mean gradient")
    axes[1].legend(fontsize=8)
    _save(fig, figures / "gradient_variance.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.8), constrained_layout=True)
    for i, policy in enumerate(policies):
        h, cosine = _series(rows, policy, ESTIMATORS[0], "cosine")
        _, se = _series(rows, policy, ESTIMATORS[0], "cosine_se")
        resolved = _resolved(rows, policy)
        linestyle, marker = styles.get(policy, ("-", "^"))
        color = f"C{i + 2}"
        ax.errorbar(h, cosine, yerr=se, linestyle=linestyle, color=color, capsize=3, label=f"{policy} policy")
        ax.scatter(h[resolved], cosine[resolved], marker=marker, color=color, zorder=3)
        ax.scatter(h[~resolved], cosine[~resolved], marker=marker, facecolors="white", edgecolors=color, zorder=3)
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cosine(mean first-order, mean zeroth-order)")
    ax.set_title(f"agreement of the estimators (± jackknife s.e.); hollow: a mean with\nrelative s.e. ≥ "
                 f"{RESOLVED_RELATIVE_SE} at N = {samples}, so the cosine says little", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, figures / "cosine.png")
    plt.close(fig)


def plot_physics(rows: Sequence[Mapping[str, Any]], figures: Path, xlabel: str = XLABEL) -> None:
    """The cross-preset figures (:data:`PHYSICS_FIGURES`), one line per preset, log-log against the horizon.

    ``physics_first_order.png`` and ``physics_zeroth_order.png``: the trace of the per-sample covariance (top) and
    the norm of the mean gradient (bottom) of that estimator, one column per policy; ``physics_variance_ratio.png``:
    first-order / zeroth-order variance, one panel per policy (below 1: backpropagation needs fewer samples).
    """
    figures.mkdir(parents=True, exist_ok=True)
    presets, policies = physics_presets(rows), _policies(rows)
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(presets)}
    markers = "osd^v<>phX*"

    def line(ax: Any, physics: str, h: np.ndarray, y: np.ndarray) -> None:
        ax.loglog(h, y, marker=markers[presets.index(physics) % len(markers)], markersize=4, color=colors[physics],
                  linestyle="--" if physics == DEFAULT_PHYSICS else "-", label=physics)

    for estimator, name in zip(ESTIMATORS, PHYSICS_FIGURES[:2], strict=True):
        fig, axes = plt.subplots(2, len(policies), figsize=(6 * len(policies), 8.5), squeeze=False,
                                 constrained_layout=True)
        for column, policy in enumerate(policies):
            for physics in presets:
                chosen = preset_rows(rows, physics)
                for row, key in enumerate(("variance_total", "grad_norm")):
                    line(axes[row, column], physics, *_series(chosen, policy, estimator, key))
            axes[0, column].set_title(f"{_estimator_label(rows, estimator)}, {policy} policy", fontsize=10)
            for ax in axes[:, column]:
                ax.set_xlabel(xlabel)
                ax.grid(True, which="both", alpha=0.3)
        axes[0, 0].set_ylabel("trace of the per-sample covariance")
        axes[1, 0].set_ylabel("‖mean gradient‖ (return per unit parameter)")
        axes[0, -1].legend(fontsize=8, title="physics")
        _save(fig, figures / name)
        plt.close(fig)

    fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.8), squeeze=False,
                             constrained_layout=True)
    for column, policy in enumerate(policies):
        ax = axes[0, column]
        for physics in presets:
            chosen = preset_rows(rows, physics)
            h, first = _series(chosen, policy, "first_order", "variance_total")
            _, zeroth = _series(chosen, policy, "likelihood_ratio", "variance_total")
            line(ax, physics, h, first / zeroth)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{policy} policy", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("variance first order / zeroth order (trace)")
    axes[0, -1].legend(fontsize=8, title="physics")
    fig.suptitle("below 1: first order (BPTT) needs fewer samples than the likelihood ratio for the same s.e.",
                 fontsize=10)
    _save(fig, figures / PHYSICS_FIGURES[2])
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- findings
def _loglog_slope(h: np.ndarray, y: np.ndarray) -> float:
    keep = (y > 0) & np.isfinite(y)
    return float(np.polyfit(np.log(h[keep]), np.log(y[keep]), 1)[0]) if keep.sum() >= 2 else math.nan


def _horizon_list(horizons: Sequence[int]) -> str:
    return ", ".join(str(int(h)) for h in horizons) if len(horizons) else "none"


def study_findings(rows: Sequence[Mapping[str, Any]], samples: int) -> list[str]:
    """Statements about the results, each computed from ``rows`` (nothing here is asserted in advance)."""
    findings = []
    for policy in _policies(rows):
        h, var_fo = _series(rows, policy, "first_order", "variance_total")
        _, var_lr = _series(rows, policy, "likelihood_ratio", "variance_total")
        _, norm_fo = _series(rows, policy, "first_order", "grad_norm")
        _, mean_norm_fo = _series(rows, policy, "first_order", "mean_sample_norm")
        _, median_norm_fo = _series(rows, policy, "first_order", "median_sample_norm")
        _, rse_fo = _series(rows, policy, "first_order", "relative_se")
        _, cosine = _series(rows, policy, "first_order", "cosine")
        _, cosine_se = _series(rows, policy, "first_order", "cosine_se")
        lo, hi = 0, len(h) - 1
        snr = norm_fo**2 / var_fo
        findings.append(
            f"**{policy} policy, first order (BPTT):** from H = {h[lo]} to H = {h[hi]} the variance (trace) grows by "
            f"a factor {var_fo[hi] / var_fo[lo]:.3g} (log-log slope {_loglog_slope(h, var_fo):.2f}) while the norm "
            f"of the mean gradient grows by {norm_fo[hi] / norm_fo[lo]:.3g}: the per-sample signal-to-noise ratio "
            f"‖mean‖²/trace goes from {snr[lo]:.3g} to {snr[hi]:.3g} (lowest {snr.min():.3g}, at H = "
            f"{h[snr.argmin()]}). With {samples} samples the mean's relative standard error is {rse_fo[lo]:.3g} at "
            f"H = {h[lo]} and {rse_fo[hi]:.3g} at H = {h[hi]}"
            + (f" (about {samples * (rse_fo[hi] / 0.1) ** 2:.3g} samples would bring it to 0.1)" if rse_fo[hi] > 0.1
               else "")
            + f". Mean / median per-sample norm: {mean_norm_fo[lo] / median_norm_fo[lo]:.3g} at H = {h[lo]}, "
            f"{mean_norm_fo[hi] / median_norm_fo[hi]:.3g} at H = {h[hi]} (a ratio far above 1 means that a few samples "
            "carry most of the gradient)."
        )
        ratio = var_fo / var_lr
        close = np.flatnonzero(ratio >= 0.5)
        tail = [i for i in close if (ratio[i:] >= 0.5).all()]
        findings.append(
            f"**{policy} policy, first vs zeroth order:** variance ratio first / zeroth order (the zeroth-order "
            "estimator needs 1 / ratio times as many samples for the same standard error) by horizon: "
            + ", ".join(f"H = {hh}: {r:.2g}" for hh, r in zip(h, ratio, strict=True))
            + f". First order has the lower variance at H = {_horizon_list(h[ratio < 1])} and the higher one at "
            f"H = {_horizon_list(h[ratio >= 1])}"
            + (f"; from H = {h[tail[0]]} on it is no longer below half the zeroth-order variance" if tail else "")
            + f". The zeroth-order variance grows by a factor {var_lr[hi] / var_lr[lo]:.3g} over the same range "
            f"(log-log slope {_loglog_slope(h, var_lr):.2f})."
        )
        resolved = _resolved(rows, policy)
        agree = h[resolved & (cosine - 2 * cosine_se > 0.9)]
        disagree = h[resolved & (cosine + 2 * cosine_se < 0.5)]
        cells = ", ".join(f"{hh}: {c:.2f} ± {e:.2f}" for hh, c, e in zip(h, cosine, cosine_se, strict=True))
        unresolved = [f"the {label} mean is unresolved at H = {_horizon_list(h[~_resolved(rows, policy, name)])}"
                      for name, label in (("first_order", "first-order"), ("likelihood_ratio", "zeroth-order"))
                      if not _resolved(rows, policy, name).all()]
        findings.append(
            f"**{policy} policy, agreement:** cosine between the mean gradients ± jackknife s.e., by H: {cells}; "
            f"its s.e. is below a third of |cosine| at H = {_horizon_list(h[np.abs(cosine) > 3 * cosine_se])}. Both "
            f"means are resolved (relative s.e. < {RESOLVED_RELATIVE_SE}) at H = {_horizon_list(h[resolved])}; there "
            f"the estimators agree (cosine > 0.9 beyond 2 s.e.) at H = {_horizon_list(agree)} and disagree (cosine "
            f"< 0.5 beyond 2 s.e.) at H = {_horizon_list(disagree)}."
            + (f" Elsewhere {' and '.join(unresolved)}: a few heavy-tailed samples dominate such a mean, the jackknife "
               "s.e. can understate the cosine's spread, and the cosine is weak evidence even where its s.e. is small."
               if unresolved else "")
        )
    return findings


# ---------------------------------------------------------------------------------------------------- report
def _format(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def regenerate_command(exp_dir: Path) -> str:
    results = exp_dir.parent
    extra = "" if results == Path("results") else f" RESULTS={results}"
    return f"make experiment EXP={exp_dir.name}{extra}"


def physics_findings(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None = None) -> list[str]:
    """Statements comparing the presets of ``rows``, each computed from them: per policy and system (``info``, the
    study's ``config.json``, says each task's; the pendulum when it does not), the first-order variance at the
    largest horizon against that system's default physics (else its first preset) with its growth in H (the return's
    scale is each system's own, so variances are compared within a system only), and from which horizon on first
    order is no longer the lower-variance estimator."""
    info = info or {}
    groups: dict[str, list[str]] = {}
    for name in physics_presets(rows):
        groups.setdefault(task(info, name)["system"], []).append(name)
    findings = []
    for policy in _policies(rows):
        series = {}
        for physics in physics_presets(rows):
            chosen = preset_rows(rows, physics)
            h, var_fo = _series(chosen, policy, "first_order", "variance_total")
            _, var_lr = _series(chosen, policy, "likelihood_ratio", "variance_total")
            if len(h):
                series[physics] = (h, var_fo, var_lr)
        for system, group in groups.items():
            members = [p for p in group if p in series]
            reference = next((p for p in group if task(info, p)["preset"] == DEFAULT_PHYSICS), group[0])
            if reference not in series:
                continue
            last = {p: (series[p][0][-1], series[p][1][-1]) for p in members}
            if len(members) == 1:
                findings.append(
                    f"**{policy} policy, first-order variance on {reference}:** {last[reference][1]:.3g} at the "
                    f"largest horizon (H = {last[reference][0]}); log-log slope against H "
                    f"{_loglog_slope(*series[reference][:2]):.2f}."
                )
                continue
            ref_var = series[reference][1]
            order = sorted(members, key=lambda p: -last[p][1])
            findings.append(
                f"**{policy} policy, first-order variance across "
                + ("presets" if len(groups) == 1 else f"the {system}'s presets")
                + f":** at the largest horizon (H = {_horizon_list(sorted({int(hh) for hh, _ in last.values()}))}), "
                f"relative to {reference} ({ref_var[-1]:.3g}): "
                + ", ".join(f"{p} {last[p][1] / ref_var[-1]:.3g}x" for p in order)
                + ". Log-log slope of the variance against H: "
                + ", ".join(f"{p} {_loglog_slope(series[p][0], series[p][1]):.2f}" for p in order)
                + "."
            )
        crossings = []
        for physics, (h, var_fo, var_lr) in series.items():
            ratio = var_fo / var_lr
            tail = [i for i in range(len(h)) if (ratio[i:] >= 1).all()]
            if not tail:
                crossings.append(f"{physics}: below at H = {h[-1]} (ratio {ratio[-1]:.2g})")
            elif tail[0] == 0:
                crossings.append(f"{physics}: at or above at every H (ratio {ratio[0]:.2g} at H = {h[0]})")
            else:
                crossings.append(f"{physics}: from H = {h[tail[0]]} on (ratio {ratio[tail[0] - 1]:.2g} at "
                                 f"H = {h[tail[0] - 1]}, {ratio[tail[0]]:.2g} at H = {h[tail[0]]})")
        findings.append(
            f"**{policy} policy, where first order stops being the lower-variance estimator** (its variance at or "
            "above the zeroth-order one at that horizon and every larger one): " + "; ".join(crossings) + "."
        )
    return findings


def physics_tables(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per policy, one table of every preset at the horizons :func:`table_horizons` picks."""
    by_key = {(r["physics"], r["policy"], r["horizon"], r["estimator"]): r for r in rows}
    header = ("| physics | H | FO ‖mean‖ | FO variance | FO rel. s.e. | ZO ‖mean‖ | ZO variance | ZO rel. s.e. | "
              "FO / ZO variance | cosine ± s.e. | FO mean return |")
    lines = []
    for policy in _policies(rows):
        horizons = table_horizons([r["horizon"] for r in rows if r["policy"] == policy])
        lines += [f"### {policy} policy", "", header, "|" + "---|" * header.count(" | ") + "---|"]
        for physics in physics_presets(rows):
            for h in horizons:
                first = by_key.get((physics, policy, h, "first_order"))
                zeroth = by_key.get((physics, policy, h, "likelihood_ratio"))
                if first is None or zeroth is None:
                    continue
                cells = [physics, str(h), *(_format(r[key]) for r in (first, zeroth)
                                            for key in ("grad_norm", "variance_total", "relative_se")),
                         _format(first["variance_total"] / zeroth["variance_total"]),
                         f"{first['cosine']:.2f} ± {first['cosine_se']:.2f}", _format(first["return_mean"])]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _policy_lines(policies: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, policy in policies.items():
        training = policy.get("training_eval")
        lines.append(
            f"- **{name}**: {policy['source']}; {policy['parameters']} parameters; protocol evaluation (1000 fixed "
            f"starts, 200 steps, deterministic): return {policy['eval']['return_mean']:.1f} "
            f"(success rate {policy['eval']['success_rate']:.2f})"
            + (f"; training run's final evaluation: eval.return_mean = {training['return_mean']:.1f}" if training
               else "")
        )
    return lines


def study_report(exp_dir: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
                 ) -> str:
    """The text of ``REPORT.md``: ``info`` is the study's ``config.json``, ``rows`` its parsed CSV (on several
    presets: findings per preset and across them, per-preset tables and the cross-preset figures)."""
    config = info["config"]
    baseline = config["likelihood_ratio_baseline"]
    presets = physics_presets(rows)
    multi = len(presets) > 1
    tasks = {name: task(info, name) for name in presets}
    systems = list(dict.fromkeys(t["system"] for t in tasks.values()))
    pendulum = systems == [DEFAULT_SYSTEM]  # the pendulum alone: the text of the pendulum's studies
    where = (f"on each of {len(presets)} physics presets" if multi and pendulum else
             f"on each of {len(presets)} tasks ({', '.join(systems)})" if multi else
             "default physics" if presets == [DEFAULT_PHYSICS] else f"{presets[0]} physics")
    reset = ("Gymnasium's reset distribution" if pendulum else f"the {systems[0]}'s reset distribution"
             if len(systems) == 1 else "each system's reset distribution")
    if config.get("action_noise_scale", "absolute") == "max_action":
        sigma = (f"σ = {config['action_noise']} × each task's max action ("
                 + ", ".join(f"{name}: {t['sigma']:g}" for name, t in tasks.items()) + ")")
    else:
        sigma = (f"σ = {config['action_noise']} N m" if pendulum else f"σ = {config['action_noise']} in each "
                 "system's action units (N m for a torque, N for the cart-pole's force)")
    lines = [
        f"# Gradient study: {exp_dir.name}",
        "",
        config["description"],
        "",
        f"Regenerate with `{regenerate_command(exp_dir)}`: `python -m research.experiment {info['source']}"
        + ("" if exp_dir.parent == Path("results") else f" --results {exp_dir.parent}")
        + f"` measures (writes [{DATA}]({DATA}) and [{CONFIG}]({CONFIG}); this run took {info['wall_time_s']:.0f} s "
        f"on {info['device']}, git commit `{info.get('git_commit')}`"
        + (", `-dirty`: with uncommitted changes" if str(info.get("git_commit")).endswith("-dirty") else "")
        + f"), then `python scripts/gradient_report.py {exp_dir}` draws the figures and this report from those two "
        "files.",
        "",
        "## What was measured",
        "",
        f"For each policy and horizon H in {config['horizons']}, {config['samples']} independent samples (initial "
        f"state from {reset}, {where}, Gaussian action noise of std {sigma} added after the tanh squash) per "
        f"estimator, in {config['dtype']}, differentiated {config['chunk']} at a time and streamed into the statistics. Both estimators estimate the "
        "gradient of the same smoothed objective E[R_H], R_H the undiscounted H-step return:",
        "",
        "- **first order (BPTT)**: ∇θ R_H with a_t = μθ(s_t) + σ ε_t, differentiated through the policy and the "
        "simulator;",
        f"- **zeroth order (likelihood ratio, REINFORCE, `likelihood_ratio_baseline = \"{baseline}\"`)**: "
        f"{LR_BASELINE_FORMULAS.get(baseline, baseline)}.",
        "",
    ]
    if multi and not pendulum:
        lines += [
            "The tasks (`research/systems/`: a system and one of its physics presets each): initial states from the "
            "system's reset (in a wall's range where the pendulum has one), the per-episode parameters drawn once per "
            "sample where the preset has ranges, and the noise of the step (the pendulum's torque noise) drawn per "
            "sample and step where it has noise. The first-order estimator reparameterises that noise like the "
            "action noise; for the zeroth-order one it is environment noise (not in the score; the noise-free "
            "baseline rollout replays it). The presets of one system meet the same initial-state and action-noise "
            "draws (common random numbers), so differences between them are paired. Each system has its own cost, "
            "so its returns, norms and variances have their own scale: compare the estimators within a task (their "
            "variance ratio, the cosine), not one system's variance with another's.",
            "",
            *(f"- **{name}** ({t['system']}, {t['time_step']:g} s per step, σ = {t['sigma']:g}): "
              f"{t.get('description', '')}" for name, t in tasks.items()),
            "",
        ]
    elif multi:
        descriptions = info.get("physics", {})
        lines += [
            "The presets (`research/envs/presets.py`): initial states in a wall's range where there is one, the "
            "per-episode parameters drawn once per sample where the preset has ranges, and torque noise drawn per "
            "sample and step where it has noise. The first-order estimator reparameterises the torque noise like the "
            "action noise; for the zeroth-order one it is environment noise (not in the score; the noise-free "
            "baseline rollout replays it). Every preset meets the same initial-state and action-noise draws "
            "(common random numbers), so differences between presets are paired.",
            "",
            *(f"- **{name}**: {descriptions.get(name, {}).get('description', '')}" for name in presets),
            "",
        ]
    lines += [
        "Columns: `lr_baseline` = the zeroth-order estimator's variant; `grad_norm` = ‖mean gradient‖; "
        "`mean_sample_norm` / `median_sample_norm` = mean / median of the per-sample norms; `variance_mean` / "
        "`variance_total` = per-parameter variance across samples, averaged / summed (trace of the covariance) over "
        "the parameters; `relative_se` = √(variance_total / N) / grad_norm; `cosine` (± `cosine_se`, delete-a-group "
        f"jackknife over {info['jackknife_groups']} groups) = cosine between the two estimators' mean gradients "
        "(independent samples); `return_mean` = mean H-step return.",
        "",
        "Policies:",
        "",
    ]
    if not multi:
        lines += _policy_lines(info["policies"])
        lines += ["", "## Findings", "", *(f"- {f}" for f in study_findings(rows, config["samples"])), ""]
        table_columns = [c for c in columns if c != "physics"]
    else:
        by_physics = info.get("physics_policies", {})
        for name in presets:
            lines += [f"- on {name}:", *(f"  {line}" for line in _policy_lines(by_physics.get(name, {})))]
        lines += ["", "## Findings", "", f"### Across {'presets' if pendulum else 'tasks'}", "",
                  *(f"- {f}" for f in physics_findings(rows, info)), ""]
        for name in presets:
            figure_links = ", ".join(f"[{f.removesuffix('.png').replace('_', ' ')}](figures/{name}/{f})"
                                     for f in FIGURES)
            lines += [f"### {name}", "", *(f"- {f}" for f in study_findings(preset_rows(rows, name),
                                                                            config["samples"])),
                      f"- Figures: {figure_links}.", ""]
        lines += [f"## {'Presets' if pendulum else 'Tasks'} at a few horizons", "",
                  "FO = first order (BPTT), ZO = zeroth order (likelihood ratio); variance = trace of the per-sample "
                  "covariance; the cosine is between the two mean gradients.", "", *physics_tables(rows)]
        table_columns = list(columns)
    lines += ["## Results", "", "| " + " | ".join(table_columns) + " |", "|" + "---|" * len(table_columns)]
    lines += ["| " + " | ".join(_format(row[c]) for c in table_columns) + " |" for row in rows]
    lines += [
        "",
        f"Data: [{DATA}]({DATA}); configuration, versions and machine: [{CONFIG}]({CONFIG}).",
        "",
        "## Figures",
        "",
    ]
    if not multi:
        lines += [
            "![norm of the mean gradient and mean per-sample norm against the horizon](figures/gradient_norm.png)",
            "",
            "![variance and relative standard error against the horizon](figures/gradient_variance.png)",
            "",
            "![cosine between the estimators' mean gradients against the horizon](figures/cosine.png)",
            "",
        ]
    else:
        lines += [
            "![first-order variance and norm of the mean against the horizon, one line per preset]"
            "(figures/physics_first_order.png)",
            "",
            "![zeroth-order variance and norm of the mean against the horizon, one line per preset]"
            "(figures/physics_zeroth_order.png)",
            "",
            "![first-order / zeroth-order variance against the horizon, one line per preset]"
            "(figures/physics_variance_ratio.png)",
            "",
            "Each preset's own figures (norms, variances, cosine): `figures/<preset>/`, linked under its findings.",
            "",
        ]
    return "\n".join(lines)


def draw_figures(rows: Sequence[Mapping[str, Any]], figures: Path, samples: int,
                 info: Mapping[str, Any] | None = None) -> list[Path]:
    """Every figure of the report: :data:`FIGURES` in ``figures`` for one preset; for several, :data:`FIGURES` per
    preset in ``figures/<preset>/`` and :data:`PHYSICS_FIGURES` in ``figures``; the horizon axis in each task's time
    step (``info``, the study's ``config.json``: :func:`horizon_label`). Returns the paths written."""
    info = info or {}
    presets = physics_presets(rows)
    if len(presets) == 1:
        plot_study(rows, figures, samples, horizon_label(info, presets))
        return [figures / f for f in FIGURES]
    for name in presets:
        plot_study(preset_rows(rows, name), figures / name, samples, horizon_label(info, [name]))
    plot_physics(rows, figures, horizon_label(info, presets))
    return [figures / name / f for name in presets for f in FIGURES] + [figures / f for f in PHYSICS_FIGURES]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<gradient study>, e.g. results/gradient_study")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    columns, rows, info = load_study(exp_dir)
    written = draw_figures(rows, exp_dir / "figures", info["config"]["samples"], info)
    report = exp_dir / "REPORT.md"
    tmp = report.with_name(f".REPORT.{os.getpid()}.tmp.md")
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero median norm (every torque clipped) reads inf
        text = study_report(exp_dir, columns, rows, info)
    tmp.write_text(text)
    os.replace(tmp, report)
    names = ",".join(str(path.relative_to(exp_dir / "figures")) for path in written)
    print(f"wrote {exp_dir / 'figures'}/{{{names}}} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
