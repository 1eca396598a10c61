"""Learning curves of an experiment from its run directories: ``<exp>/figures/*.png``.

    python scripts/plot.py results/pendulum_compare

Two figures, one line per algorithm: the evaluation return (mean over seeds of each run's ``eval/return_mean``)
against environment steps (log scale) and against wall-clock seconds, with a 95% bootstrap confidence band over
seeds and each seed as a thin line. For the mean, each seed's curve is linearly interpolated (in log steps on the
log axis) onto a common grid; a seed that finished earlier keeps its final return. Dashed: the -200 threshold;
dotted: rl-baselines3-zoo's DDPG on Gymnasium Pendulum-v1.

With a physics axis (runs on several presets, ``experiment.physics``) each figure is a grid with one panel per preset,
the preset's dynamic-programming optimum dashed and the return at a normalized score of 0.9 dotted, and two heat maps
of preset x method from ``scripts/aggregate.py``'s rows: ``heatmap_normalized_score.png`` (mean final normalized
score, gap to the optimum in brackets) and ``heatmap_time_to_99.png`` (median env steps and training seconds to a
normalized score of 0.99, over the seeds that got there).

With rliable (:mod:`research.statistics`), two more figures over every task (preset or system): the performance
profile ``performance_profile.png`` (per method, the fraction of its runs whose final normalized score exceeds tau,
with a 95% stratified-bootstrap band; needs an optimum to normalize by) and ``probability_of_improvement.png``
(P(X > Y) that a run of X ends with a higher return than a run of Y on the same task, averaged over tasks, with a 95%
stratified-bootstrap interval: each backprop method against each model-free one, or every method against the best
one when only one family ran).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _rundata import (  # noqa: E402
    THRESHOLD,
    Run,
    bootstrap_ci,
    experiment_dir,
    group_by_algo,
    has_finished_runs,
    load_runs,
    physics_axis,
)
from aggregate import (  # noqa: E402
    Optima,
    best_methods,
    load_optima,
    optimal_summary_path,
    return_at_score,
    score_table,
    score_tables,
    summary_rows,
)

from research.statistics import (  # noqa: E402
    FAILURE_SCORE,
    SCORE_TARGET,
    is_backprop,
    performance_profile,
    probability_of_improvement,
)

ZOO_DDPG_RETURN = -152.1
"""rl-baselines3-zoo benchmark: DDPG on Pendulum-v1 after 20k steps, one trained agent (docs/protocol.md)."""
GRID_POINTS = 200
BAND_RESAMPLES = 2_000
FIGURES = {
    "env_steps": ("return_vs_env_steps.png", "environment steps (log scale)", True),
    "wall_time_s": ("return_vs_wall_time.png", "training wall-clock time (s, evaluations excluded)", False),
}
HEATMAPS = ("heatmap_normalized_score.png", "heatmap_time_to_99.png")
PANEL_COLUMNS = 3
STAT_FIGURES = ("performance_profile.png", "probability_of_improvement.png")
PROFILE_POINTS = 101
"""Values of tau in the performance profile, evenly spread over the range of the scores."""


def seed_curves(runs: list[Run], x: str, log_x: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each run's evaluations ``(x, return)`` sorted by x (positive x only on a log axis); runs without any dropped."""
    curves = []
    for run in runs:
        xs, ys = run.eval_curve(x)
        keep = xs > 0 if log_x else np.ones_like(xs, dtype=bool)
        order = np.argsort(xs[keep], kind="stable")
        if order.size:
            curves.append((xs[keep][order], ys[keep][order]))
    return curves


