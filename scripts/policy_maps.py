"""Policy, value and gap maps of an experiment's policies over the state space: ``<exp>/figures/*_map.png``.

    python scripts/policy_maps.py results/pendulum_compare

Reads the run directories' ``policy.pt`` (per algorithm the seed with the median final return, as
``python -m research.render``) and, when :mod:`research.optimal` is in the checkout, solves the dynamic-programming
reference (its default grid). Three figures, one panel per method, the optimum last:

- ``policy_map.png``: the torque each policy chooses at every ``(th, thdot)`` as a heat map, with the closed-loop
  trajectories from a few evaluation starts drawn over it (a phase portrait; o: start, x: end after 200 steps);
- ``value_map.png``: each policy's 200-step return from every state (the value of that policy, by simulation) and
  the DP value ``V_0``, with the same trajectories. The runs save no learned critic (only ``policy.pt``), so no
  critic's estimate is drawn; the figure says so;
- ``gap_map.png``: the 1000 evaluation starts coloured by how much return each method loses there against the DP
  policy's rollout from the same start (without :mod:`research.optimal`: against the best of the methods at each
  start, said in the title).

It also writes ``figures/policy_maps.md``, the section ``scripts/report.py`` puts into ``REPORT.md`` (captions with
the seeds and numbers, and the animations of ``media/index.json`` when ``make render`` wrote them). Rerunning on the
same runs rewrites the same figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from research.envs.physics import MAX_SPEED, MAX_TORQUE, PendulumParams, observation  # noqa: E402
from research.evaluation import EVAL_HORIZON, evaluation_states  # noqa: E402
from research.render import (  # noqa: E402
    OPTIMAL_COLOR,
    OPTIMAL_NAME,
    Controller,
    closed_loop,
    experiment_controllers,
    nearest_starts,
    optimal_available,
    optimal_solution,
    per_start_returns,
)
from research.rollout import simulate  # noqa: E402

FRAGMENT = "policy_maps.md"
FIGURES = ("policy_map.png", "value_map.png", "gap_map.png")
#: Phase-portrait starts: the evaluation starts nearest to these ``(th, thdot)`` (hanging down, and four around).
PORTRAIT_TARGETS = ((math.pi, 0.0), (2.0, 0.8), (-2.0, -0.8), (1.0, -0.9), (-0.6, 0.9))
SEED_RULES = {"median": "the seed with the median final return", "best": "the seed with the best final return",
              "worst": "the seed with the worst final return"}
GAP_TOLERANCE = 10.0
"""A start 'loses return' when its gap to the reference exceeds this (5% of a typical swing-up's -200)."""


# ---------------------------------------------------------------------------------------------------- computing
def state_grid(n_th: int, n_thdot: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres over ``th in [-pi, pi)`` and ``thdot in [-8, 8]``: ``th [n_th]``, ``thdot [n_thdot]``."""
    th = -math.pi + (np.arange(n_th) + 0.5) * (2 * math.pi / n_th)
    thdot = -MAX_SPEED + (np.arange(n_thdot) + 0.5) * (2 * MAX_SPEED / n_thdot)
    return th, thdot


def _mesh(th: np.ndarray, thdot: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ``[n_thdot * n_th]`` float32 states, rows = thdot (the image's y), columns = th."""
    tt, vv = np.meshgrid(th, thdot)
    return torch.tensor(tt.ravel(), dtype=torch.float32), torch.tensor(vv.ravel(), dtype=torch.float32)


@torch.no_grad()
def torque_map(controller: Controller, th: np.ndarray, thdot: np.ndarray) -> np.ndarray:
    """``[n_thdot, n_th]``: the torque the policy applies at each state (clipped as the physics clips it)."""
    t, v = _mesh(th, thdot)
    u = controller.policy(observation(t, v))[..., 0].to(torch.float64).clamp(-MAX_TORQUE, MAX_TORQUE)
    return u.numpy().reshape(len(thdot), len(th))


@torch.no_grad()
def return_map(controller: Controller, th: np.ndarray, thdot: np.ndarray, horizon: int = EVAL_HORIZON) -> np.ndarray:
    """``[n_thdot, n_th]``: the policy's undiscounted ``horizon``-step return from each state (its value, simulated)."""
    t, v = _mesh(th, thdot)
    policy = controller.policy

    def call(obs: torch.Tensor) -> torch.Tensor:
        return policy(obs).to(obs.dtype)

    returns = simulate(call, torch.stack((t, v), -1), PendulumParams.default(t.shape), horizon).returns
    return returns.double().numpy().reshape(len(thdot), len(th))


def portrait_starts(th0: np.ndarray, thdot0: np.ndarray) -> list[int]:
    """Indices of the evaluation starts nearest to :data:`PORTRAIT_TARGETS` (angle distance wraps around)."""
    return nearest_starts(th0, thdot0, PORTRAIT_TARGETS)


def portraits(controller: Controller, th0: np.ndarray, thdot0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(th [S, T + 1], thdot [S, T + 1])`` closed-loop from the given starts, ``th`` wrapped to ``[-pi, pi)``."""
    th, thdot, _, _ = closed_loop(controller.policy, torch.tensor(th0, dtype=torch.float32),
                                  torch.tensor(thdot0, dtype=torch.float32))
    return th.double().numpy(), thdot.double().numpy()


# ---------------------------------------------------------------------------------------------------- drawing
def _panels(n: int, width: float = 3.4, height: float = 3.3) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(1, n, figsize=(width * n + 0.9, height), dpi=110, sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    return fig, axes[0]


def _axes_style(ax: plt.Axes, first: bool) -> None:
    ax.set_xlim(-math.pi, math.pi)
    ax.set_ylim(-MAX_SPEED, MAX_SPEED)
    ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["-π", "-π/2", "0", "π/2", "π"])
    ax.set_xlabel("th (rad, 0 = upright)")
    if first:
        ax.set_ylabel("thdot (rad/s)")


def _draw_portraits(ax: plt.Axes, th: np.ndarray, thdot: np.ndarray) -> None:
    """Trajectories as lines broken where ``th`` wraps; o at the start, x at the end."""
    stroke = [pe.Stroke(linewidth=2.6, foreground="white"), pe.Normal()]
    for a, v in zip(th, thdot, strict=True):
        jumps = np.flatnonzero(np.abs(np.diff(a)) > math.pi) + 1
        for seg_a, seg_v in zip(np.split(a, jumps), np.split(v, jumps), strict=True):
            ax.plot(seg_a, seg_v, color="black", lw=1.1, path_effects=stroke)
        ax.plot(a[0], v[0], "o", ms=5, mfc="white", mec="black", mew=1.2)
        ax.plot(a[-1], v[-1], "x", ms=6, color="black", mew=1.6, path_effects=stroke)


def _image(ax: plt.Axes, values: np.ndarray, th: np.ndarray, thdot: np.ndarray, **kwargs):
    dth, dv = th[1] - th[0] if th.size > 1 else 2 * math.pi, thdot[1] - thdot[0] if thdot.size > 1 else 2 * MAX_SPEED
    extent = (th[0] - dth / 2, th[-1] + dth / 2, thdot[0] - dv / 2, thdot[-1] + dv / 2)
    return ax.imshow(values, origin="lower", extent=extent, aspect="auto", interpolation="nearest", **kwargs)


def _label(c: Controller) -> str:
    return c.name if c.seed is None else f"{c.name} (seed {c.seed})"


def plot_policy_map(path: Path, controllers: Sequence[Controller], maps: Sequence[np.ndarray],
                    trajs: Sequence[tuple[np.ndarray, np.ndarray]], th: np.ndarray, thdot: np.ndarray,
                    title: str) -> None:
    fig, axes = _panels(len(controllers))
    for i, (ax, c, values, (a, v)) in enumerate(zip(axes, controllers, maps, trajs, strict=True)):
        image = _image(ax, values, th, thdot, cmap="RdBu_r", vmin=-MAX_TORQUE, vmax=MAX_TORQUE)
        _draw_portraits(ax, a, v)
        ax.set_title(_label(c), fontsize=10, color=c.color)
        _axes_style(ax, i == 0)
    fig.colorbar(image, ax=list(axes), shrink=0.9, label="torque (N m; + = counter-clockwise)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def plot_value_map(path: Path, controllers: Sequence[Controller], maps: Sequence[tuple[np.ndarray, np.ndarray,
                   np.ndarray]], trajs: Sequence[tuple[np.ndarray, np.ndarray]], titles: Sequence[str],
                   title: str) -> None:
    fig, axes = _panels(len(controllers))
    low = min(float(np.min(m)) for m, _, _ in maps)
    for i, (ax, c, (values, th, thdot), (a, v), name) in enumerate(
            zip(axes, controllers, maps, trajs, titles, strict=True)):
        image = _image(ax, values, th, thdot, cmap="viridis", vmin=low, vmax=0.0)
        _draw_portraits(ax, a, v)
        ax.set_title(name, fontsize=9, color=c.color)
        _axes_style(ax, i == 0)
    fig.colorbar(image, ax=list(axes), shrink=0.9, label="return over the next 200 steps")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def plot_gap_map(path: Path, controllers: Sequence[Controller], gaps: np.ndarray, th0: np.ndarray,
                 thdot0: np.ndarray, title: str) -> None:
    fig, axes = _panels(len(controllers))
    top = max(float(np.quantile(np.clip(gaps, 0, None), 0.99)), GAP_TOLERANCE)
    for i, (ax, c, gap) in enumerate(zip(axes, controllers, gaps, strict=True)):
        order = np.argsort(gap, kind="stable")  # largest gaps drawn last, on top
        points = ax.scatter(th0[order], thdot0[order], c=np.clip(gap[order], 0, None), s=9, cmap="magma_r", vmin=0,
                            vmax=top, edgecolors="none")
        lost = int((gap > GAP_TOLERANCE).sum())
        ax.set_title(f"{_label(c)}\nmean gap {gap.mean():.1f}, {lost}/{gap.size} starts > {GAP_TOLERANCE:g}",
                     fontsize=9, color=c.color)
        ax.set_xlim(-math.pi, math.pi)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["-π", "-π/2", "0", "π/2", "π"])
        ax.set_xlabel("starting th (rad)")
        if i == 0:
            ax.set_ylabel("starting thdot (rad/s)")
    fig.colorbar(points, ax=list(axes), shrink=0.9, extend="max", label="return lost at this start (clipped at 0)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- the report section
def fragment(exp_dir: Path, controllers: Sequence[Controller], gaps: np.ndarray, reference: str, returns: np.ndarray,
             ref_returns: np.ndarray, th0: np.ndarray, thdot0: np.ndarray, has_optimal: bool, critic_note: str,
             starts: Sequence[int], seed: str | int = "median") -> str:
    learned = [c for c in controllers if c.seed is not None]
    seeds = ", ".join(f"`{c.name}` seed {c.seed} (final return {c.final_return:.1f})" for c in learned)
    lines = ["## Policy maps", ""]
    if not has_optimal:
        why = "was left out (`--no-optimal`)" if optimal_available() else "is not in this checkout"
        lines += [f"`research.optimal` (the dynamic-programming reference) {why}: the maps show the learned policies "
                  "only, and the gaps are measured against the best of them at each start.", ""]
    lines += [
        "![torque over the state space, with closed-loop trajectories](figures/policy_map.png)", "",
        f"Torque chosen at each state (th, thdot) by one run per method, {SEED_RULES.get(seed, 'the seed chosen')}: {seeds}"
        + ("; last panel: the DP optimum's stationary greedy policy. " if has_optimal else ". ")
        + f"Black: the closed-loop trajectories from evaluation starts {', '.join(map(str, starts))} (o start, x after "
        "200 steps); th is wrapped to [-π, π), so a trajectory that goes over the top leaves one side and comes back "
        "on the other.", "",
        "![value over the state space](figures/value_map.png)", "",
        "Each policy's return over 200 steps from every state (simulated from each cell's centre)"
        + (", and the DP's optimal value V_0 (last panel)" if has_optimal else "")
        + f"; one colour scale for all panels. {critic_note}", "",
        "![return lost at each evaluation start](figures/gap_map.png)", "",
        f"Each of the 1000 evaluation starts, coloured by the return the method loses there against {reference} "
        f"(negative gaps drawn as 0). A start counts as lost when the gap exceeds {GAP_TOLERANCE:g}.", "",
    ]
    header = ["method", "mean return", f"mean gap to {'DP' if has_optimal else 'best'}", "median gap",
              f"starts with gap > {GAP_TOLERANCE:g}", "worst start (index: th, thdot, gap)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c, gap, ret in zip(controllers, gaps, returns, strict=True):
        worst = int(np.argmax(gap))
        lines.append(f"| `{_label(c)}` | {ret.mean():.1f} | {gap.mean():.1f} | {np.median(gap):.1f} | "
                     f"{int((gap > GAP_TOLERANCE).sum())} | {worst}: {th0[worst]:+.2f}, {thdot0[worst]:+.2f}, "
                     f"{gap[worst]:.1f} |")
    lines += ["", f"Reference mean return over the same starts: {ref_returns.mean():.1f} ({reference}).", ""]
    index = exp_dir / "media" / "index.json"
    if index.is_file():
        media = json.loads(index.read_text())
        lines += ["### Animations", "", "`make render` (`python -m research.render`): the pendulums of the methods side "
                  "by side from one evaluation start, in real time (20 frames per second, one per 0.05 s step), with "
                  "each one's torque and running return.", ""]
        for entry in media.get("animations", []):
            returns_text = ", ".join(f"{k} {v:.1f}" for k, v in entry["returns"].items())
            lines += [f"![{entry['role']}: start {entry['start_index']}](media/{entry['file']})", "",
                      f"`{entry['role']}`: evaluation start {entry['start_index']} (th = {entry['th0']:+.2f}, thdot = "
                      f"{entry['thdot0']:+.2f}); returns: {returns_text}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def critic_note(exp_dir: Path, controllers: Sequence[Controller]) -> str:
    algos = [c.name for c in controllers if c.seed is not None]
    saved = sorted({p.parent.parent.name for p in exp_dir.glob("*/seed_*/critic.pt")})
    if "shac" in algos and "shac" not in saved:
        return ("SHAC learns a critic but its runs save only `policy.pt`, so the critic's estimate is not shown; the "
                "SHAC panel is the value of its policy, by simulation.")
    if saved:
        return f"Saved critics ({', '.join(saved)}: `critic.pt`) are not drawn here."
    return "No run saves a learned critic; every panel is computed from the policies (and the DP)."


def runs_directory(exp_dir: Path) -> tuple[Path, str]:
    """Where the mapped runs lie, and a note for the report: ``exp_dir`` itself, or with a physics axis
    (``<exp>/<physics>/<algo>/seed_<k>``) its ``default/`` preset, since the maps and the DP reference here are of
    default physics."""
    if not any(exp_dir.glob("*/seed_*")) and any((exp_dir / "default").glob("*/seed_*")):
        return exp_dir / "default", ("The runs span several physics presets; these maps are of the `default` preset's "
                                     "runs only (the maps, their rollouts and the DP reference are of default physics).")
    return exp_dir, ""


def make_maps(exp_dir: Path, grid: int = 101, value_grid: int = 61, seed: str | int = "median",
              optimal: bool = True, num_episodes: int = 1000) -> list[Path]:
    runs_dir, scope = runs_directory(exp_dir)
    controllers = experiment_controllers(runs_dir, seed)
    if not controllers:
        print(f"{exp_dir}: no finished run with a policy.pt; no maps")
        return []
    solution = optimal_solution() if optimal else None
    if solution is not None:
        controllers.append(Controller(OPTIMAL_NAME, OPTIMAL_COLOR, solution.policy))
    figures = exp_dir / "figures"
    figures.mkdir(exist_ok=True)
    th0_all, thdot0_all = (x.double().numpy() for x in evaluation_states(num_episodes).unbind(-1))
    starts = portrait_starts(th0_all, thdot0_all)
    trajs = [portraits(c, th0_all[starts], thdot0_all[starts]) for c in controllers]
    th, thdot = state_grid(grid, grid)
    tag = exp_dir.name

    plot_policy_map(figures / FIGURES[0], controllers, [torque_map(c, th, thdot) for c in controllers], trajs, th,
                    thdot, f"{tag}: torque over the state space, closed-loop trajectories from {len(starts)} starts")

    vth, vthdot = state_grid(value_grid, value_grid)
    values, titles = [], []
    for c in controllers:
        if c.seed is None and solution is not None:
            values.append((solution.value(0).double().cpu().numpy().T, solution.th_grid.double().cpu().numpy(),
                           solution.thdot_grid.double().cpu().numpy()))
            titles.append(f"{OPTIMAL_NAME}: V_0 ({len(solution.th_grid)}x{len(solution.thdot_grid)} grid)")
        else:
            values.append((return_map(c, vth, vthdot), vth, vthdot))
            titles.append(f"{_label(c)}: its 200-step return")
    note = critic_note(runs_dir, controllers)
    saved_critic = any(runs_dir.glob("*/seed_*/critic.pt"))
    plot_value_map(figures / FIGURES[1], controllers, values, trajs, titles, f"{tag}: value over the state space"
                   + ("" if saved_critic else " (no run saves a learned critic: each policy's value is simulated)"))

    th0_t, thdot0_t = evaluation_states(num_episodes).unbind(-1)
    returns = per_start_returns(controllers, num_episodes)
    if solution is not None:
        with torch.no_grad():
            ref = solution.rollout(th0_t, thdot0_t).double().cpu().numpy()
        reference = "the DP's time-varying greedy policy rolled out from the same start"
    else:
        ref = returns.max(axis=0)
        reference = "the best of the learned methods at that start"
    if solution is not None:  # the DP is the reference: its own panel would be (nearly) zero everywhere
        controllers, returns = controllers[:-1], returns[:-1]
    gaps = ref[None, :] - returns
    plot_gap_map(figures / FIGURES[2], controllers, gaps, th0_all, thdot0_all,
                 f"{tag}: return lost at each of the {num_episodes} evaluation starts, against {reference}")
    text = fragment(exp_dir, controllers, gaps, reference, returns, ref, th0_all, thdot0_all, solution is not None,
                    note, starts, seed)
    if scope:
        text = text.replace("## Policy maps\n\n", f"## Policy maps\n\n{scope}\n\n", 1)
    (figures / FRAGMENT).write_text(text)
    written = [figures / name for name in FIGURES] + [figures / FRAGMENT]
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--grid", type=int, default=101, help="cells per axis of the torque map")
    parser.add_argument("--value-grid", type=int, default=61, help="cells per axis of the simulated value maps")
    parser.add_argument("--seed", default="median", help="which run of each algorithm: median, best, worst or a seed")
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation starts of the gap map")
    parser.add_argument("--no-optimal", action="store_true", help="leave out the dynamic-programming reference")
    args = parser.parse_args(argv)
    if not args.experiment_dir.is_dir():
        sys.exit(f"error: no experiment directory {str(args.experiment_dir)!r}")
    seed = args.seed if args.seed in ("median", "best", "worst") else int(args.seed)
    make_maps(args.experiment_dir, args.grid, args.value_grid, seed, not args.no_optimal, args.episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
