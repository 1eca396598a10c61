"""Learning curves of an experiment from its run directories: ``<exp>/figures/*.png``.

    python scripts/plot.py results/pendulum_compare

Two figures, one line per algorithm: the evaluation return (mean over seeds of each run's ``eval/return_mean``)
against environment steps (log scale) and against wall-clock seconds, with a 95% bootstrap confidence band over
seeds and each seed as a thin line. For the mean, each seed's curve is linearly interpolated (in log steps on the
log axis) onto a common grid; a seed that finished earlier keeps its final return. Dashed: the -200 threshold;
dotted: rl-baselines3-zoo's DDPG on Gymnasium Pendulum-v1.
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
from _rundata import THRESHOLD, Run, bootstrap_ci, experiment_dir, group_by_algo, has_finished_runs, load_runs  # noqa: E402

ZOO_DDPG_RETURN = -152.1
"""rl-baselines3-zoo benchmark: DDPG on Pendulum-v1 after 20k steps, one trained agent (docs/protocol.md)."""
GRID_POINTS = 200
BAND_RESAMPLES = 2_000
FIGURES = {
    "env_steps": ("return_vs_env_steps.png", "environment steps (log scale)", True),
    "wall_time_s": ("return_vs_wall_time.png", "training wall-clock time (s, evaluations excluded)", False),
}


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


def plot_returns(runs: list[Run], x: str, path: Path, title: str, threshold: float = THRESHOLD,
                 reference: bool = True) -> None:
    """One figure: the evaluation return of every algorithm against ``x`` (a metrics column)."""
    _, xlabel, log_x = FIGURES[x]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=150)
    colors = plt.get_cmap("tab10").colors
    for i, (algo, group) in enumerate(group_by_algo(runs).items()):
        grid, mean, low, high = mean_curve(group, x, log_x)
        if grid.size == 0:
            continue
        color = colors[i % len(colors)]
        for xs, ys in seed_curves(group, x, log_x):
            ax.plot(xs, ys, color=color, lw=0.6, alpha=0.35)
        ax.plot(grid, mean, color=color, lw=2, label=f"{algo} (mean of {len(group)} seeds; thin: each seed)")
        if len(group) > 1:
            ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="return drawn as a dashed line")
    parser.add_argument("--no-reference", action="store_true", help="leave out the rl-zoo DDPG line")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    if not has_finished_runs(exp_dir):
        print(f"{exp_dir}: no finished training runs (*/seed_*/summary.json); nothing to plot")
        return 0
    runs = load_runs(exp_dir)
    figures = exp_dir / "figures"
    figures.mkdir(exist_ok=True)
    for x, (name, _, _) in FIGURES.items():
        plot_returns(runs, x, figures / name, exp_dir.name, args.threshold, not args.no_reference)
        print(f"wrote {figures / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