def mean_curve(runs: list[Run], x: str, log_x: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, mean, ci_low, ci_high)`` of the evaluation return over ``runs`` (seeds), each ``[G]``.

    The grid spans every run's x-range; a run that ended earlier keeps its final return (and one that starts
    later its first). Interpolation is linear in x, or in log x on a log axis. ``G`` is 0 when no run has a point.
    """
    curves = seed_curves(runs, x, log_x)
    if not curves:
        return (np.array([]),) * 4
    start = min(xs[0] for xs, _ in curves)
    stop = max(xs[-1] for xs, _ in curves)
    if log_x:
        grid = np.geomspace(start, stop, GRID_POINTS) if stop > start else np.array([start])
        values = np.stack([np.interp(np.log(grid), np.log(xs), ys) for xs, ys in curves])
    else:
        grid = np.linspace(start, stop, GRID_POINTS) if stop > start else np.array([start])
        values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    low, high = bootstrap_ci(values, resamples=BAND_RESAMPLES)
    return grid, values.mean(axis=0), low, high


def eval_episodes(runs: list[Run]) -> int | None:
    counts = {run.config["config"].get("eval", {}).get("episodes") for run in runs}
    return counts.pop() if len(counts) == 1 else None


def _draw_algorithms(ax: plt.Axes, runs: list[Run], x: str, log_x: bool, colors: dict[str, tuple]) -> None:
    """Mean curve (with its band) and seed curves of every algorithm among ``runs`` on one axis."""
    for algo, group in group_by_algo(runs).items():
        grid, mean, low, high = mean_curve(group, x, log_x)
        if grid.size == 0:
            continue
        color = colors[algo]
        for xs, ys in seed_curves(group, x, log_x):
            ax.plot(xs, ys, color=color, lw=0.6, alpha=0.35)
        ax.plot(grid, mean, color=color, lw=2, label=f"{algo} (mean of {len(group)} seeds; thin: each seed)")
        if len(group) > 1:
            ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)


def algorithm_colors(runs: list[Run]) -> dict[str, tuple]:
    """One tab10 colour per algorithm, in the order the algorithms first come (the same in every panel)."""
    palette = plt.get_cmap("tab10").colors
    return {algo: palette[i % len(palette)] for i, algo in enumerate(dict.fromkeys(run.algo for run in runs))}


def plot_returns(runs: list[Run], x: str, path: Path, title: str, threshold: float = THRESHOLD,
                 reference: bool = True, optima: Optima | None = None) -> None:
    """One figure: the evaluation return of every algorithm against ``x`` (a metrics column); with runs on several
    presets, one panel per preset (:func:`plot_returns_by_physics`)."""
    if physics_axis(runs):
        plot_returns_by_physics(runs, x, path, title, optima or {})
        return
    _, xlabel, log_x = FIGURES[x]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=150)
    _draw_algorithms(ax, runs, x, log_x, algorithm_colors(runs))
    ax.axhline(threshold, color="0.4", ls="--", lw=1, label=f"threshold {threshold:g}")
    if reference:
        ax.axhline(ZOO_DDPG_RETURN, color="0.4", ls=":", lw=1.2, label=f"rl-zoo DDPG, 20k steps ({ZOO_DDPG_RETURN:g})")
    if log_x:
        ax.set_xscale("log")
    episodes = eval_episodes(runs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("evaluation return" + (f" (mean of {episodes} episodes)" if episodes else ""))
    ax.set_title(f"{title}: mean over seeds, shaded 95% bootstrap CI", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_returns_by_physics(runs: list[Run], x: str, path: Path, title: str, optima: Optima) -> None:
    """A grid of panels, one per preset: every algorithm's evaluation return against ``x``, with the preset's
    optimum (dashed) and the return at a normalized score of 0.9 (dotted) when ``optima`` has it."""
    _, xlabel, log_x = FIGURES[x]
    presets = physics_axis(runs)
    colors = algorithm_colors(runs)
    rows = -(-len(presets) // PANEL_COLUMNS)
    fig, axes = plt.subplots(rows, PANEL_COLUMNS, figsize=(4.2 * PANEL_COLUMNS, 3.3 * rows), dpi=130, squeeze=False)
    for ax, physics in zip(axes.flat, presets, strict=False):  # the grid may have spare panels
        group = [run for run in runs if run.physics == physics]
        _draw_algorithms(ax, group, x, log_x, colors)
        if physics in optima:
            best, zero = optima[physics]
            ax.axhline(best, color="0.2", ls="--", lw=1)
            ax.axhline(return_at_score(physics, optima), color="0.4", ls=":", lw=1)
            low, high = ax.get_ylim()
            ax.set_ylim(max(zero, min(low, best - 400)), max(high, best + 0.02 * (best - zero)))
        if log_x:
            ax.set_xscale("log")
        ax.set_title(physics, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[len(presets):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("evaluation return", fontsize=8)
    handles = [plt.Line2D([], [], color=color, lw=2, label=algo) for algo, color in colors.items()]
    handles += [plt.Line2D([], [], color="0.2", ls="--", lw=1, label="DP optimum"),
                plt.Line2D([], [], color="0.4", ls=":", lw=1, label="normalized score 0.9")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: mean over seeds (thin: each seed), shaded 95% bootstrap CI", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)


def _heatmap(ax: plt.Axes, values: np.ndarray, labels: list[list[str]], presets: list[str], algos: list[str],
             title: str, cmap: str, log: bool = False) -> None:
    """``values[physics, algo]`` as a heat map with ``labels`` written in the cells (NaN cells grey)."""
    shown = np.log10(values) if log else values
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=plt.get_cmap(cmap).with_extremes(bad="0.85"), aspect="auto")
    ax.set_xticks(range(len(algos)), algos)
    ax.set_yticks(range(len(presets)), presets)
    finite = shown[np.isfinite(shown)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(presets)):
        for j in range(len(algos)):
            dark = np.isfinite(shown[i, j]) and (shown[i, j] < middle) == (cmap.endswith("_r") is False)
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    colorbar = plt.colorbar(image, ax=ax, fraction=0.05)
    if log:
        colorbar.set_label("log10", fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_heatmaps(rows: list[dict], directory: Path, title: str) -> list[Path]:
    """The two heat maps of preset x method from :func:`aggregate.summary_rows` rows; returns the paths written."""
    presets = list(dict.fromkeys(row["physics"] for row in rows))
    algos = list(dict.fromkeys(row["algo"] for row in rows))
    cell = {(row["physics"], row["algo"]): row for row in rows}

    def table(key: str) -> np.ndarray:
        return np.array([[float(cell[(p, a)][key]) if (p, a) in cell else np.nan for a in algos] for p in presets])

    score, gap = table("normalized_score"), table("gap_to_optimum")
    labels = [[f"{score[i, j]:.3f}\n({gap[i, j]:.1f})" if np.isfinite(score[i, j]) else "n/a"
               for j in range(len(algos))] for i in range(len(presets))]
    fig, ax = plt.subplots(figsize=(1.6 * len(algos) + 2.5, 0.55 * len(presets) + 1.5), dpi=150)
    _heatmap(ax, score, labels, presets, algos, f"{title}: normalized score (gap to optimum)", "viridis")
    fig.tight_layout()
    paths = [directory / HEATMAPS[0]]
    fig.savefig(paths[0])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.6 * len(algos) + 2.5), 0.55 * len(presets) + 1.5), dpi=150)
    n_seeds = table("n_seeds")
    for ax, key, unit, fmt in ((axes[0], "env_steps_to_99", "env steps", "{:.3g}"),
                               (axes[1], "wall_time_s_to_99", "training seconds", "{:.3g} s")):
        values, reached = table(key), table("seeds_reaching_99")
        labels = [[(fmt.format(values[i, j]) + f"\n{reached[i, j]:.0f}/{n_seeds[i, j]:.0f}") if np.isfinite(values[i, j])
                   else "never" for j in range(len(algos))] for i in range(len(presets))]
        _heatmap(ax, values, labels, presets, algos, f"{unit} to a normalized score of 0.99 (median; seeds there)",
                 "magma_r", log=True)
    fig.tight_layout()
    paths.append(directory / HEATMAPS[1])
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def plot_performance_profile(runs: list[Run], optima: Optima, path: Path, title: str) -> bool:
    """The performance profile of every method with a normalized score (all its tasks pooled); ``False`` (nothing
    written) when no run has one."""
    tables = score_tables(runs, optima)
    if not tables:
        return False
    scores = {algo: score_table(per_task, list(per_task)) for algo, per_task in tables.items()}
    values = np.concatenate([table.ravel() for table in scores.values()])
    pad = 0.05 * (values.max() - values.min()) or 0.005
    taus = np.linspace(values.min() - pad, values.max() + pad, PROFILE_POINTS)
    profiles = performance_profile(scores, taus)
    colors = algorithm_colors(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=150)
    for algo, (profile, low, high) in profiles.items():
        runs_n, tasks_n = scores[algo].shape
        ax.step(taus, profile, where="post", color=colors[algo], lw=2, label=f"{algo} ({runs_n} runs x {tasks_n} tasks)")
        ax.fill_between(taus, low, high, step="post", color=colors[algo], alpha=0.15, lw=0)
    for mark, style, name in ((FAILURE_SCORE, "--", "failure threshold"), (SCORE_TARGET, ":", "target")):
        if taus[0] <= mark <= taus[-1]:
            ax.axvline(mark, color="0.4", ls=style, lw=1, label=f"{name} {mark:g}")
    ax.set_xlabel("normalized score tau (0: never acting, 1: the optimum)")
    ax.set_ylabel("fraction of runs with final score > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{title}: performance profiles, shaded 95% stratified-bootstrap band", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def improvement_pairs(runs: list[Run], optima: Optima) -> list[tuple[str, str]]:
    """``(X, Y)`` pairs to compare: each backprop method against each model-free one when both families ran,
    otherwise every method against the best one (the most frequent best by IQM final return over the tasks)."""
    algos = list(dict.fromkeys(run.algo for run in runs))
    backprop = [a for a in algos if is_backprop(a)]
    model_free = [a for a in algos if not is_backprop(a)]
    if backprop and model_free:
        return [(x, y) for x in backprop for y in model_free]
    bests = [algo for algo, _ in best_methods(runs, optima).values()]
    best = max(dict.fromkeys(bests), key=bests.count) if bests else ""
    return [(best, algo) for algo in algos if algo != best]


def plot_probability_of_improvement(runs: list[Run], optima: Optima, path: Path, title: str) -> bool:
    """P(X > Y) with its interval for :func:`improvement_pairs`, on final returns per task (the probability only
    compares runs of one task, so no optimum is needed), over the tasks both ran; ``False`` when no pair has one."""
    finals: dict[str, dict[str, np.ndarray]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        finals.setdefault(run.algo, {}).setdefault(run.physics, []).append(run.final_return)
    finals = {algo: {task: np.array(v) for task, v in per_task.items()} for algo, per_task in finals.items()}
    results = []
    for x, y in improvement_pairs(runs, optima):
        tasks = [task for task in finals[x] if task in finals[y]]
        if tasks:
            results.append((x, y, len(tasks), probability_of_improvement(score_table(finals[x], tasks),
                                                                         score_table(finals[y], tasks))))
    if not results:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(results) + 1.6), dpi=150)
    for i, (_, _, _, (point, low, high)) in enumerate(results):
        ax.errorbar(point, i, xerr=[[point - low], [high - point]], fmt="o", color="C0", capsize=3)
    ax.set_yticks(range(len(results)), [f"P({x} > {y})" for x, y, _, _ in results], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="0.4", ls="--", lw=1)
    ax.set_xlim(-0.02, 1.02)
    tasks = max(n for _, _, n, _ in results)
    ax.set_xlabel(f"probability that a run of X ends above a run of Y (mean over {tasks} task(s); 95% CI)")
    ax.set_title(f"{title}: probability of improvement (final return)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="return drawn as a dashed line")
    parser.add_argument("--no-reference", action="store_true", help="leave out the rl-zoo DDPG line")
    parser.add_argument("--optimal", type=Path, default=None,
                        help="the yardstick's summary.csv (default: <results>/optimal/summary.csv)")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    if not has_finished_runs(exp_dir):
        print(f"{exp_dir}: no finished training runs ([<physics>/]<algo>/seed_<k>/summary.json); nothing to plot")
        return 0
    runs = load_runs(exp_dir)
    figures = exp_dir / "figures"
    figures.mkdir(exist_ok=True)
    optima = load_optima(args.optimal or optimal_summary_path(exp_dir))
    for x, (name, _, _) in FIGURES.items():
        plot_returns(runs, x, figures / name, exp_dir.name, args.threshold, not args.no_reference, optima)
        print(f"wrote {figures / name}")
    if physics_axis(runs):
        for path in plot_heatmaps(summary_rows(runs, args.threshold, optima), figures, exp_dir.name):
            print(f"wrote {path}")
    for name, draw in zip(STAT_FIGURES, (plot_performance_profile, plot_probability_of_improvement), strict=True):
        if draw(runs, optima, figures / name, exp_dir.name):
            print(f"wrote {figures / name}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as error:  # rliable missing: research.statistics names the install command
        sys.exit(f"error: {error}")
