"""The optimal-control yardstick: finite-horizon dynamic programming on a ``(th, thdot)`` grid.

Backward value iteration over the episode's ``H = 200`` steps::

    V_H(s) = 0,    V_t(s) = max_u  E[ r(s, u) + V_{t+1}(f(s, u, eps)) ]        t = H-1, ..., 0

on a grid of ``n_th x n_thdot`` nodes and a set of ``n_actions`` torques evenly spaced over ``[-max_torque,
max_torque]`` (both ends included). ``f`` and ``r`` are the library's own :func:`~research.envs.physics.pendulum_step`,
so the physics is written once; ``V_{t+1}`` between nodes is bilinear interpolation (:class:`StateGrid`): periodic in
``th`` (nodes ``-pi + 2 pi i / n_th``) unless the physics has a wall, then on its range ``[phi - 2 pi, phi]`` with both
ends as nodes; ``thdot`` on ``[-max_speed, max_speed]`` with both ends as nodes (the physics clips the speed there).
The expectation is over the torque noise ``eps`` of a noisy physics (Gauss-Hermite quadrature, ``noise_nodes``
points); without noise it is the plain backup.

The table ``V_0`` is an *estimate* of the optimum, not a bound: interpolation errs both ways. What is a bound is the
return of the greedy time-varying policy, ``u_t(s) = argmax_u E[r(s, u) + V_{t+1}(f(s, u, eps))]`` over the same torque
set (:meth:`OptimalSolution.greedy`; optionally refined around the best torque), rolled out in the exact physics from
the evaluation states: it is a policy anyone could run, so its return is a true lower bound on the optimal return.
Refining the grid tightens it (``results/optimal/REPORT.md`` has the refinement table).

    sol = solve_optimal("default", grid=(401, 401), actions=11)
    sol.value(t), sol.torque(t)          # [n_th, n_thdot] tables: V_t and the DP's greedy torque at step t
    sol.rollout(th, thdot)               # [N] returns of the time-varying greedy policy in the exact physics
    sol.policy                           # stationary nn.Module (greedy w.r.t. V_1): observation [..., 3] -> [..., 1]

Memory: a table is ``n_th * n_thdot`` floats in the solve's dtype; all ``H + 1`` value tables and the ``H`` greedy
index tables (uint8) are kept when they fit in ``memory_mb``. Otherwise only every ``k``-th value table
(``k ~ sqrt(H)``) is kept, with the transitions, and a segment of ``k`` steps is recomputed from its checkpoint
when asked for (bit for bit the same tables: the same operations in the same order); a rollout then costs about one
more solve.

Physics variants (:mod:`research.envs.presets`): a deterministic preset is solved as is; ``noisy`` through the
expectation above; a randomised preset (``randomized``) has no single DP, and gets two references (the evaluator's
1000 fixed draws either way): the nominal parameters' DP played without knowing the draw (an achievable lower bound
for such policies, a loose one), and :func:`clairvoyant_returns`, one DP per cell of parameter bins played with each
episode's own parameters (achievable only when told them; it bounds in expectation what a policy not told them can
reach, up to its own grid error).

``python -m research.analysis.optimal`` (``make optimal``) runs :func:`default_plan`, every preset at several grids,
and writes ``results/optimal/summary.csv`` and ``config.json``; ``scripts/optimal_report.py`` turns them into
``REPORT.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from research.envs.physics import PendulumParams, angle_normalize, is_upright, pendulum_step, step_constants
from research.envs.presets import PRESETS, Physics, get_physics
from research.evaluation import (
    EVAL_EPISODES,
    EVAL_HORIZON,
    SUCCESS_ANGLE,
    SUCCESS_SPEED,
    evaluate_policy,
    evaluation_noise,
    evaluation_params,
    evaluation_states,
    summarize_returns,
)

#: Transitions (node x torque x noise node) gathered at once in one backup: bounds its temporary memory (~36 B each).
BACKUP_CHUNK = 1 << 21
#: Torques tried around the best one per refinement level (see :meth:`OptimalSolution.greedy`).
REFINE_POINTS = 9
#: Default memory for the value and greedy tables before checkpointing starts (MiB).
MEMORY_MB = 768


# ---------------------------------------------------------------------------------------------------- physics
def resolve_physics(physics: Physics | str) -> Physics:
    """A :class:`~research.envs.presets.Physics` from a preset name, or ``physics`` itself."""
    return get_physics(physics) if isinstance(physics, str) else physics


def _knob(params: PendulumParams, name: str, default: float) -> float:
    value = getattr(params, name, default)
    return float(value.max()) if isinstance(value, Tensor) else float(value)


def _expand(params: PendulumParams, dims: int) -> PendulumParams:
    """Each tensor parameter with ``dims`` trailing singleton dimensions (a per-state ``[*B]`` over torques)."""
    if dims == 0:
        return params
    return type(params)(*(p.reshape(*p.shape, *([1] * dims)) if isinstance(p, Tensor) else p for p in params))


def _to(params: PendulumParams, like: Tensor) -> PendulumParams:
    return type(params)(*(p.to(like.device, like.dtype) if isinstance(p, Tensor) else p for p in params))


def _step(th: Tensor, thdot: Tensor, torque: Tensor, constants, noise: Tensor | None):
    """:func:`pendulum_step`, passing ``noise`` only when there is some (Gymnasium's physics takes none)."""
    if noise is None:
        return pendulum_step(th, thdot, torque, constants)
    return pendulum_step(th, thdot, torque, constants, noise=noise)


def gauss_hermite(nodes: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                  ) -> tuple[Tensor, Tensor]:
    """``(x [nodes], w [nodes])`` with ``sum_k w_k f(x_k) ~ E[f(eps)]``, ``eps ~ N(0, 1)`` (exact for polynomials of
    degree ``< 2 nodes``)."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    return (torch.tensor(x * math.sqrt(2.0), device=device, dtype=dtype),
            torch.tensor(w / math.sqrt(math.pi), device=device, dtype=dtype))


# ---------------------------------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class StateGrid:
    """The nodes of the value tables and bilinear interpolation between them.

    ``th`` nodes are ``th_lo + i * th_step``: periodic (``n_th`` nodes on ``[-pi, pi)``; node ``n_th`` is node 0)
    unless ``periodic`` is false (``n_th`` nodes on ``[th_lo, th_lo + (n_th - 1) th_step]``, clamped outside).
    ``thdot`` nodes are ``-v_max + j * v_step`` on ``[-v_max, v_max]``, clamped outside.
    """

    th: Tensor  # [n_th]
    thdot: Tensor  # [n_thdot]
    periodic: bool
    th_lo: float
    th_step: float
    v_max: float
    v_step: float

    @classmethod
    def make(cls, n_th: int, n_thdot: int, max_speed: float, th_range: tuple[float, float] | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> StateGrid:
        """``th_range=None``: periodic ``th``; ``(lo, hi)``: bounded, both ends nodes."""
        if n_th < 2 or n_thdot < 2:
            raise ValueError(f"the grid needs at least 2 x 2 nodes, got {n_th} x {n_thdot}")
        if th_range is None:
            lo, step = -math.pi, 2 * math.pi / n_th
        else:
            lo, step = float(th_range[0]), (float(th_range[1]) - float(th_range[0])) / (n_th - 1)
        v_step = 2 * max_speed / (n_thdot - 1)
        th = lo + step * torch.arange(n_th, dtype=torch.float64)
        thdot = -max_speed + v_step * torch.arange(n_thdot, dtype=torch.float64)
        return cls(th.to(device, dtype), thdot.to(device, dtype), th_range is None, lo, step, float(max_speed), v_step)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.th.numel(), self.thdot.numel())

    def corners(self, th: Tensor, thdot: Tensor) -> tuple[Tensor, Tensor]:
        """``(index, weights)`` of bilinear interpolation at the states ``th, thdot [*B]``.

        ``index [*B]`` (int64) is the flat node ``i0 * n_thdot + j0`` of the cell's lower corner; ``weights [*B, 4]``
        weigh its nodes ``(i0, j0), (i0, j0 + 1), (i0 + 1, j0), (i0 + 1, j0 + 1)``: the columns of :meth:`stack`.
        """
        n_th, n_v = self.shape
        if self.periodic:
            x = (angle_normalize(th) - self.th_lo) / self.th_step
            i0 = torch.floor(x)
            w_th = x - i0
            i0 = i0.long().remainder(n_th)  # x rounds to n_th (or just below 0) at the seam: the same node
        else:
            x = ((th - self.th_lo) / self.th_step).clamp(0, n_th - 1)
            i0 = torch.floor(x).clamp(max=n_th - 2)
            w_th = x - i0
            i0 = i0.long()
        y = ((thdot + self.v_max) / self.v_step).clamp(0, n_v - 1)
        j0 = torch.floor(y).clamp(max=n_v - 2)
        w_v = y - j0
        weights = torch.stack(((1 - w_th) * (1 - w_v), (1 - w_th) * w_v, w_th * (1 - w_v), w_th * w_v), dim=-1)
        return i0 * n_v + j0.long(), weights

    def stack(self, table: Tensor) -> Tensor:
        """``[n_th * n_thdot, 4]``: for each node ``k``, ``table [n_th, n_thdot]`` at the four corners of the cell
        whose lower corner is ``k`` (the row after the last is row 0 again: the periodic seam)."""
        n_th, n_v = self.shape
        n = n_th * n_v
        flat = torch.cat((table.reshape(-1), table[0], table[0, :1]))
        return torch.stack((flat[:n], flat[1 : n + 1], flat[n_v : n_v + n], flat[n_v + 1 : n_v + 1 + n]), dim=-1)

    def interpolate(self, table: Tensor, th: Tensor, thdot: Tensor, stacked: Tensor | None = None) -> Tensor:
        """``table [n_th, n_thdot]`` at the states ``[*B]`` -> ``[*B]`` (``stacked``: its :meth:`stack`, if at hand)."""
        index, weights = self.corners(th, thdot)
        stacked = self.stack(table) if stacked is None else stacked
        return (stacked[index] * weights.to(stacked.dtype)).sum(-1)


# ---------------------------------------------------------------------------------------------------- backups
class Backup:
    """The Bellman backup of one physics on one grid and torque set, its transitions computed once.

    Holds ``index [S * A * K]`` (int32: the lower corner of each successor), ``weights [S * A * K, 4]`` (bilinear
    weights times the quadrature weight of the noise node) and ``reward [S, A]`` (the expected reward), for
    ``S = n_th * n_thdot`` nodes, ``A`` torques and ``K`` noise nodes (1 without noise).
    """

    def __init__(self, grid: StateGrid, torques: Tensor, params: PendulumParams,
                 noise: tuple[Tensor, Tensor] | None = None) -> None:
        self.grid, self.torques = grid, torques
        n_th, n_v = grid.shape
        n_a = torques.numel()
        self.per_torque = 1 if noise is None else noise[0].numel()
        extra = 0 if noise is None else 1
        constants = step_constants(params)
        th = grid.th.view(n_th, 1, 1, *([1] * extra))
        thdot_nodes = grid.thdot.view(1, n_v, 1, *([1] * extra))
        u = torques.view(1, 1, n_a, *([1] * extra))
        eps = None if noise is None else noise[0].view(1, 1, 1, -1)
        rows = max(1, BACKUP_CHUNK // (n_v * n_a * self.per_torque))
        index, weights, reward = [], [], []
        for lo in range(0, n_th, rows):
            th_rows = th[lo : lo + rows]
            shape = (th_rows.shape[0], n_v, n_a, *([self.per_torque] * extra))
            step_noise = None if eps is None else eps.expand(shape)
            next_th, next_thdot, r = _step(th_rows.expand(shape), thdot_nodes.expand(shape), u.expand(shape),
                                           constants, step_noise)
            i, w = grid.corners(next_th, next_thdot)
            if noise is not None:
                w = w * noise[1].view(-1, 1)
                r = (r * noise[1]).sum(-1)
            index.append(i.reshape(-1).to(torch.int32))
            weights.append(w.reshape(-1, 4))
            reward.append(r.reshape(-1, n_a))
        self.index, self.weights, self.reward = torch.cat(index), torch.cat(weights), torch.cat(reward)

    def __call__(self, following: Tensor) -> tuple[Tensor, Tensor]:
        """``(V_t, greedy index)``, each ``[n_th, n_thdot]``, from ``V_{t+1} = following [n_th, n_thdot]``."""
        n_states, n_a = self.reward.shape
        per_node = n_a * self.per_torque
        index_dtype = torch.uint8 if n_a <= 256 else torch.int16
        stacked = self.grid.stack(following)
        value = torch.empty(n_states, device=following.device, dtype=following.dtype)
        greedy = torch.empty(n_states, device=following.device, dtype=index_dtype)
        chunk = max(1, BACKUP_CHUNK // per_node)
        for lo in range(0, n_states, chunk):
            hi = min(lo + chunk, n_states)
            sl = slice(lo * per_node, hi * per_node)
            future = (stacked.index_select(0, self.index[sl]) * self.weights[sl]).view(hi - lo, n_a, -1).sum(-1)
            best, arg = (self.reward[lo:hi] + future).max(-1)
            value[lo:hi] = best
            greedy[lo:hi] = arg.to(index_dtype)
        return value.view(self.grid.shape), greedy.view(self.grid.shape)


# ---------------------------------------------------------------------------------------------------- the solution
class OptimalSolution:
    """The value tables of a finite-horizon DP solve (:func:`solve_optimal`) and the greedy policies they define.

    Attributes:
        physics: the physics solved (a ``Physics``); ``params``: its nominal :class:`PendulumParams` (scalars), the
            ones the DP and the greedy choices use.
        grid: the :class:`StateGrid`; ``th_grid [n_th]`` and ``thdot_grid [n_thdot]`` its nodes.
        torques: the torque set ``[n_actions]``; ``noise``: the Gauss-Hermite ``(nodes, weights)`` of the torque noise
            (``None`` without noise).
        horizon: ``H``; ``checkpoint_every``: ``1`` when every table is stored, else the segment length ``k``.
        seconds: wall-clock of the solve.
    """

    def __init__(self, physics: Any, params: PendulumParams, grid: StateGrid, torques: Tensor, horizon: int,
                 values: dict[int, Tensor], greedy: dict[int, Tensor], backup: Backup | None, checkpoint_every: int,
                 noise: tuple[Tensor, Tensor] | None, seconds: float) -> None:
        self.physics, self.params, self.grid, self.torques = physics, params, grid, torques
        self.horizon, self.checkpoint_every, self.noise, self.seconds = horizon, checkpoint_every, noise, seconds
        self._values, self._greedy, self._backup = values, greedy, backup
        self._segments: OrderedDict[int, tuple[dict[int, Tensor], dict[int, Tensor]]] = OrderedDict()
        self._constants: dict[tuple, Any] = {}
        self._policy: GreedyPolicy | None = None
        self._limit = _knob(params, "max_torque", 2.0)  # host floats, read once (no sync per greedy step)
        self._spacing = 2 * self._limit / (torques.numel() - 1)

    @property
    def th_grid(self) -> Tensor:
        return self.grid.th

    @property
    def thdot_grid(self) -> Tensor:
        return self.grid.thdot

    @property
    def device(self) -> torch.device:
        return self.grid.th.device

    @property
    def dtype(self) -> torch.dtype:
        return self.grid.th.dtype

    # ---- tables
    def _segment(self, t: int) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """The recomputed tables of the checkpoint segment holding step ``t`` (the last two segments are cached)."""
        k = self.checkpoint_every
        start = (t // k) * k
        if start not in self._segments:
            stop = min(start + k, self.horizon)
            values, greedy = {stop: self._values[stop]}, {}
            for s in range(stop - 1, start - 1, -1):
                values[s], greedy[s] = self._backup(values[s + 1])
            self._segments[start] = (values, greedy)
            while len(self._segments) > 2:
                self._segments.popitem(last=False)
        self._segments.move_to_end(start)
        return self._segments[start]

    def value(self, t: int) -> Tensor:
        """``V_t [n_th, n_thdot]``: the DP's optimal return-to-go from step ``t`` (``V_H`` is zero)."""
        if not 0 <= t <= self.horizon:
            raise ValueError(f"t must be in [0, {self.horizon}], got {t}")
        return self._values[t] if t in self._values else self._segment(t)[0][t]

    def greedy_index(self, t: int) -> Tensor:
        """``[n_th, n_thdot]`` (uint8 or int16): the index into :attr:`torques` that the backup at step ``t`` took."""
        if not 0 <= t < self.horizon:
            raise ValueError(f"t must be in [0, {self.horizon - 1}], got {t}")
        return self._greedy[t] if t in self._greedy else self._segment(t)[1][t]

    def torque(self, t: int) -> Tensor:
        """``[n_th, n_thdot]``: the greedy torque table at step ``t < H`` (the best of the torque set w.r.t.
        ``V_{t+1}`` at each node)."""
        return self.torques[self.greedy_index(t).long()]

    def interpolate(self, t: int, th: Tensor, thdot: Tensor) -> Tensor:
        """``V_t`` at the states ``th, thdot [*B]`` (bilinear) -> ``[*B]``."""
        return self.grid.interpolate(self.value(t), th, thdot).to(th.dtype)

    # ---- greedy control
    def _step_constants(self, params: PendulumParams | None, dims: int, like: Tensor):
        """:func:`step_constants` of ``params`` (default: nominal) with ``dims`` trailing singleton dimensions."""
        if params is None:
            key = (dims, like.device, like.dtype)
            if key not in self._constants:
                self._constants[key] = step_constants(_to(self.params, like))
            return self._constants[key]
        return step_constants(_expand(_to(params, like), dims))

    def q_values(self, t: int, th: Tensor, thdot: Tensor, torques: Tensor, params: PendulumParams | None = None,
                 constants: Any = None, stacked: Tensor | None = None) -> Tensor:
        """``E[r(s, u) + V_{t+1}(f(s, u, eps))]`` for states ``[*B]`` and torques ``[*B, A]`` -> ``[*B, A]``.

        ``params``: per-state parameters (each ``[*B]`` or a scalar), default the nominal ones. ``constants`` and
        ``stacked`` (the step constants with the torque dimensions, and ``grid.stack(V_{t+1})``) save recomputing them.
        """
        extra = 0 if self.noise is None else 1
        if constants is None:
            constants = self._step_constants(params, 1 + extra, th)
        if stacked is None:
            stacked = self.grid.stack(self.value(t + 1))
        shape = tuple(torques.shape) if self.noise is None else (*torques.shape, self.noise[0].numel())
        th_, thdot_ = th.view(*th.shape, 1, *([1] * extra)), thdot.view(*thdot.shape, 1, *([1] * extra))
        u = torques.view(*torques.shape, *([1] * extra))
        eps = None if self.noise is None else self.noise[0].to(th.device, th.dtype).expand(shape)
        next_th, next_thdot, reward = _step(th_.expand(shape), thdot_.expand(shape), u.expand(shape), constants, eps)
        q = reward + self.grid.interpolate(None, next_th, next_thdot, stacked).to(reward.dtype)
        return q if self.noise is None else (q * self.noise[1].to(q.device, q.dtype)).sum(-1)

    def greedy(self, t: int, th: Tensor, thdot: Tensor, params: PendulumParams | None = None, refine: int = 0,
               constants: Any = None) -> Tensor:
        """The time-varying greedy torque at step ``t < H`` for the states ``th, thdot [*B]`` -> ``[*B]``.

        The best of the torque set w.r.t. ``V_{t+1}`` (:meth:`q_values`); then ``refine`` times, the best of
        :data:`REFINE_POINTS` torques spread over one torque spacing either side (the spacing shrinking 4x per level),
        taken only where it beats the current choice. ``params``: per-state parameters (default: nominal).
        """
        stacked = self.grid.stack(self.value(t + 1))
        if constants is None:
            constants = self._step_constants(params, 1 + (self.noise is not None), th)
        torques = self.torques.to(th.device, th.dtype)
        best_q, best = self.q_values(t, th, thdot, torques.expand(*th.shape, -1), params, constants, stacked).max(-1)
        torque = torques[best]
        spacing, limit = self._spacing, self._limit
        offsets = torch.linspace(-1.0, 1.0, REFINE_POINTS, device=th.device, dtype=th.dtype)
        for _ in range(refine):
            candidates = (torque[..., None] + spacing * offsets).clamp(-limit, limit)
            q, i = self.q_values(t, th, thdot, candidates, params, constants, stacked).max(-1)
            better = q > best_q
            torque = torch.where(better, candidates.gather(-1, i[..., None]).squeeze(-1), torque)
            best_q = torch.where(better, q, best_q)
            spacing /= 4
        return torque

    @torch.no_grad()
    def simulate(self, th: Tensor, thdot: Tensor, params: PendulumParams | None = None, noise: Tensor | None = None,
                 refine: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`rollout` that also returns the final state: ``(returns [N], th [N], thdot [N])``."""
        q_constants = self._step_constants(params, 1 + (self.noise is not None), th)
        step = self._step_constants(params, 0, th)
        total = torch.zeros_like(th)
        for t in range(self.horizon):
            torque = self.greedy(t, th, thdot, params, refine, q_constants)
            th, thdot, reward = _step(th, thdot, torque, step, None if noise is None else noise[..., t])
            total = total + reward
        return total, th, thdot

    def rollout(self, th: Tensor, thdot: Tensor, params: PendulumParams | None = None, noise: Tensor | None = None,
                refine: int = 0) -> Tensor:
        """Per-episode returns ``[N]`` of the time-varying greedy policy from the states ``th, thdot [N]``.

        Step ``t`` takes :meth:`greedy` w.r.t. ``V_{t+1}`` and steps the exact physics (:func:`pendulum_step` with
        ``params``, each ``[N]`` or a scalar, default the nominal ones; ``noise [N, H]``: the standard-normal torque
        noise of a noisy physics). The choices use ``params`` too: pass per-episode parameters only for a policy that
        knows them. Achievable returns, so each is a lower bound on the optimal return from its state.
        """
        return self.simulate(th, thdot, params, noise, refine)[0]

    @property
    def policy(self) -> GreedyPolicy:
        """The stationary greedy policy w.r.t. ``V_1`` as an ``nn.Module`` (see :class:`GreedyPolicy`)."""
        if self._policy is None:
            self._policy = GreedyPolicy(self, step=0)
        return self._policy

    def time_varying_policy(self, refine: int = 0) -> TimeVaryingPolicy:
        """The rollout's policy as an ``observation -> action`` module that counts its calls (see the class)."""
        return TimeVaryingPolicy(self, refine)


def _observed_angle(solution: OptimalSolution, observation: Tensor) -> tuple[Tensor, Tensor]:
    """``(th, thdot)`` from ``observation [..., 3]``: ``th = atan2(sin, cos)``, moved into a wall's range
    ``[phi - 2 pi, phi)`` (an observation cannot tell a soft wall's penetration from the other face)."""
    th = torch.atan2(observation[..., 1], observation[..., 0])
    phi = _knob(solution.params, "wall_angle", math.inf)
    if math.isfinite(phi):
        low = phi - 2 * math.pi
        th = low + torch.remainder(th - low, 2 * math.pi)
    return th, observation[..., 2]


class GreedyPolicy(nn.Module):
    """``observation [..., 3] -> action [..., 1]``: the greedy torque of DP step ``step``, used at every step.

    The default ``step = 0`` is greedy w.r.t. ``V_1``, the 199-steps-to-go value: the DP's first action. The pendulum
    settles long before 200 steps, so ``V_1`` is close to the infinite-horizon value and this stationary policy
    scores close to the time-varying one. Nominal parameters; ``th = atan2(sin, cos)``. It has no parameters (the
    evaluator then simulates on the CPU in float32); the table is the solution's, held as a plain attribute.
    """

    def __init__(self, solution: OptimalSolution, step: int = 0, refine: int = 0) -> None:
        super().__init__()
        self.solution, self.step, self.refine = solution, step, refine

    @torch.no_grad()
    def forward(self, observation: Tensor) -> Tensor:
        th, thdot = _observed_angle(self.solution, observation)
        return self.solution.greedy(self.step, th, thdot, refine=self.refine)[..., None]


class TimeVaryingPolicy(nn.Module):
    """``observation [..., 3] -> action [..., 1]``: the greedy torque of step ``t``, ``t`` = calls so far modulo ``H``.

    For a rollout that calls the policy once per step from step 0 (the evaluator does): it then acts as
    :meth:`OptimalSolution.rollout` does, from the observation (``th = atan2(sin, cos)``). :meth:`reset` restarts it.
    """

    def __init__(self, solution: OptimalSolution, refine: int = 0) -> None:
        super().__init__()
        self.solution, self.refine, self.calls = solution, refine, 0

    def reset(self) -> None:
        self.calls = 0

    @torch.no_grad()
    def forward(self, observation: Tensor) -> Tensor:
        t = self.calls % self.solution.horizon
        self.calls += 1
        th, thdot = _observed_angle(self.solution, observation)
        return self.solution.greedy(t, th, thdot, refine=self.refine)[..., None]


# ---------------------------------------------------------------------------------------------------- the solver
def nominal_params(physics: Physics, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> PendulumParams:
    """The physics' parameters as scalars, each parameter drawn per episode at the middle of its range."""
    middles = {name: (low + high) / 2 for name, (low, high) in physics.ranges.items()}
    return physics.override(overrides=middles).params((), device=device, dtype=dtype)


#: How far past a soft wall the grid reaches, in units of the deepest penetration at the speed limit.
SOFT_WALL_MARGIN = 1.5


def _th_range(params: PendulumParams) -> tuple[float, float] | None:
    """``None`` (periodic ``th``) without a wall, else the wall's range ``[phi - 2 pi, phi]``.

    A soft wall (``wall_stiffness = k > 0``) lets ``th`` penetrate past both ends, at most about ``max_speed /
    sqrt(3 k / (m l^2))`` (the speed limit's kinetic energy stored in the spring); the range is widened by
    :data:`SOFT_WALL_MARGIN` times that on each side (the two widened ends are different states: the same physical
    angle pressed into the wall from either face).
    """
    phi = _knob(params, "wall_angle", math.inf)
    if not math.isfinite(phi):
        return None
    stiffness = _knob(params, "wall_stiffness", 0.0)
    margin = 0.0
    if stiffness > 0:
        inertia = _knob(params, "m", 1.0) * _knob(params, "l", 1.0) ** 2
        margin = SOFT_WALL_MARGIN * _knob(params, "max_speed", 8.0) / math.sqrt(3.0 * stiffness / inertia)
    return (phi - 2 * math.pi - margin, phi + margin)


def solve_optimal(
    physics: Any = "default",
    grid: tuple[int, int] = (401, 401),
    actions: int = 11,
    horizon: int = EVAL_HORIZON,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quiet: bool = True,
    noise_nodes: int = 7,
    memory_mb: float = MEMORY_MB,
    checkpoint_every: int | None = None,
    params: PendulumParams | None = None,
) -> OptimalSolution:
    """Finite-horizon DP of one pendulum physics.

    Args:
        physics: a preset name (``research.envs.presets.get_physics``) or a ``Physics``. The DP solves its nominal
            parameters (:func:`nominal_params`: a parameter drawn per episode at the middle of its range).
        grid: ``(n_th, n_thdot)`` nodes. actions: the number of torques in the set, evenly spaced over
            ``[-max_torque, max_torque]``, both ends included (at least 2).
        horizon: steps ``H``. device, dtype: where the tables are computed and kept, and in what.
        quiet: no progress bar. noise_nodes: Gauss-Hermite points of the expectation over the torque noise (only
            when the physics has ``torque_noise > 0``).
        memory_mb: keep every table if they fit in this many MiB, else checkpoint (see the module docstring).
        checkpoint_every: force the segment length (``1``: keep every table).
        params: solve these scalar parameters instead of the physics' nominal ones (e.g. one randomised draw).

    Returns:
        An :class:`OptimalSolution`.
    """
    start = time.perf_counter()
    physics = resolve_physics(physics)
    device = torch.device(device)
    if actions < 2:
        raise ValueError(f"actions must be at least 2 torques, got {actions}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    if params is None:
        params = nominal_params(physics, device, dtype)
    params = _to(params, torch.empty((), device=device, dtype=dtype))
    state_grid = StateGrid.make(grid[0], grid[1], _knob(params, "max_speed", 8.0), _th_range(params), device, dtype)
    limit = _knob(params, "max_torque", 2.0)
    # symmetric about 0 and 0 itself in the set for an odd count (a float32 linspace misses 0 by an ulp)
    torques = (limit * torch.arange(1 - actions, actions, 2, dtype=torch.float64) / (actions - 1)).to(device, dtype)
    noise = gauss_hermite(noise_nodes, device, dtype) if _knob(params, "torque_noise", 0.0) > 0 else None
    backup = Backup(state_grid, torques, params, noise)
    table_mb = grid[0] * grid[1] * (torch.finfo(dtype).bits // 8 + 1) / 2**20
    if checkpoint_every is None:
        checkpoint_every = 1 if (horizon + 1) * table_mb <= memory_mb else max(1, math.ceil(math.sqrt(horizon)))
    values = {horizon: torch.zeros(state_grid.shape, device=device, dtype=dtype)}
    greedy: dict[int, Tensor] = {}
    following = values[horizon]
    name = getattr(physics, "name", "physics")
    for t in tqdm(range(horizon - 1, -1, -1), desc=f"DP {name} {grid[0]}x{grid[1]}x{actions}", disable=quiet,
                  leave=False, unit="step"):
        following, index = backup(following)
        if checkpoint_every == 1:
            values[t], greedy[t] = following, index
        elif t % checkpoint_every == 0:
            values[t] = following
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return OptimalSolution(physics, params, state_grid, torques, horizon, values, greedy,
                           None if checkpoint_every == 1 else backup, checkpoint_every, noise,
                           time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluation_setup(physics: Any, num_episodes: int = EVAL_EPISODES, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, PendulumParams, Tensor | None]:
    """``(th, thdot, params, noise)`` exactly as the evaluator (:func:`research.evaluation.evaluate_policy`) builds
    them for ``physics``: the fixed initial states ``[N]`` (in the wall's range with a wall), the fixed per-episode
    parameters ``[N]`` and the fixed standard-normal torque noise ``[N, H]`` (``None`` without noise)."""
    physics = resolve_physics(physics)
    params = evaluation_params(physics, num_episodes, device=device, dtype=dtype)
    th, thdot = evaluation_states(num_episodes, device=device, dtype=dtype, physics=physics, params=params).unbind(-1)
    noise = evaluation_noise(physics, num_episodes, EVAL_HORIZON, device=device, dtype=dtype)
    return th, thdot, params, None if noise is None else noise[..., 0]


def zero_torque_return(physics: Any = "default", num_episodes: int = EVAL_EPISODES) -> dict[str, float]:
    """The evaluator's statistics of never pushing (``R_zero``, the floor of the normalised score)."""

    def zero(observation: Tensor) -> Tensor:
        return torch.zeros(*observation.shape[:-1], 1, dtype=observation.dtype, device=observation.device)

    return evaluate_policy(zero, num_episodes=num_episodes, physics=resolve_physics(physics))


def evaluate_solution(solution: OptimalSolution, num_episodes: int = EVAL_EPISODES, refine: int = 0
                      ) -> dict[str, float]:
    """The protocol statistics (:func:`research.evaluation.summarize_returns`) of the time-varying greedy policy,
    rolled out in the evaluator's exact physics: its states, per-episode parameters and torque noise. The greedy
    choices use the solution's (nominal) parameters: for a randomised physics, a policy that does not know the draw."""
    th, thdot, episode_params, noise = evaluation_setup(solution.physics, num_episodes, solution.device,
                                                        solution.dtype)
    returns, th_end, thdot_end = _simulate_in(solution, th, thdot, episode_params, noise, refine)
    return summarize_returns(returns, is_upright(th_end, thdot_end, SUCCESS_ANGLE, SUCCESS_SPEED), th_end)


@torch.no_grad()
def clairvoyant_returns(physics: Physics | str, grid: tuple[int, int] = (201, 201), actions: int = 11,
                        bins: int = 6, num_episodes: int = EVAL_EPISODES, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, quiet: bool = True, noise_nodes: int = 7
                        ) -> tuple[Tensor, Tensor, Tensor, float]:
    """The evaluator's episodes of a randomised physics played by a policy that knows each episode's parameters.

    Each ranged parameter's interval is cut into ``bins`` equal bins; for every occupied cell of bins, one DP at the
    cell's centre (the other parameters as drawn), whose greedy policy then plays each episode of the cell with that
    episode's own parameters: ``argmax_u r + V^cell_{t+1}(f_episode(s, u))``, stepped in the episode's exact
    physics. An achievable return for a policy told the parameters: a lower bound on the clairvoyant optimum,
    which in turn bounds (in expectation) every policy that is not told them.

    Returns:
        ``(returns [N], final th [N], final thdot [N], seconds of the solves)``.
    """
    physics = resolve_physics(physics)
    th, thdot, params, noise = evaluation_setup(physics, num_episodes, device, dtype)
    names = sorted(physics.ranges, key=PendulumParams._fields.index)
    cells = torch.zeros(num_episodes, dtype=torch.long, device=th.device)
    centres = {}
    for name in names:
        low, high = physics.ranges[name]
        index = ((getattr(params, name) - low) / (high - low) * bins).floor().long().clamp(0, bins - 1)
        cells = cells * bins + index
        centres[name] = low + (high - low) * (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    returns, th_end, thdot_end = torch.empty_like(th), torch.empty_like(th), torch.empty_like(th)
    seconds = 0.0
    occupied = cells.unique().tolist()
    for cell in tqdm(occupied, desc=f"DP per parameter cell {physics.name}", disable=quiet, leave=False,
                     unit="cell"):
        rows = (cells == cell).nonzero().squeeze(-1)
        digits, rest = {}, cell
        for name in reversed(names):
            digits[name], rest = rest % bins, rest // bins
        first = rows[0].item()
        centre = type(params)(*(
            torch.tensor(centres[field][digits[field]].item(), device=th.device, dtype=dtype) if field in digits
            else (p[first] if isinstance(p, Tensor) else p)
            for field, p in zip(PendulumParams._fields, params, strict=True)))
        solution = solve_optimal(physics, grid, actions, device=device, dtype=dtype, params=centre,
                                 noise_nodes=noise_nodes)
        seconds += solution.seconds
        episode = type(params)(*(p[rows] if isinstance(p, Tensor) else p for p in params))
        out = solution.simulate(th[rows], thdot[rows], episode, None if noise is None else noise[rows])
        returns[rows], th_end[rows], thdot_end[rows] = out
    return returns, th_end, thdot_end, seconds


@torch.no_grad()
def per_draw_returns(physics: Physics | str, grid: tuple[int, int] = (201, 201), actions: int = 11,
                     draws: int = 100, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     quiet: bool = True, noise_nodes: int = 7) -> tuple[Tensor, Tensor, Tensor, float]:
    """The evaluator's first ``draws`` episodes, each played by the greedy policy of the DP of its own parameters:
    the exact clairvoyant policy (one solve per episode, so only on a subset). Returns like
    :func:`clairvoyant_returns`."""
    physics = resolve_physics(physics)
    th, thdot, params, noise = evaluation_setup(physics, EVAL_EPISODES, device, dtype)
    out, seconds = [], 0.0
    for i in tqdm(range(draws), desc=f"DP per draw {physics.name}", disable=quiet, leave=False, unit="draw"):
        draw = type(params)(*(p[i] if isinstance(p, Tensor) else p for p in params))
        solution = solve_optimal(physics, grid, actions, device=device, dtype=dtype, params=draw,
                                 noise_nodes=noise_nodes)
        seconds += solution.seconds
        out.append(solution.simulate(th[i : i + 1], thdot[i : i + 1], draw,
                                     None if noise is None else noise[i : i + 1]))
    returns, th_end, thdot_end = (torch.cat([o[k] for o in out]) for k in range(3))
    return returns, th_end, thdot_end, seconds


@torch.no_grad()
def _simulate_in(solution: OptimalSolution, th: Tensor, thdot: Tensor, episode_params: PendulumParams,
                 noise: Tensor | None, refine: int) -> tuple[Tensor, Tensor, Tensor]:
    """The greedy policy (nominal choices) stepped in ``episode_params`` with ``noise``."""
    q_constants = solution._step_constants(None, 1 + (solution.noise is not None), th)
    step = step_constants(_to(episode_params, th))
    total = torch.zeros_like(th)
    for t in range(solution.horizon):
        torque = solution.greedy(t, th, thdot, None, refine, q_constants)
        th, thdot, reward = _step(th, thdot, torque, step, None if noise is None else noise[..., t])
        total = total + reward
    return total, th, thdot


# ---------------------------------------------------------------------------------------------------- command line
SUMMARY_COLUMNS = (
    "physics", "grid", "actions", "noise_nodes", "param_bins", "refine", "role", "bound", "return_mean",
    "return_median", "return_min", "return_std", "return_iqm", "success_rate", "dp_value_mean",
    "zero_torque_return_mean", "seconds", "solve_seconds", "episodes", "best_of_same_episodes", "optimum",
)
#: What each role of a summary row measures.
ROLES = {
    "refinement": "the grid refined, everything else fixed",
    "actions": "the torque set refined at one grid",
    "noise_nodes": "the Gauss-Hermite nodes of the expectation over the torque noise refined at one grid",
    "clairvoyant": "told each episode's parameters: one DP per cell of parameter bins (randomised physics)",
    "param_bins": "the parameter bins of the clairvoyant policy refined at one grid",
    "best_of": "told the parameters, per episode the best of the clairvoyant rows' policies (simulated first)",
    "per_draw": "told the parameters, one DP per episode's own draw, on the first episodes only",
}
#: Roles whose policy is told each episode's parameters (``bound = clairvoyant``).
CLAIRVOYANT_ROLES = ("clairvoyant", "param_bins", "best_of", "per_draw")


@dataclass(frozen=True)
class Solve:
    """One row of the plan: a physics at a grid, torque set, noise quadrature and (clairvoyant rows) parameter bins.

    ``role``: a key of :data:`ROLES`. Rows ``clairvoyant`` and ``param_bins`` play the randomised physics with a
    policy told each episode's parameters (:func:`clairvoyant_returns`), ``per_draw`` with the exact per-episode DP
    on the first ``draws`` episodes (:func:`per_draw_returns`); every other row with the nominal parameters' DP,
    which is not told them. ``best_of`` rows are not planned: :func:`run_plan` adds one per randomised physics.
    """

    physics: str
    grid: tuple[int, int]
    actions: int = 11
    role: str = "refinement"
    noise_nodes: int = 7
    bins: int = 0
    refine: int = 0
    draws: int = 0

    @property
    def grid_text(self) -> str:
        return f"{self.grid[0]}x{self.grid[1]}"

    @property
    def clairvoyant(self) -> bool:
        return self.role in CLAIRVOYANT_ROLES


def square(n: int) -> tuple[int, int]:
    return (n, n)


def default_plan(physics: Sequence[str] | None = None) -> list[Solve]:
    """What ``make optimal`` solves (about 12 minutes on one core), per physics:

    - every deterministic preset: grids 101, 201, 401, 801 and 1201 with 11 torques; ``default`` also with 21 and
      41 torques at 401 x 401;
    - ``noisy``: grids 101 to 401 with 7 Gauss-Hermite nodes (7x the transitions; the noise smooths the value), and
      3, 5 and 9 nodes at 201 x 201;
    - ``randomized``: the nominal DP's policy at grids 101 to 401 (a lower bound for a policy not told the
      parameters), the clairvoyant cell policies (:func:`clairvoyant_returns`, 4 bins per parameter) at grids 101
      to 401 and 8 bins at 101 x 101 (and :func:`run_plan`'s per-episode best of them), and the exact per-draw DP
      at 201 x 201 on the first 100 episodes.
    """
    names = list(physics) if physics else list(PRESETS)
    plan: list[Solve] = []
    for name in names:
        if name == "noisy":
            plan += [Solve(name, square(g), noise_nodes=7) for g in (101, 201, 401)]
            plan += [Solve(name, square(201), noise_nodes=k, role="noise_nodes") for k in (3, 5, 9)]
        elif get_physics(name).ranges:
            plan += [Solve(name, square(g)) for g in (101, 201, 401)]
            plan += [Solve(name, square(g), role="clairvoyant", bins=4) for g in (101, 201, 401)]
            plan += [Solve(name, square(101), role="param_bins", bins=8)]
            plan += [Solve(name, square(201), role="per_draw", draws=100)]
        else:
            plan += [Solve(name, square(g)) for g in (101, 201, 401, 801, 1201)]
            if name == "default":
                plan += [Solve(name, square(401), a, role="actions") for a in (21, 41)]
    return plan


def _row(item: Solve, stats: dict[str, float], zero: float, seconds: float, solve_seconds: float,
         dp_value: float = math.nan, grid: str | None = None) -> dict[str, Any]:
    noisy = get_physics(item.physics).features.noise
    return {
        "physics": item.physics, "grid": grid or item.grid_text, "actions": item.actions,
        "noise_nodes": item.noise_nodes if noisy else 0, "param_bins": item.bins, "refine": item.refine,
        "role": item.role, "bound": "clairvoyant" if item.clairvoyant else "lower",
        **{k: stats[k] for k in ("return_mean", "return_median", "return_min", "return_std", "return_iqm",
                                 "success_rate")},
        "dp_value_mean": dp_value, "zero_torque_return_mean": zero, "seconds": seconds,
        "solve_seconds": solve_seconds, "episodes": stats["episodes"], "best_of_same_episodes": math.nan,
        "optimum": 0,
    }


def _best_of(outcomes: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Per episode, the outcome ``(return, th, thdot)`` with the highest return among ``outcomes``."""
    returns = torch.stack([o[0] for o in outcomes])
    pick = returns.argmax(0, keepdim=True)
    return tuple(torch.stack([o[k] for o in outcomes]).gather(0, pick).squeeze(0) for k in range(3))


def run_plan(plan: Sequence[Solve], num_episodes: int = EVAL_EPISODES, device: str = "cpu", quiet: bool = False,
             memory_mb: float = MEMORY_MB) -> list[dict[str, Any]]:
    """Solves and evaluates every row of ``plan``; one summary row each (:data:`SUMMARY_COLUMNS`).

    For a physics with two or more ``clairvoyant``/``param_bins`` rows, a ``best_of`` row follows its last one:
    per episode the best of their returns. The physics is deterministic once the parameters are known, so a policy
    told them (and its state) can simulate each candidate and play the best: achievable, hence still a lower bound
    on the clairvoyant optimum. A ``per_draw`` row records in ``best_of_same_episodes`` the best-of mean over its
    own episodes (``nan`` if no best-of exists yet).
    """
    rows, zero = [], {}
    outcomes: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}
    cell_seconds: dict[str, float] = {}
    bar = tqdm(plan, desc="optimal", unit="solve", disable=quiet)
    for i, item in enumerate(bar):
        bar.set_postfix_str(f"{item.physics} {item.grid_text} x{item.actions} {item.role}")
        if item.physics not in zero:
            zero[item.physics] = zero_torque_return(item.physics, num_episodes)["return_mean"]
        start = time.perf_counter()
        if item.role in ("clairvoyant", "param_bins"):
            *outcome, solve_seconds = clairvoyant_returns(item.physics, item.grid, item.actions, item.bins,
                                                          num_episodes, device, quiet=quiet,
                                                          noise_nodes=item.noise_nodes)
            outcomes.setdefault(item.physics, []).append(tuple(outcome))
            cell_seconds[item.physics] = cell_seconds.get(item.physics, 0.0) + time.perf_counter() - start
            rows.append(_row(item, _stats(*outcome), zero[item.physics], time.perf_counter() - start,
                             solve_seconds))
            following = plan[i + 1] if i + 1 < len(plan) else None
            last = following is None or following.physics != item.physics or following.role not in (
                "clairvoyant", "param_bins")
            if last and len(outcomes[item.physics]) >= 2:
                best = Solve(item.physics, item.grid, item.actions, role="best_of", noise_nodes=item.noise_nodes)
                grid = f"best of {len(outcomes[item.physics])}"
                rows.append(_row(best, _stats(*_best_of(outcomes[item.physics])), zero[item.physics],
                                 cell_seconds[item.physics], math.nan, grid=grid))
        elif item.role == "per_draw":
            returns, th_end, thdot_end, solve_seconds = per_draw_returns(
                item.physics, item.grid, item.actions, item.draws, device, quiet=quiet, noise_nodes=item.noise_nodes)
            row = _row(item, _stats(returns, th_end, thdot_end), zero[item.physics], time.perf_counter() - start,
                       solve_seconds)
            if len(outcomes.get(item.physics, [])) >= 2:
                row["best_of_same_episodes"] = (
                    _best_of(outcomes[item.physics])[0][: item.draws].double().mean().item())
            rows.append(row)
        else:
            solution = solve_optimal(item.physics, item.grid, item.actions, device=device, quiet=quiet,
                                     noise_nodes=item.noise_nodes, memory_mb=memory_mb)
            stats = evaluate_solution(solution, num_episodes, item.refine)
            th, thdot, _, _ = evaluation_setup(solution.physics, num_episodes, solution.device, solution.dtype)
            dp_value = solution.interpolate(0, th, thdot).double().mean().item()
            rows.append(_row(item, stats, zero[item.physics], time.perf_counter() - start, solution.seconds,
                             dp_value))
            del solution
    mark_optimum(rows)
    return rows


def _stats(returns: Tensor, th_end: Tensor, thdot_end: Tensor) -> dict[str, float]:
    return summarize_returns(returns, is_upright(th_end, thdot_end, SUCCESS_ANGLE, SUCCESS_SPEED), th_end)


def mark_optimum(rows: list[dict[str, Any]]) -> None:
    """Sets ``optimum = 1`` on one row per physics, the yardstick the experiment reports compare with: the best
    ``return_mean`` over all the evaluator's episodes among its clairvoyant rows when it has any (a randomised
    physics: what a policy could reach if it were told the parameters), else among all its rows (each an achievable
    policy, so the best is the tightest lower bound on the optimum)."""
    best: dict[str, dict] = {}
    full = max((r["episodes"] for r in rows), default=0)
    for row in rows:
        name = row["physics"]
        clairvoyant = any(r["bound"] == "clairvoyant" for r in rows if r["physics"] == name)
        if (clairvoyant and row["bound"] != "clairvoyant") or row["episodes"] != full:
            continue
        if name not in best or row["return_mean"] > best[name]["return_mean"]:
            best[name] = row
    for row in rows:
        row["optimum"] = int(row is best.get(row["physics"]))


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([f"{row[c]:.10g}" if isinstance(row[c], float) else row[c] for c in SUMMARY_COLUMNS])
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Finite-horizon DP optimum of the pendulum -> <out>/summary.csv")
    parser.add_argument("--physics", nargs="+", default=None, help="preset names (default: every preset)")
    parser.add_argument("--grids", nargs="+", type=int, default=None,
                        help="instead of the default plan: these square grids for every physics, 11 torques")
    parser.add_argument("--actions", type=int, default=11, help="torques in the set (with --grids)")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("results/optimal"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-mb", type=float, default=2048,
                        help="value tables kept in memory per solve before checkpointing (1201 x 1201: ~1.4 GB)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads only wait on each other)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from research.runs import device_description, git_commit, library_versions

    commit = git_commit()
    start = time.perf_counter()
    if args.grids:
        plan = [Solve(name, square(g), args.actions) for name in (args.physics or list(PRESETS)) for g in args.grids]
    else:
        plan = default_plan(args.physics)
    rows = run_plan(plan, args.episodes, args.device, args.quiet, args.memory_mb)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "summary.csv", summary_csv(rows))
    config = {"argv": list(sys.argv[1:] if argv is None else argv), "git_commit": commit,
              "versions": library_versions(), "device": device_description(args.device),
              "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - start,
              "horizon": EVAL_HORIZON, "episodes": args.episodes}
    _write(args.out / "config.json", json.dumps(config, indent=2) + "\n")
    print(f"wrote {args.out / 'summary.csv'} and {args.out / 'config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
