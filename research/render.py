"""Pictures of the pendulum, drawn with pillow alone: frames, side-by-side animations of policies, GIF and MP4.

    python -m research.render results/pendulum_compare     # -> results/pendulum_compare/media/*.gif (make render)

Each animation starts several pendulums from the same evaluation start (:func:`research.evaluation.evaluation_states`),
one per method of the experiment (every ``<algo>/`` with a finished ``seed_<k>/policy.pt``; the seed with the median
final return unless ``--seed`` says otherwise) plus the dynamic-programming optimum when :mod:`research.optimal` is
importable, and plays the 200 evaluation steps at the simulator's real time step (``dt = 0.05`` s: 20 frames per
second). Under the pendulums: each one's torque and running return as text and gauges, and below them the torque
and running-return traces of all of them over the episode. GIFs are written through pillow; MP4s as well where an
``ffmpeg`` executable is on the ``PATH``.

Without ``--starts`` three starts are drawn, chosen by rule so that a rerun on the same policies writes the same
files: ``hanging`` (the evaluation start nearest to hanging straight down at rest), ``spread`` (the start whose returns
differ most between the methods shown) and ``typical`` (the start whose mean return over the methods is the median
one). ``media/index.json`` records which start, seed and return each animation shows.

**Any system** (:mod:`research.systems`: the cart-pole, the acrobot, ...) has its own path, drawn with the system's
``draw(state, action, size)``: :func:`render_system` rolls policies and/or the system's ``reference_controller``
from chosen evaluation starts (default: the first controller's best, median and worst of the first 100) and writes
one GIF of the panels side by side in real time (at most 25 frames per second)::

    python -m research.render --system cartpole --controller reference --out docs/media/cartpole_reference.gif
    python -m research.render --system acrobot --policy results/x/bptt/seed_0/policy.pt --starts 0 5 --out a.gif

Nothing here imports matplotlib. :func:`pendulum_frame` is also what ``PendulumEnv(render_mode="rgb_array")`` draws.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:
    from PIL import Image, ImageDraw, ImageFont
except ImportError as error:  # pillow comes with matplotlib (the plots extra) or on its own: pip install pillow
    raise ImportError("research.render draws with pillow: pip install pillow (or the package's plots extra)") from error

from research.envs.physics import DT, MAX_TORQUE, PendulumParams, angle_normalize
from research.evaluation import EVAL_EPISODES, EVAL_HORIZON, evaluation_states
from research.policies import load_policy
from research.rollout import fused_rollout, initial_state, simulate
from research.systems.base import System

FPS = round(1.0 / DT)
"""Frames per second of every animation: one frame per simulator step (``dt = 0.05`` s)."""
ROD_COLOR = (204, 77, 77)
"""Gymnasium's rod colour, used by :class:`~research.envs.PendulumEnv`'s frames."""
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
"""Method colours in the experiment's algorithm order (matplotlib's tab10, as in ``scripts/plot.py``)."""
OPTIMAL_COLOR = "#333333"
OPTIMAL_NAME = "optimal (DP)"
SUPERSAMPLE = 3
PANEL = 140
"""Pixels per pendulum in the animations (which zoom in: a window 2.9 rod lengths wide instead of 4.4)."""
ANIMATION_EXTENT = 2.9
MANIFEST = "experiment.json"


# ---------------------------------------------------------------------------------------------------- one frame
def _rgb(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(color, tuple):
        return color
    color = color.lstrip("#")
    return tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_pendulum(
    th: float,
    torque: float | None = None,
    size: int = 200,
    color: str | tuple[int, int, int] = ROD_COLOR,
    max_torque: float = MAX_TORQUE,
    extent: float = 4.4,
) -> Image.Image:
    """The pendulum at angle ``th`` (0 upright, counter-clockwise positive) as a ``size x size`` RGB image.

    Gymnasium's picture: a rod of length 1 in a window ``extent`` wide (Gymnasium's 4.4 by default), on an axle;
    ``torque`` (if given) is a curved arrow
    above the axle whose length is proportional to ``|torque| / max_torque`` and which turns the way the torque does
    (counter-clockwise for a positive torque). Drawn ``SUPERSAMPLE`` times larger and scaled down, so edges are smooth.
    """
    s = size * SUPERSAMPLE
    scale = s / extent
    image = Image.new("RGB", (s, s), "white")
    draw = ImageDraw.Draw(image)
    c = s / 2
    # the circle the rod's tip moves on, and a tick at the top (the goal)
    r = scale
    draw.ellipse((c - r, c - r, c + r, c + r), outline=(225, 225, 225), width=max(1, SUPERSAMPLE))
    draw.line((c, c - r - 0.12 * scale, c, c - r + 0.12 * scale), fill=(170, 170, 170), width=max(1, SUPERSAMPLE))
    if torque is not None and math.isfinite(torque) and abs(torque) > 1e-3 * max_torque:
        _draw_torque_arrow(draw, c, 0.55 * scale, max(-1.0, min(1.0, torque / max_torque)), SUPERSAMPLE)
    tip = (c - r * math.sin(th), c - r * math.cos(th))  # image y points down
    width = 0.2 * scale
    rod = _rgb(color)
    draw.line((c, c, *tip), fill=rod, width=int(round(width)))
    for x, y in ((c, c), tip):
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=rod)
    axle = 0.05 * scale
    draw.ellipse((c - axle, c - axle, c + axle, c + axle), fill=(0, 0, 0))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _draw_torque_arrow(draw: ImageDraw.ImageDraw, c: float, radius: float, fraction: float, width: int) -> None:
    """An arc centred on the top of the axle spanning ``|fraction| * 270`` degrees, head on the side it turns to."""
    span = 270.0 * abs(fraction)
    lo, hi = 270.0 - span / 2, 270.0 + span / 2  # pillow's angles: degrees clockwise from 3 o'clock (y down)
    gray = (90, 90, 90)
    draw.arc((c - radius, c - radius, c + radius, c + radius), lo, hi, fill=gray, width=2 * width)
    # counter-clockwise on screen is decreasing pillow angle: the head sits at lo for a positive torque
    phi = math.radians(lo if fraction > 0 else hi)
    px, py = c + radius * math.cos(phi), c + radius * math.sin(phi)
    sign = 1.0 if fraction > 0 else -1.0
    dx, dy = sign * math.sin(phi), -sign * math.cos(phi)  # direction of motion along the arc
    nx, ny = math.cos(phi), math.sin(phi)
    head = 0.35 * radius
    draw.polygon(
        [
            (px + dx * head, py + dy * head),
            (px + nx * head * 0.55, py + ny * head * 0.55),
            (px - nx * head * 0.55, py - ny * head * 0.55),
        ],
        fill=gray,
    )


def pendulum_frame(th: float, torque: float | None = None, size: int = 200, **kwargs) -> np.ndarray:
    """:func:`draw_pendulum` as an ``[size, size, 3]`` ``uint8`` array (what ``env.render()`` returns)."""
    return np.asarray(draw_pendulum(float(th), None if torque is None else float(torque), size, **kwargs))


# ---------------------------------------------------------------------------------------------------- trajectories
@dataclass
class Trajectory:
    """One closed-loop episode: ``th``, ``thdot`` ``[T + 1]`` (``th`` wrapped to ``[-pi, pi)``), ``torque`` and
    ``reward`` ``[T]`` (torque as applied, i.e. clipped), all float64 numpy arrays."""

    name: str
    color: str
    th: np.ndarray
    thdot: np.ndarray
    torque: np.ndarray
    reward: np.ndarray

    @property
    def running_return(self) -> np.ndarray:
        """``[T + 1]``: the return collected before each frame (0 at the start)."""
        return np.concatenate([[0.0], np.cumsum(self.reward)])

    @property
    def total_return(self) -> float:
        return float(self.reward.sum())


@torch.no_grad()
def closed_loop(
    policy: Callable[[Tensor], Tensor], th0: Tensor, thdot0: Tensor, steps: int = EVAL_HORIZON
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rolls ``policy`` from ``(th0, thdot0)`` (each ``[N]``, float32 on the CPU as in the evaluator) on default physics.

    Returns ``(th [N, T + 1], thdot [N, T + 1], torque [N, T], reward [N, T])``; ``th`` wrapped to ``[-pi, pi)``,
    ``torque`` clipped to the torque limit as the physics applies it. Same rollout as the evaluator's, so the rewards
    sum to the returns it reports for these starts.
    """
    params = PendulumParams.default(th0.shape, dtype=th0.dtype)
    out = fused_rollout(_as_dtype(policy, th0.dtype), initial_state(torch.stack((th0, thdot0), -1)), params, steps,
                       keep_trajectory=True)
    obs = torch.cat([out.observations, out.next_observations[..., -1:, :]], dim=-2)
    th = torch.atan2(obs[..., 1], obs[..., 0])
    torque = out.actions[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
    return angle_normalize(th), obs[..., 2], torque, out.rewards


def _as_dtype(policy: Callable[[Tensor], Tensor], dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    def call(obs: Tensor) -> Tensor:
        return policy(obs).to(dtype)

    return call


def trajectories(
    controllers: Sequence[Controller], th0: float, thdot0: float, steps: int = EVAL_HORIZON
) -> list[Trajectory]:
    """One :class:`Trajectory` per controller, all from the same start."""
    th = torch.tensor([th0], dtype=torch.float32)
    thdot = torch.tensor([thdot0], dtype=torch.float32)
    result = []
    for ctrl in controllers:
        ths, thdots, torque, reward = (x[0].double().numpy() for x in closed_loop(ctrl.policy, th, thdot, steps))
        result.append(Trajectory(ctrl.name, ctrl.color, ths, thdots, torque, reward))
    return result


# ---------------------------------------------------------------------------------------------------- controllers
@dataclass
class Controller:
    """A policy to draw: ``policy`` maps ``observation [N, 3] -> action [N, 1]``; ``seed`` and ``path`` of the run
    it came from (``None`` for the optimum); ``final_return`` the run's final evaluation return."""

    name: str
    color: str
    policy: Callable[[Tensor], Tensor]
    seed: int | None = None
    path: Path | None = None
    final_return: float | None = None


def experiment_algos(exp_dir: Path) -> list[str]:
    """The algorithms of an experiment directory: the runner's ``experiment.json`` order, then any other ``<algo>/``
    holding a finished run with a saved policy (``seed_<k>/summary.json`` and ``policy.pt``), alphabetically."""
    found = sorted({p.parent.parent.name for p in exp_dir.glob("*/seed_*/policy.pt") if (p.parent / "summary.json").is_file()})
    manifest = exp_dir / MANIFEST
    order = json.loads(manifest.read_text()).get("algos", []) if manifest.is_file() else []
    return [a for a in order if a in found] + [a for a in found if a not in order]


def choose_run(exp_dir: Path, algo: str, seed: str | int = "median") -> tuple[Path, int, float]:
    """``(run directory, seed, final return)`` of one finished run of ``algo``.

    ``seed``: an integer, ``"median"`` (the seed whose final evaluation return is the median of the algorithm's
    seeds; the lower middle one for an even count), ``"best"`` or ``"worst"``.
    """
    runs = []
    for summary in sorted((exp_dir / algo).glob("seed_*/summary.json")):
        if not (summary.parent / "policy.pt").is_file():
            continue
        data = json.loads(summary.read_text())
        runs.append((float(data["eval"]["return_mean"]), int(data["seed"]), summary.parent))
    if not runs:
        raise FileNotFoundError(f"no finished run of {algo!r} with a policy.pt under {exp_dir / algo}")
    runs.sort()
    if seed == "median":
        ret, k, path = runs[(len(runs) - 1) // 2]
    elif seed == "best":
        ret, k, path = runs[-1]
    elif seed == "worst":
        ret, k, path = runs[0]
    else:
        matches = [r for r in runs if r[1] == int(seed)]
        if not matches:
            raise FileNotFoundError(f"{algo!r} has no finished seed {seed} (finished: {sorted(r[1] for r in runs)})")
        ret, k, path = matches[0]
    return path, k, ret


def experiment_controllers(exp_dir: Path, seed: str | int = "median", algos: Sequence[str] | None = None) -> list[Controller]:
    """A :class:`Controller` for each algorithm of ``exp_dir`` (see :func:`experiment_algos`, :func:`choose_run`)."""
    controllers = []
    for i, algo in enumerate(algos if algos is not None else experiment_algos(exp_dir)):
        path, k, ret = choose_run(exp_dir, algo, seed)
        controllers.append(Controller(algo, PALETTE[i % len(PALETTE)], load_policy(path / "policy.pt"), k, path, ret))
    return controllers


def optimal_available() -> bool:
    """Whether the dynamic-programming reference :mod:`research.optimal` exists in this checkout."""
    return importlib.util.find_spec("research.optimal") is not None


_SOLUTIONS: dict[tuple, object] = {}


def optimal_solution(**kwargs):
    """``research.optimal.solve_optimal(physics="default", horizon=200, **kwargs)`` (cached per process), or ``None``
    when :mod:`research.optimal` does not exist. Errors inside it are not hidden."""
    if not optimal_available():
        return None
    key = tuple(sorted(kwargs.items()))
    if key not in _SOLUTIONS:
        from research.optimal import solve_optimal

        _SOLUTIONS[key] = solve_optimal(**{"physics": "default", "horizon": EVAL_HORIZON, "device": "cpu", **kwargs})
    return _SOLUTIONS[key]


def optimal_controller(**kwargs) -> Controller | None:
    """The optimum's stationary greedy policy as a :class:`Controller` (``None`` without :mod:`research.optimal`)."""
    solution = optimal_solution(**kwargs)
    return None if solution is None else Controller(OPTIMAL_NAME, OPTIMAL_COLOR, solution.policy)


@torch.no_grad()
def per_start_returns(controllers: Sequence[Controller], num_episodes: int = 1000) -> np.ndarray:
    """``[len(controllers), num_episodes]``: each controller's 200-step return from every evaluation start."""
    state = evaluation_states(num_episodes)
    params = PendulumParams.default(state.shape[:-1])
    return np.stack(
        [simulate(_as_dtype(c.policy, state.dtype), state, params, EVAL_HORIZON).returns.double().numpy()
         for c in controllers]
    )


def nearest_starts(th0: np.ndarray, thdot0: np.ndarray, targets: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the starts ``(th0 [N], thdot0 [N])`` nearest to each target ``(th, thdot)`` (Euclidean in rad and
    rad/s, the angle difference wrapped), each index used once."""
    chosen: list[int] = []
    for th, thdot in targets:
        dth = np.angle(np.exp(1j * (np.asarray(th0) - th)))
        order = np.argsort(dth**2 + (np.asarray(thdot0) - thdot) ** 2, kind="stable")
        chosen.append(int(next(i for i in order if int(i) not in chosen)))
    return chosen


def default_starts(returns: np.ndarray, th: np.ndarray, thdot: np.ndarray) -> dict[str, int]:
    """The rule-chosen starts ``{"hanging": i, "spread": j, "typical": k}`` (indices into the evaluation states)
    from ``returns [methods, N]`` and the starts ``th, thdot [N]``; see the module docstring."""
    hanging = nearest_starts(th, thdot, [(math.pi, 0.0)])[0]
    spread = int(np.argmax(returns.max(axis=0) - returns.min(axis=0)))
    mean = returns.mean(axis=0)
    typical = int(np.argsort(mean, kind="stable")[(mean.size - 1) // 2])
    return {"hanging": hanging, "spread": spread, "typical": typical}


# ---------------------------------------------------------------------------------------------------- animation
def animation_frames(trajs: Sequence[Trajectory], panel: int = PANEL, title: str | None = None,
                     frames: int | None = None) -> list[Image.Image]:
    """The frames of a side-by-side animation, one per state (``T + 1``; or the first ``frames``).

    Top: one pendulum per trajectory with its name, a torque gauge and the running return. Bottom: the torque and
    the running return of every trajectory against time, drawn up to the current frame (a shared scale, so the
    panels compare). Returns RGB images of one size.
    """
    n = len(trajs)
    steps = len(trajs[0].torque)
    total = steps + 1 if frames is None else min(frames, steps + 1)
    width = n * panel
    head = 18 if title else 0
    text_h = 46
    chart_h = 64
    height = head + panel + text_h + 2 * chart_h + 22
    big, small = _font(13), _font(11)
    low = min(0.0, min(float(t.running_return.min()) for t in trajs))
    low = -50.0 * math.ceil(-low / 50.0) if low < 0 else -50.0
    pendulums = [[draw_pendulum(t.th[i], t.torque[i] if i < steps else None, panel, t.color, extent=ANIMATION_EXTENT)
                  for i in range(total)]
                 for t in trajs]
    images = []
    for i in range(total):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        if title:
            draw.text((6, 3), title, fill=(40, 40, 40), font=small)
        for k, t in enumerate(trajs):
            x0 = k * panel
            image.paste(pendulums[k][i], (x0, head))
            draw.text((x0 + 6, head + 4), t.name, fill=_rgb(t.color), font=big)
            y = head + panel
            u = float(t.torque[i]) if i < steps else 0.0
            _gauge(draw, x0 + 10, y + 2, panel - 20, 8, u / MAX_TORQUE, _rgb(t.color))
            draw.text((x0 + 8, y + 13), f"torque {u:+.2f}", fill=(60, 60, 60), font=small)
            draw.text((x0 + 8, y + 28), f"return {t.running_return[i]:7.1f}", fill=(20, 20, 20), font=big)
        y = head + panel + text_h
        _chart(draw, 0, y, width, chart_h, [t.torque[: min(i, steps)] for t in trajs], [t.color for t in trajs],
               (-MAX_TORQUE, MAX_TORQUE), steps, "torque", small, zero=True)
        _chart(draw, 0, y + chart_h, width, chart_h, [t.running_return[: i + 1] for t in trajs],
               [t.color for t in trajs], (low, 0.0), steps, "return", small, zero=False)
        draw.text((6, height - 17), f"t = {i * DT:5.2f} s  (step {i}/{steps}, dt = {DT:g} s, real time)",
                  fill=(60, 60, 60), font=small)
        images.append(image)
    return images


def _gauge(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int, fraction: float, color) -> None:
    """A horizontal bar from the centre: ``fraction`` in [-1, 1] of the half-width, right for a positive torque."""
    fraction = max(-1.0, min(1.0, fraction)) if math.isfinite(fraction) else 0.0
    draw.rectangle((x, y, x + w, y + h), outline=(200, 200, 200))
    mid = x + w / 2
    end = mid + fraction * w / 2
    if abs(end - mid) >= 1:
        draw.rectangle((min(mid, end), y + 1, max(mid, end), y + h - 1), fill=color)
    draw.line((mid, y - 2, mid, y + h + 2), fill=(80, 80, 80))


def _chart(draw: ImageDraw.ImageDraw, x: int, y: int, w: int, h: int, series: Sequence[np.ndarray],
           colors: Sequence[str], limits: tuple[float, float], steps: int, label: str, font, zero: bool) -> None:
    left, right, top, bottom = x + 52, x + w - 8, y + 6, y + h - 6
    lo, hi = limits
    draw.rectangle((left, top, right, bottom), outline=(210, 210, 210))
    draw.text((x + 4, top), label, fill=(60, 60, 60), font=font)
    draw.text((x + 4, bottom - 12), f"{lo:g}" if not zero else f"{lo:+g}", fill=(130, 130, 130), font=font)
    draw.text((x + 4, top + 13), f"{hi:+g}" if zero else f"{hi:g}", fill=(130, 130, 130), font=font)

    def ys(v: np.ndarray) -> np.ndarray:
        return bottom - (np.clip(v, lo, hi) - lo) / (hi - lo) * (bottom - top)

    if zero:
        draw.line((left, ys(np.array(0.0)), right, ys(np.array(0.0))), fill=(225, 225, 225))
    xscale = (right - left) / max(steps, 1)
    for values, color in zip(series, colors, strict=True):
        if len(values) >= 2:
            points = list(zip((left + np.arange(len(values)) * xscale).tolist(), ys(values).tolist(), strict=True))
            draw.line(points, fill=_rgb(color), width=2)
    cursor = left + (len(series[0]) - (0 if zero else 1)) * xscale
    draw.line((cursor, top, cursor, bottom), fill=(190, 190, 190))


def _palette_image(frames: Sequence[Image.Image], colors: int = 64) -> Image.Image:
    """One adaptive palette for all frames (from a few of them side by side), so the GIF needs no local palettes."""
    picks = [frames[i] for i in sorted({0, len(frames) // 4, len(frames) // 2, len(frames) - 1})]
    w, h = picks[0].size
    strip = Image.new("RGB", (w * len(picks), h), "white")
    for i, frame in enumerate(picks):
        strip.paste(frame, (i * w, 0))
    return strip.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def save_gif(frames: Sequence[Image.Image], path: str | Path, fps: int = FPS) -> Path:
    """Writes ``frames`` as a looping GIF at ``fps`` (20 fps: 50 ms a frame, exact in GIF's centiseconds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = _palette_image(frames)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    tmp = path.with_name(path.name + ".tmp")
    indexed[0].save(tmp, format="GIF", save_all=True, append_images=indexed[1:], duration=round(1000 / fps), loop=0,
                    optimize=True)
    tmp.replace(path)
    return path


def save_mp4(frames: Sequence[Image.Image], path: str | Path, fps: int = FPS, ffmpeg: str | None = None) -> Path | None:
    """Writes ``frames`` as an H.264 MP4 through the ``ffmpeg`` executable; ``None`` (nothing written) without one."""
    ffmpeg = ffmpeg or shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = frames[0].size
    tmp = path.with_name(path.name + ".tmp.mp4")
    command = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(fps), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp)]
    data = b"".join(np.asarray(f.convert("RGB")).tobytes() for f in frames)
    subprocess.run(command, input=data, check=True)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------- any system
SYSTEM_PANEL = 160
"""Pixels per panel in the animations of :func:`render_system`."""
SYSTEM_COLUMNS = 4
"""Panels per row of :func:`system_frames`."""
SYSTEM_FRAME_S = 0.04
"""The shortest simulated time between two frames of :func:`render_system` by default (25 frames per second)."""


@dataclass
class SystemController:
    """A controller of any :class:`~research.systems.System` for :func:`render_system`: ``act`` maps states
    ``[N, state_dim]`` to actions ``[N, action_dim]`` (a policy composed with ``system.observe``, or a hand-made
    controller of the state)."""

    name: str
    color: str
    act: Callable[[Tensor], Tensor]


def policy_controller(system: System, policy: Callable[[Tensor], Tensor], name: str = "policy",
                      color: str = PALETTE[0]) -> SystemController:
    """``policy`` (``observation [N, obs_dim] -> action [N, action_dim]``, e.g. :func:`research.load_policy`) on
    ``system``'s observation of the state, its output cast to the state's dtype."""
    parameter = next(iter(policy.parameters()), None) if isinstance(policy, torch.nn.Module) else None

    def act(state: Tensor) -> Tensor:
        obs = system.observe(state)
        return policy(obs if parameter is None else obs.to(parameter.dtype)).to(state.dtype)

    return SystemController(name, color, act)


def reference_controller(system: System, color: str = OPTIMAL_COLOR) -> SystemController | None:
    """The system's hand-made controller, the ``reference_controller(system, state)`` function of the module that
    defines its class (the cart-pole's energy pump with an LQR catch, the acrobot's), or ``None`` when it has none."""
    module = importlib.import_module(type(system).__module__)
    function = getattr(module, "reference_controller", None)
    if not callable(function):
        return None
    return SystemController("reference", color, lambda state: function(system, state))


def system_time_step(system: System) -> float | None:
    """The simulated seconds per step (the ``tau`` or ``dt`` parameter), or ``None`` when the system has neither."""
    values = system.defaults()
    for name in ("tau", "dt"):
        if name in values:
            return float(values[name])
    return None


@torch.no_grad()
def system_trajectories(system: System, controller: SystemController, state: Tensor, steps: int
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Rolls ``controller`` from ``state [N, state_dim]`` for ``steps`` steps of ``system.step`` (its fixed physics).

    Returns ``(states [N, T + 1, state_dim], actions [N, T, action_dim], rewards [N, T])``, the actions clipped to
    the system's action bound as the step applies them.
    """
    constants = system.constants(like=state)
    bound = system.max_action
    states, actions, rewards = [state], [], []
    for _ in range(steps):
        action = controller.act(state).clamp(-bound, bound)
        state, reward = system.step(state, action, constants)
        states.append(state)
        actions.append(action)
        rewards.append(reward)
    return torch.stack(states, -2), torch.stack(actions, -2), torch.stack(rewards, -1)


def _as_image(picture) -> Image.Image:
    """A system's picture (a PIL image, or an ``[H, W, 3]`` array as the pendulum's) as an RGB PIL image."""
    return picture.convert("RGB") if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))


def system_frames(system: System, rows: Sequence[tuple[str, str, Tensor, Tensor, Tensor]], every: int = 1,
                  panel: int = SYSTEM_PANEL, title: str = "", dt: float | None = None) -> list[Image.Image]:
    """The frames of a side-by-side animation of ``system.draw``: one panel per ``(label, color, states [T + 1, D],
    actions [T, A], rewards [T])``, at most :data:`SYSTEM_COLUMNS` per row, every ``every``-th state (the last one
    always). Under each picture its label, the first action component (with a gauge of it against the action bound)
    and the running return."""
    steps = rows[0][3].shape[0]
    indices = list(range(0, steps + 1, every))
    if indices[-1] != steps:
        indices.append(steps)
    columns = min(len(rows), SYSTEM_COLUMNS)
    lines = math.ceil(len(rows) / columns)
    head, label_h, text_h, foot = (18 if title else 0), 16, 30, 18
    cell_h = label_h + panel + text_h
    width, height = columns * panel, head + lines * cell_h + foot
    big, small = _font(12), _font(11)
    bound = system.max_action
    unit = system.action_names[0] if system.action_names else "action"
    returns = [np.concatenate([[0.0], np.cumsum(r.double().numpy())]) for *_, r in rows]
    images = []
    for i in indices:
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        if title:
            draw.text((6, 3), title, fill=(40, 40, 40), font=small)
        for k, (label, color, states, actions, _) in enumerate(rows):
            x0, y0 = (k % columns) * panel, head + (k // columns) * cell_h
            action = actions[i] if i < steps else None
            image.paste(_as_image(system.draw(states[i], action, panel)).resize((panel, panel)), (x0, y0 + label_h))
            draw.text((x0 + 4, y0 + 2), label, fill=_rgb(color), font=big)
            u = float(action[0]) if action is not None else 0.0
            y = y0 + label_h + panel
            _gauge(draw, x0 + 8, y + 2, panel - 16, 6, u / bound, _rgb(color))
            draw.text((x0 + 6, y + 11), f"{unit} {u:+.2f}  return {returns[k][i]:.1f}", fill=(40, 40, 40), font=small)
        clock = f"t = {i * dt:5.2f} s, " if dt is not None else ""
        draw.text((6, height - 16), f"{clock}step {i}/{steps}", fill=(60, 60, 60), font=small)
        images.append(image)
    return images


def choose_system_starts(system: System, controller: SystemController, count: int = 3, pool: int = 100,
                         steps: int | None = None) -> dict[str, int]:
    """Evaluation starts that show ``controller`` at its best, typical and worst: ``{"best": i, "median": j,
    "worst": k}`` (the first ``count`` of them), by its ``steps``-step return (default: the system's horizon) from
    each of the first ``pool`` evaluation states; each index used once."""
    state = evaluation_states(EVAL_EPISODES, physics=system, dtype=torch.float64)[:pool]
    returns = system_trajectories(system, controller, state, steps or system.horizon)[2].sum(-1)
    order = [int(i) for i in torch.argsort(returns, descending=True, stable=True)]
    chosen: dict[str, int] = {}
    for role, rank in (("best", 0), ("median", (len(order) - 1) // 2), ("worst", len(order) - 1)):
        index = next(i for i in order[rank:] + order[:rank] if i not in chosen.values())
        chosen[role] = index
    return dict(list(chosen.items())[:count])


def render_system(system: System, controllers: Sequence[SystemController], starts: Sequence[int] | Mapping[str, int],
                  out: str | Path, steps: int | None = None, every: int | None = None, panel: int = SYSTEM_PANEL,
                  dtype: torch.dtype = torch.float64, mp4: bool = False) -> list[Path]:
    """Animates ``controllers`` on ``system`` from evaluation starts ``starts`` (indices into
    :func:`research.evaluation.evaluation_states` of the system; a mapping names them, e.g. ``{"best": 17}``) and
    writes the GIF ``out`` (and an MP4 beside it when ``mp4`` and ffmpeg is on the ``PATH``); returns the paths.

    One panel per controller and start (:func:`system_frames`), ``steps`` steps (default: the system's horizon),
    one frame every ``every`` steps (default: every step that is at least :data:`SYSTEM_FRAME_S` after the last
    frame: every 2nd of the cart-pole's 0.02 s, each of the acrobot's 0.2 s), played in real time when the system has
    a time step (``tau`` or ``dt``). Float64 states by default (a policy sees its own dtype).
    """
    steps = system.horizon if steps is None else steps
    dt = system_time_step(system)
    if every is None:
        every = max(1, math.ceil(SYSTEM_FRAME_S / dt - 1e-9)) if dt is not None else 1
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be positive, got steps={steps}, every={every}")
    named = dict(starts) if isinstance(starts, Mapping) else {f"start {i}": int(i) for i in starts}
    indices = list(named.values())
    all_states = evaluation_states(EVAL_EPISODES, physics=system, dtype=dtype)
    if not all(0 <= i < len(all_states) for i in indices):
        raise ValueError(f"starts must be indices into the {len(all_states)} evaluation states, got {indices}")
    rows = []
    for controller in controllers:
        states, actions, rewards = system_trajectories(system, controller, all_states[indices], steps)
        for k, (role, index) in enumerate(named.items()):
            label = f"{controller.name}, {role}" if role.startswith("start") else f"{controller.name}, start {index} ({role})"
            rows.append((label, controller.color, states[k], actions[k], rewards[k]))
    title = f"{system.system}/{system.name}: {', '.join(c.name for c in controllers)}, {steps} steps"
    frames = system_frames(system, rows, every, panel, title, dt)
    fps = 1.0 / (dt * every) if dt is not None else FPS
    written = [save_gif(frames, out, fps)]
    if mp4:
        video = save_mp4(frames, Path(out).with_suffix(".mp4"), max(1, round(fps)))
        if video is not None:
            written.append(video)
    return written


def _policy_name(path: Path) -> str:
    """``bptt/seed_0`` for ``.../bptt/seed_0/policy.pt``, the file's stem otherwise."""
    if path.name == "policy.pt" and path.parent.name.startswith("seed_"):
        return f"{path.parent.parent.name}/{path.parent.name}"
    return path.stem


def system_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``python -m research.render --system NAME``: the generic path (see :func:`main`)."""
    from research.systems import get_system

    try:
        system = get_system(args.system, args.physics)
    except ValueError as error:
        parser.error(str(error))
    controllers = [policy_controller(system, load_policy(path), _policy_name(path), PALETTE[i % len(PALETTE)])
                   for i, path in enumerate(args.policy or [])]
    if args.controller == "reference" or not controllers:
        reference = reference_controller(system)
        if reference is None:
            parser.error(f"system {args.system!r} has no reference_controller: give --policy")
        controllers.append(reference)
    steps = args.steps if args.steps is not None else system.horizon
    if steps < 1 or (args.every is not None and args.every < 1):
        parser.error(f"--steps and --every must be positive, got {steps} and {args.every}")
    if args.starts is not None and not all(0 <= i < EVAL_EPISODES for i in args.starts):
        parser.error(f"--starts must be indices into the {EVAL_EPISODES} evaluation states, got {args.starts}")
    starts = args.starts if args.starts is not None else choose_system_starts(system, controllers[0], steps=steps)
    what = "policies" if args.policy else "reference"
    out = args.out if args.out is not None else Path("results/media") / f"{system.system}_{what}.gif"
    for path in render_system(system, controllers, starts, out, steps, args.every,
                              args.panel if args.panel is not None else SYSTEM_PANEL, mp4=args.mp4 == "yes"):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


# ---------------------------------------------------------------------------------------------------- command line
def render_experiment(exp_dir: Path, out_dir: Path | None = None, starts: Sequence[int] | None = None,
                      seed: str | int = "median", steps: int = EVAL_HORIZON, panel: int = PANEL, mp4: str = "auto",
                      optimal: bool = True) -> list[Path]:
    """Writes one animation per start into ``out_dir`` (default ``<exp>/media``) and ``index.json``; returns paths."""
    out_dir = exp_dir / "media" if out_dir is None else out_dir
    controllers = experiment_controllers(exp_dir, seed)
    if not controllers:
        print(f"{exp_dir}: no finished run with a policy.pt; nothing to render")
        return []
    best = optimal_controller() if optimal else None
    if best is not None:
        controllers.append(best)
    th_all, thdot_all = (x.double().numpy() for x in evaluation_states().unbind(-1))
    if starts is None:
        chosen = default_starts(per_start_returns(controllers), th_all, thdot_all)
        names = {role: f"swingup_{role}" for role in chosen}
    else:
        chosen = {f"start_{i}": int(i) for i in starts}
        names = {role: role for role in chosen}
    if mp4 == "yes" and shutil.which("ffmpeg") is None:
        raise SystemExit("error: --mp4 yes but no ffmpeg executable on the PATH")
    index = {"experiment": exp_dir.name, "fps": FPS, "dt": DT, "steps": steps,
             "methods": [{"name": c.name, "seed": c.seed, "run": None if c.path is None else str(c.path.relative_to(exp_dir)),
                          "final_return": c.final_return} for c in controllers],
             "animations": []}
    written = []
    for role, i in chosen.items():
        th0, thdot0 = float(th_all[i]), float(thdot_all[i])
        trajs = trajectories(controllers, th0, thdot0, steps)
        title = f"{exp_dir.name}: evaluation start {i} (th = {th0:+.2f} rad, thdot = {thdot0:+.2f} rad/s)"
        frames = animation_frames(trajs, panel=panel, title=title)
        gif = save_gif(frames, out_dir / f"{names[role]}.gif")
        written.append(gif)
        entry = {"file": gif.name, "role": role, "start_index": i, "th0": th0, "thdot0": thdot0,
                 "returns": {t.name: round(t.total_return, 3) for t in trajs}}
        if mp4 != "no":
            video = save_mp4(frames, out_dir / f"{names[role]}.mp4")
            if video is not None:
                written.append(video)
                entry["mp4"] = video.name
        index["animations"].append(entry)
        print(f"wrote {gif} ({gif.stat().st_size / 1e6:.2f} MB)")
    if best is None and optimal:
        index["note"] = "research.optimal is not in this checkout: no optimal-control pendulum"
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    if mp4 == "auto" and shutil.which("ffmpeg") is None:
        print("no ffmpeg on the PATH: GIFs only")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, nargs="?", default=Path("results/pendulum_compare"))
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default <experiment>/media); with --system the GIF's path "
                             "(default results/media/<system>_<reference|policies>.gif)")
    parser.add_argument("--starts", type=int, nargs="+", default=None,
                        help="indices into the 1000 evaluation states (default: the hanging, spread, typical starts; "
                             "with --system the best, median and worst of the first 100 for the first controller)")
    parser.add_argument("--seed", default="median", help="which run of each algorithm: median, best, worst or a seed")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps to animate (default: the evaluation episode, 200 for the pendulum)")
    parser.add_argument("--panel", type=int, default=None,
                        help=f"pixels per pendulum (default {PANEL}; with --system per panel, {SYSTEM_PANEL})")
    parser.add_argument("--mp4", choices=("auto", "yes", "no"), default="auto", help="also MP4 through ffmpeg")
    parser.add_argument("--no-optimal", action="store_true", help="leave out the dynamic-programming optimum")
    system = parser.add_argument_group("any system (--system): policies or the reference controller from evaluation "
                                       "starts, side by side in one GIF")
    system.add_argument("--system", default=None, help="a system of research.systems.SYSTEMS (e.g. cartpole, acrobot)")
    system.add_argument("--physics", default="default", help="the system's physics preset")
    system.add_argument("--policy", type=Path, nargs="+", default=None, help="policy.pt files to animate")
    system.add_argument("--controller", choices=("reference",), default=None,
                        help="also (without --policy: only) the system's reference_controller")
    system.add_argument("--every", type=int, default=None,
                        help=f"one frame every this many steps (default: frames at least {SYSTEM_FRAME_S:g} s apart)")
    args = parser.parse_args(argv)
    if args.system is not None:
        return system_main(args, parser)
    args.steps = EVAL_HORIZON if args.steps is None else args.steps
    args.panel = PANEL if args.panel is None else args.panel
    if not args.experiment_dir.is_dir():
        parser.error(f"no experiment directory {args.experiment_dir}")
    seed = args.seed if args.seed in ("median", "best", "worst") else int(args.seed)
    render_experiment(args.experiment_dir, args.out, args.starts, seed, args.steps, args.panel, args.mp4,
                      not args.no_optimal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
