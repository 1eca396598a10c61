"""An optimal-control reference where a grid DP is out of reach: per-start trajectory optimisation.

For a :class:`~research.systems.System` (the cart-pole, the acrobot: four state dimensions, no grid DP) and the
evaluator's fixed start states (:func:`~research.evaluation.evaluation_states`, with its parameter draws and noise),
one action sequence ``[N, H, action_dim]`` per start (``H = system.horizon``) is optimised to maximise the
undiscounted return of ``system.step``, all starts and all restarts batched in one tensor:

- **Parameterisation.** ``a_t = max_action * tanh(u_t + f_t)``: every action inside the bound. On the *open-loop*
  restarts ``f_t = 0``, the plain shooting of ``u``. Plain shooting fails on these systems: their upright is
  unstable, so an open-loop sequence that balances is ill-conditioned (any Adam step of ``u`` anywhere before the
  balance makes the pole fall: measured on the cart-pole, every step from the reference controller's sequence
  lowered the return, -571 to -900). On the *feedback* restarts ``f_t`` is a stabilising feedback's ``u``-space
  value at the current state (:func:`feedback_of`): the reference controller itself where it is differentiable
  (the cart-pole's), else :data:`STABILISERS` (the acrobot's: the LQR of the upright inside its basin), so ``u`` is a
  residual on a closed loop and its gradient is that of the stabilised system. Either way the *actions taken* are
  the result: an open-loop sequence per start, whose replay in the same physics is the same rollout.
- **Warm starts.** ``restarts`` per start (:func:`restart_kinds`, :func:`warm_starts`): the reference controller's
  rollout (its actions, ``u = atanh(a / max_action)`` clamped to ``+-U_CLAMP``, less the feedback's value along
  it), plus smooth random perturbations of a few sizes; open-loop ones (``reference``: the controller's actions,
  ``mirror``, ``random``) on request or without a feedback.
- **Optimiser.** Adam on the sum of rewards (each start's return is independent, so one backward gives each its own
  gradient), a cosine learning-rate schedule from ``lr`` to ``lr * LR_FINAL``. Two options against exploding
  gradients that leave the forward pass unchanged: ``grad_decay < 1`` multiplies the gradient by ``grad_decay`` per
  step it travels back in time, and a horizon curriculum (``curriculum``: the objective sums the first ``T`` rewards,
  ``T`` growing linearly from ``curriculum * H`` to ``H`` over the first half of the iterations). A start whose
  gradient is not finite gets none that step.
- **Selection.** Every iteration's forward pass *is* a rollout in the exact physics (the same ``system.step``,
  dtype and device as the evaluator: float32 on the CPU), so the best sequence seen per start, over all restarts and
  iterations (iteration 0 included: never worse than its warm starts), is kept.
- **Check.** The kept sequences are rolled out again, open-loop and without gradients (:func:`rollout_actions`):
  the returns reported, each achievable by a policy that knows its start and plays the sequence. They are also
  replayed in float64 (for a chaotic system open-loop play amplifies rounding; reported).

The reference per start is the better of this trajectory and the reference controller's closed-loop rollout (both
achievable): a **lower bound on the optimum** per start, not the optimum (local optimisation from a few starts).

``python -m research.analysis.trajopt --system cartpole --out results/optimal/cartpole`` writes ``summary.json``
(statistics of the reference, the trajectory optimisation and the reference controller in the keys of
:func:`~research.evaluation.summarize_returns`, the settings, the wall-clock, the code's commit) and ``returns.csv``
(per start); ``make optimal-systems`` runs it for every system, ``scripts/optimal_report.py`` reports it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from research.evaluation import (
    EVAL_EPISODES,
    evaluation_noise,
    evaluation_params,
    evaluation_states,
    summarize_returns,
)
from research.systems import System, get_system

#: ``|u|`` of a warm start is clamped here (``tanh(6) = 1 - 1.2e-5``): a saturated action of the reference
#: controller is reproduced to 1e-5 of the bound (open-loop play of an unstable balance amplifies any difference),
#: and Adam, whose steps do not shrink with the gradient, can still move it.
U_CLAMP = 6.0
#: The cosine schedule ends at this fraction of the initial learning rate.
LR_FINAL = 0.05
#: Knots of the smooth random perturbations (linearly interpolated over the horizon).
NOISE_KNOTS = 20
#: Restart kinds, in the order :func:`restart_kinds` takes them (cycled when ``restarts`` exceeds their number):
#: see :func:`warm_starts`.
RESTART_KINDS = ("feedback", "feedback+0.3", "feedback+0.1", "feedback+1.0", "reference", "feedback+2.0", "mirror",
                 "random")
#: The same without a reference controller: open-loop only.
OPEN_LOOP_KINDS = ("zero", "random+0.5", "random+1.5", "random+3.0", "random+1.0", "random+2.0")
#: Defaults per system, sized to finish in about five minutes on two shared CPU cores (measured: the summaries'
#: ``seconds``). The cart-pole: lr 0.3 reached -488.7 in 100 steps on 50 starts where 0.15 reached -497.3. The
#: acrobot: its open-loop swing is chaotic, gradient steps do not help (see :data:`NOTES`), so few and small ones.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cartpole": {"episodes": 1000, "restarts": 4, "iterations": 100, "lr": 0.3, "grad_decay": 1.0,
                 "curriculum": 0.0},
    "acrobot": {"episodes": 1000, "restarts": 4, "iterations": 30, "lr": 0.02, "grad_decay": 0.8,
                "curriculum": 0.0},
}
FALLBACK_DEFAULTS: dict[str, Any] = {"episodes": 1000, "restarts": 4, "iterations": 100, "lr": 0.1,
                                     "grad_decay": 1.0, "curriculum": 0.0}
#: What was tried per system, written into its summary (``note``) and its report row.
NOTES: dict[str, str] = {
    "cartpole": (
        "Plain open-loop shooting from the reference controller's actions: every Adam step lowered the return (the "
        "balance at the top is open-loop unstable; -571 to about -900 after one step, 20 starts). The residual on "
        "the reference controller (feedback restarts) improves steadily: on 50 starts -573 to -489 in 100 steps "
        "(lr 0.3; lr 0.15: -497); the open-loop restart never held the best sequence of a start."),
    "acrobot": (
        "The reference controller is not differentiable (its catch is a search over torque sequences), so the "
        "feedback restarts use the LQR of the upright inside its basin only, and the swing is open-loop. The swing "
        "is chaotic over the 40 s horizon: on 10 starts, plain shooting, the LQR-stabilised residual, an energy-"
        "pumping feedback outside the basin, gradient factors 1, 0.8 and 0.5 per step and a horizon curriculum "
        "from 20% all made the current sequences worse after the first Adam step (about -92 to -115); what the "
        "reference gains over the controller comes from the per-start best of restarts and early iterations."),
}


# ---------------------------------------------------------------------------------------------------- rollouts
def reference_controller_of(system: System) -> Callable[..., Tensor] | None:
    """The system's hand-made controller as ``(system, state, params) -> action``: a ``reference_controller``
    method of the instance, else a ``reference_controller`` function of its module (``(system, state)`` or
    ``(system, state, params)``: ``params`` is passed where it is accepted); ``None`` when it has neither."""
    method = getattr(system, "reference_controller", None)
    if callable(method):
        function = lambda _system, state, params=None: method(state, params)  # noqa: E731
        return function if _accepts_params(method, 2) else (lambda _system, state, params=None: method(state))
    module = importlib.import_module(type(system).__module__)
    function = getattr(module, "reference_controller", None)
    if not callable(function):
        return None
    if _accepts_params(function, 3):
        return function
    return lambda system_, state, params=None: function(system_, state)


def _accepts_params(function: Callable, positional: int) -> bool:
    """Whether ``function`` takes at least ``positional`` positional arguments (the last one: ``params``)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return len([p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD)]) >= positional


def _decay(x: Tensor, factor: float) -> Tensor:
    """``x`` itself, with its gradient multiplied by ``factor`` on the way back (the value is untouched)."""
    if factor == 1.0 or not x.requires_grad:
        return x
    frozen = x.detach()
    return frozen + factor * (x - frozen)


def rollout_actions(system: System, state: Tensor, actions: Tensor, params: Any = None, noise: Tensor | None = None,
                    grad_decay: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Open-loop play: ``actions [N, H, action_dim]`` from ``state [N, state_dim]`` through ``system.step`` ->
    ``(returns [N], final state [N, state_dim], rewards [N, H])``, the returns summed as the evaluator sums them
    (``rewards.sum(-1)``). ``params``: the system's parameters (tensors ``[N]``; ``None``: its fixed values);
    ``noise [N, H, noise_dim]`` when it has noise; ``grad_decay``: see :func:`_decay` (the values do not change)."""
    constants = system.constants(params, like=state)
    x = state
    rewards = []
    for t in range(actions.shape[1]):
        x, reward = system.step(x, actions[:, t], constants, None if noise is None else noise[:, t])
        rewards.append(reward)
        if t + 1 < actions.shape[1]:
            x = _decay(x, grad_decay)
    stacked = torch.stack(rewards, dim=-1)
    return stacked.sum(-1), x, stacked


@torch.no_grad()
def controller_rollout(system: System, controller: Callable[..., Tensor], state: Tensor, horizon: int,
                       params: Any = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-loop play of ``controller(system, state, params)``: ``(returns [N], final [N, state_dim], actions
    [N, H, action_dim], states [N, H, state_dim])`` (``states[:, t]``: the state ``actions[:, t]`` was computed
    from and applied to, so replaying the actions open-loop, :func:`rollout_actions`, gives the same returns)."""
    constants = system.constants(params, like=state)
    given = params if params is not None and system.ranges else None
    x = state
    rewards, actions, states = [], [], []
    for t in range(horizon):
        action = controller(system, x, given).to(state.dtype)
        states.append(x)
        x, reward = system.step(x, action, constants, None if noise is None else noise[:, t])
        rewards.append(reward)
        actions.append(action)
    return torch.stack(rewards, dim=-1).sum(-1), x, torch.stack(actions, dim=1), torch.stack(states, dim=1)


# ---------------------------------------------------------------------------------------------------- feedback
#: ``u``-space offset ``(system, state [B, S], params) -> [B, action_dim]`` added inside the ``tanh`` of a feedback
#: restart (:func:`play`).
Feedback = Callable[[System, Tensor, Any], Tensor]


def _to_u(action: Tensor, bound: float) -> Tensor:
    """``atanh(action / bound)``, the ratio clamped to ``+-tanh(U_CLAMP)``: the ``u`` of an action."""
    limit = math.tanh(U_CLAMP)
    return torch.atanh((action / bound).clamp(-limit, limit))


def controller_feedback(controller: Callable[..., Tensor]) -> Feedback:
    """The reference controller's action in ``u`` space: a feedback restart with ``u = 0`` plays the controller
    (to the ``U_CLAMP`` rounding of its saturated actions), and ``u`` is a residual on it."""
    def offset(system: System, state: Tensor, params: Any = None) -> Tensor:
        return _to_u(controller(system, state, params).to(state.dtype), system.max_action)
    return offset


@dataclass(frozen=True)
class LQRFeedback:
    """Feedback for a system whose controller is not differentiable: inside a basin of the goal, the discrete LQR
    of ``system.step`` linearised there (``u = -K e``, clipped; its ``u``-space value), zero outside.

    ``goal``: the goal state; ``angles``: the indices of the state that are angles (``e`` wraps them into
    ``[-pi, pi)``); ``q``, ``r``: the LQR weights; ``basin``: ``e^T P e`` below which the feedback acts (``P`` the
    Riccati solution)."""

    goal: tuple[float, ...]
    angles: tuple[int, ...]
    q: tuple[float, ...]
    r: float
    basin: float

    def gains(self, system: System) -> tuple[Tensor, Tensor]:
        """``(K [action_dim, S], P [S, S])`` in float64 at ``system``'s fixed values (Riccati iteration)."""
        return _lqr_gains(system, self)

    def __call__(self, system: System, state: Tensor, params: Any = None) -> Tensor:
        k, p = (m.to(state) for m in self.gains(system))
        e = state - state.new_tensor(self.goal)
        if self.angles:
            index = list(self.angles)
            wrapped = torch.remainder(e[..., index] + math.pi, 2 * math.pi) - math.pi
            e = e.index_copy(-1, torch.tensor(index), wrapped)
        inside = ((e @ p) * e).sum(-1, keepdim=True) < self.basin
        bound = system.max_action
        action = (-(e @ k.T)).clamp(-bound, bound)
        return torch.where(inside, _to_u(action, bound), torch.zeros_like(action))


_GAINS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _lqr_gains(system: System, feedback: LQRFeedback) -> tuple[Tensor, Tensor]:
    key = (system.system, tuple(sorted(system.defaults().items())), feedback)
    if key not in _GAINS:
        x0 = torch.tensor(feedback.goal, dtype=torch.float64)
        u0 = torch.zeros(system.action_dim, dtype=torch.float64)
        constants = system.constants(like=x0)
        a = torch.autograd.functional.jacobian(lambda x: system.step(x, u0, constants)[0], x0)
        b = torch.autograd.functional.jacobian(lambda u: system.step(x0, u, constants)[0], u0)
        q = torch.diag(torch.tensor(feedback.q, dtype=torch.float64))
        r = feedback.r * torch.eye(system.action_dim, dtype=torch.float64)
        p = q
        for _ in range(5000):
            k = torch.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
            new = q + a.T @ p @ (a - b @ k)
            new = 0.5 * (new + new.T)
            done = torch.allclose(new, p, rtol=1e-12, atol=1e-12)
            p = new
            if done:
                break
        _GAINS[key] = (torch.linalg.solve(r + b.T @ p @ b, b.T @ p @ a), p)
    return _GAINS[key]


#: Feedback of the systems whose reference controller is not differentiable (the acrobot's searches its catch).
#: The acrobot's: its controller's own LQR weights and basin (``research/systems/acrobot.py``), at the upright.
STABILISERS: dict[str, Feedback] = {
    "acrobot": LQRFeedback(goal=(math.pi, 0.0, 0.0, 0.0), angles=(0, 1), q=(1.0, 1.0, 0.1, 0.1), r=1.0, basin=2.0),
}


def feedback_of(system: System, controller: Callable[..., Tensor] | None) -> tuple[Feedback | None, str]:
    """``(feedback, description)`` for ``system``: its entry of :data:`STABILISERS`, else its reference controller
    where that is differentiable (its action carries a gradient to the state), else ``(None, "none")``."""
    if system.system in STABILISERS:
        feedback = STABILISERS[system.system]
        return feedback, (f"LQR at the goal inside e^T P e < {feedback.basin:g}"
                          if isinstance(feedback, LQRFeedback) else "stabiliser")
    if controller is None:
        return None, "none"
    probe = system.initial_state((2,), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    try:
        differentiable = bool(controller(system, probe, None).requires_grad)
    except RuntimeError:
        differentiable = False
    return (controller_feedback(controller), "reference controller") if differentiable else (None, "none")


# ---------------------------------------------------------------------------------------------------- warm starts
def _smooth_noise(shape: tuple[int, int, int], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Standard-normal values at :data:`NOISE_KNOTS` knots, linearly interpolated over ``shape[1]`` steps."""
    n, horizon, dims = shape
    knots = torch.randn((n * dims, 1, min(NOISE_KNOTS, horizon)), generator=generator, dtype=torch.float64)
    smooth = F.interpolate(knots, size=horizon, mode="linear", align_corners=True)
    return smooth.reshape(n, dims, horizon).transpose(1, 2).to(dtype)


def restart_kinds(restarts: int, controller: bool, feedback: bool) -> list[str]:
    """The first ``restarts`` of :data:`RESTART_KINDS` (cycled; without a controller the ``reference`` and
    ``mirror`` kinds are left out, without feedback the ``feedback`` kinds)."""
    kinds = [k for k in RESTART_KINDS if (controller or k.partition("+")[0] not in ("reference", "mirror"))
             and (feedback or not k.startswith("feedback"))]
    if not kinds:
        kinds = list(OPEN_LOOP_KINDS)
    return [kinds[k % len(kinds)] for k in range(restarts)]


def warm_starts(kinds: Sequence[str], reference_u: Tensor | None, residual_u: Tensor | None,
                generator: torch.Generator, shape: tuple[int, int, int], dtype: torch.dtype = torch.float32
                ) -> tuple[Tensor, Tensor]:
    """``(u [K, N, H, action_dim], feedback [K] bool)`` for the restart ``kinds``:

    - ``feedback[+s]``: with feedback (:func:`play`), ``u`` = ``residual_u`` (the reference controller's actions
      less the feedback's, along its trajectory: it replays the controller; zero without one), plus ``s`` times
      smooth noise;
    - ``reference[+s]``, ``mirror[+s]``: open-loop, the reference controller's actions in ``u`` space
      (``reference_u``), or their negation, plus noise;
    - ``random[+s]``: open-loop smooth noise of scale ``s`` (default 1.5); ``zero``: open-loop zero.
    """
    out, feedback = [], []
    for kind in kinds:
        root, _, scale = kind.partition("+")
        if root in ("reference", "mirror") and reference_u is None:
            raise ValueError(f"restart kind {kind!r} needs a reference controller")
        if root == "feedback":
            u = torch.zeros(shape, dtype=dtype) if residual_u is None else residual_u.clone()
        elif root == "zero":
            u = torch.zeros(shape, dtype=dtype)
        elif root == "random":
            u = _smooth_noise(shape, generator, dtype) * float(scale or 1.5)
            scale = ""
        elif root in ("reference", "mirror"):
            u = reference_u.clone() if root == "reference" else -reference_u
        else:
            raise ValueError(f"unknown restart kind {kind!r}; expected feedback, reference, mirror, random or zero")
        if scale:
            u = u + float(scale) * _smooth_noise(shape, generator, dtype)
        out.append(u.clamp(-2 * U_CLAMP, 2 * U_CLAMP))
        feedback.append(root == "feedback")
    return torch.stack(out), torch.tensor(feedback)


# ---------------------------------------------------------------------------------------------------- optimiser
@dataclass
class TrajOptResult:
    """The outcome of :func:`optimise` (tensors on the CPU, per start ``[N]`` unless noted)."""

    actions: Tensor  # [N, H, action_dim]: the best action sequence found per start
    returns: Tensor  # its return as the optimiser measured it
    restart: Tensor  # index of the restart it came from
    iteration: Tensor  # iteration at which it was found (0: the warm start itself)
    warm_returns: Tensor  # [restarts, N]: each warm start's return
    kinds: list[str]  # the kind of each restart
    history: list[float] = field(default_factory=list)  # mean of the best return so far, per iteration
    current: list[float] = field(default_factory=list)  # mean over starts of the best restart's current return
    seconds: float = 0.0


def _tile(value: Any, k: int) -> Any:
    """``value [N, ...]`` repeated ``k`` times along a new leading axis and flattened to ``[k N, ...]``."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    return value.unsqueeze(0).expand(k, *value.shape).reshape(k * value.shape[0], *value.shape[1:])


def play(system: System, state: Tensor, u: Tensor, params: Any = None, noise: Tensor | None = None,
         feedback: Feedback | None = None, rows: Tensor | None = None,
         grad_decay: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """The rollout :func:`optimise` differentiates: action ``a_t = max_action * tanh(u_t + f_t)``, ``f_t = 0``
    (open-loop) or, on the rows where ``rows [B, 1]`` is 1, the ``feedback``'s ``u``-space offset at the current
    state. Returns ``(rewards [B, H], final state, actions [B, H, action_dim])``: the actions taken, whose open-loop
    replay (:func:`rollout_actions`) is this very rollout."""
    constants = system.constants(params, like=state)
    given = params if params is not None and system.ranges else None
    bound = system.max_action
    x = state
    rewards, actions = [], []
    for t in range(u.shape[1]):
        v = u[:, t]
        if feedback is not None and rows is not None:
            v = v + rows * feedback(system, x, given)
        a = bound * torch.tanh(v)
        x, reward = system.step(x, a, constants, None if noise is None else noise[:, t])
        rewards.append(reward)
        actions.append(a)
        if t + 1 < u.shape[1]:
            x = _decay(x, grad_decay)
    return torch.stack(rewards, dim=-1), x, torch.stack(actions, dim=1)


def optimise(system: System, state: Tensor, params: Any, init_u: Tensor, iterations: int, lr: float = 0.1,
             noise: Tensor | None = None, grad_decay: float = 1.0, curriculum: float = 0.0,
             kinds: Sequence[str] | None = None, feedback: Feedback | None = None,
             with_feedback: Tensor | None = None, quiet: bool = False) -> TrajOptResult:
    """Adam on ``u [K, N, H, action_dim]`` (``init_u``) to maximise each start's return of :func:`play` (restart
    ``k`` with ``feedback`` where ``with_feedback[k]``); keeps the best action sequence per start over restarts
    and iterations (see the module docstring). ``state [N, state_dim]``, ``params`` (tensors ``[N]`` or ``None``)
    and ``noise [N, H, noise_dim]`` are shared by the ``K`` restarts."""
    start = time.perf_counter()
    k, n, horizon, dims = init_u.shape
    x0 = _tile(state, k)
    tiled_params = None if params is None else type(params)(*(_tile(p, k) for p in params))
    tiled_noise = None if noise is None else _tile(noise, k)
    rows = None
    if feedback is not None and with_feedback is not None and bool(with_feedback.any()):
        rows = with_feedback.to(state.dtype).repeat_interleave(n).unsqueeze(-1)  # [K N, 1]
    u = init_u.detach().clone().to(state.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([u], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: LR_FINAL + (1 - LR_FINAL) * 0.5 * (1 + math.cos(math.pi * min(i, iterations) /
                                                                             max(iterations, 1))))
    best_returns = torch.full((n,), -math.inf, dtype=state.dtype)
    best_actions = torch.zeros((n, horizon, dims), dtype=state.dtype)
    best_restart = torch.zeros(n, dtype=torch.long)
    best_iteration = torch.zeros(n, dtype=torch.long)
    warm_returns = torch.empty(k, n, dtype=state.dtype)
    history: list[float] = []
    current: list[float] = []
    arange = torch.arange(n)
    bar = tqdm(range(iterations + 1), desc=f"trajopt {system.system}", unit="it", disable=quiet, leave=False)
    for i in bar:
        last = i == iterations
        with torch.set_grad_enabled(not last):
            rewards, _, actions = play(system, x0, u.reshape(k * n, horizon, dims), tiled_params, tiled_noise,
                                       feedback if rows is not None else None, rows, grad_decay)
            returns = rewards.sum(-1)
        values = returns.detach().reshape(k, n)
        if i == 0:
            warm_returns.copy_(values)
        top, which = values.max(0)
        better = top > best_returns
        if bool(better.any()):
            chosen = actions.detach().reshape(k, n, horizon, dims)[which, arange]
            best_actions[better] = chosen[better]
            best_returns = torch.where(better, top, best_returns)
            best_restart = torch.where(better, which, best_restart)
            best_iteration = torch.where(better, torch.full_like(best_iteration, i), best_iteration)
        history.append(best_returns.double().mean().item())
        current.append(top.double().mean().item())
        bar.set_postfix_str(f"best mean {history[-1]:.2f}, current {current[-1]:.2f}")
        if last:
            break
        if curriculum > 0.0:
            fraction = min(1.0, curriculum + (1.0 - curriculum) * i / max(1, iterations // 2))
            steps = max(1, min(horizon, int(round(fraction * horizon))))
            objective = rewards[:, :steps].sum()
        else:
            objective = returns.sum()
        optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        grad = u.grad
        finite = torch.isfinite(grad).flatten(2).all(-1)  # [K, N]: one start's sequence is zeroed as a whole
        if not bool(finite.all()):
            grad.copy_(torch.where(finite[..., None, None], grad, torch.zeros_like(grad)))
        optimizer.step()
        schedule.step()
    bar.close()
    return TrajOptResult(best_actions, best_returns, best_restart, best_iteration, warm_returns, list(kinds or []),
                         history, current, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- the reference
@dataclass
class Reference:
    """Everything :func:`trajopt_reference` measured, per start ``[N]`` (tensors on the CPU)."""

    system: System
    trajopt: Tensor  # the kept sequences' returns, rolled out again in the exact physics (the evaluator's dtype)
    trajopt_float64: Tensor  # the same actions rolled out in float64
    controller: Tensor  # the reference controller's closed-loop return (nan without a controller)
    best: Tensor  # per start the better of trajopt and controller
    trajopt_success: Tensor
    controller_success: Tensor
    best_success: Tensor
    trajopt_goal_error: Tensor
    controller_goal_error: Tensor
    best_goal_error: Tensor
    result: TrajOptResult
    warm_rollout: Tensor  # [restarts, N] the warm starts' returns, rolled out again like the kept sequences
    optimiser_mismatch: float  # max |trajopt - result.returns|: the re-rollout reproduces the optimiser's numbers
    settings: dict[str, Any]
    seconds: dict[str, float]


def trajopt_reference(system: System | str, num_episodes: int = EVAL_EPISODES, restarts: int = 6,
                      iterations: int = 300, lr: float = 0.1, grad_decay: float = 1.0, curriculum: float = 0.0,
                      horizon: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                      kinds: Sequence[str] | None = None, quiet: bool = False) -> Reference:
    """The per-start reference of ``system`` on the first ``num_episodes`` of the evaluator's fixed starts (with its
    parameter draws and noise; ``horizon`` default: the system's): the reference controller's rollout, ``restarts``
    warm starts (:func:`warm_starts`, random parts from ``seed``) optimised for ``iterations`` Adam steps
    (:func:`optimise`), the kept sequences rolled out again in ``dtype`` and in float64."""
    system = get_system(system) if isinstance(system, str) else system
    horizon = system.horizon if horizon is None else horizon
    params = evaluation_params(system, num_episodes, dtype=dtype)
    state = evaluation_states(num_episodes, dtype=dtype, physics=system, params=params)
    noise = evaluation_noise(system, num_episodes, horizon, dtype=dtype)
    controller = reference_controller_of(system)
    bound = system.max_action
    shape = (num_episodes, horizon, system.action_dim)
    seconds: dict[str, float] = {}

    tic = time.perf_counter()
    feedback, feedback_text = feedback_of(system, controller)
    if controller is not None:
        ctrl_returns, ctrl_final, ctrl_actions, ctrl_states = controller_rollout(system, controller, state, horizon,
                                                                                 params, noise)
        reference_u = _to_u(ctrl_actions.double(), bound)
        residual_u = None
        if feedback is not None:
            given = params if params is not None and system.ranges else None
            with torch.no_grad():
                along = feedback(system, ctrl_states.reshape(-1, ctrl_states.shape[-1]),
                                 None if given is None else type(given)(*(
                                     p.repeat_interleave(horizon) if isinstance(p, Tensor) and p.dim() else p
                                     for p in given)))
            residual_u = (reference_u - along.reshape(reference_u.shape).double()).to(dtype)
        reference_u = reference_u.to(dtype)
    else:
        ctrl_returns = torch.full((num_episodes,), math.nan, dtype=dtype)
        ctrl_final, reference_u, residual_u = None, None, None
    seconds["controller"] = time.perf_counter() - tic

    generator = torch.Generator().manual_seed(seed)
    kinds = list(kinds) if kinds is not None else restart_kinds(restarts, controller is not None,
                                                                  feedback is not None)
    init_u, with_feedback = warm_starts(kinds, reference_u, residual_u, generator, shape, dtype)
    result = optimise(system, state, params, init_u, iterations, lr, noise, grad_decay, curriculum, kinds,
                      feedback, with_feedback, quiet)
    seconds["optimise"] = result.seconds

    tic = time.perf_counter()
    with torch.no_grad():
        traj_returns, traj_final, _ = rollout_actions(system, state, result.actions, params, noise)
        warm = torch.stack([play(system, state, u, params, noise, feedback,
                                 torch.full((num_episodes, 1), float(fb), dtype=dtype))[0].sum(-1)
                            for u, fb in zip(init_u, with_feedback, strict=True)])
        f64 = lambda p: None if p is None else type(p)(*(v.double() for v in p))  # noqa: E731
        traj64 = rollout_actions(system, state.double(), result.actions.double(), f64(params),
                                 None if noise is None else noise.double())[0]
    seconds["check"] = time.perf_counter() - tic

    success = system.is_success(traj_final)
    error = system.goal_error(traj_final.double())
    if ctrl_final is not None:
        ctrl_success, ctrl_error = system.is_success(ctrl_final), system.goal_error(ctrl_final.double())
        use_ctrl = ctrl_returns > traj_returns
    else:
        ctrl_success = torch.zeros(num_episodes, dtype=torch.bool)
        ctrl_error = torch.full((num_episodes,), math.nan, dtype=torch.float64)
        use_ctrl = torch.zeros(num_episodes, dtype=torch.bool)
    settings = {"system": system.system, "physics": system.name, "episodes": num_episodes, "horizon": horizon,
                "restarts": len(kinds), "restart_kinds": kinds, "iterations": iterations, "lr": lr,
                "lr_final": lr * LR_FINAL, "grad_decay": grad_decay, "curriculum": curriculum, "seed": seed,
                "dtype": str(dtype).removeprefix("torch."), "u_clamp": U_CLAMP, "noise_knots": NOISE_KNOTS,
                "reference_controller": controller is not None, "feedback": feedback_text}
    return Reference(
        system=system, trajopt=traj_returns, trajopt_float64=traj64, controller=ctrl_returns,
        best=torch.where(use_ctrl, ctrl_returns, traj_returns),
        trajopt_success=success, controller_success=ctrl_success,
        best_success=torch.where(use_ctrl, ctrl_success, success),
        trajopt_goal_error=error, controller_goal_error=ctrl_error,
        best_goal_error=torch.where(use_ctrl, ctrl_error, error),
        result=result, warm_rollout=warm,
        optimiser_mismatch=(traj_returns.double() - result.returns.double()).abs().max().item(),
        settings=settings, seconds=seconds)


# ---------------------------------------------------------------------------------------------------- files
def _stats(returns: Tensor, success: Tensor, goal_error: Tensor) -> dict[str, float]:
    if not bool(torch.isfinite(returns).all()):
        return {}
    return summarize_returns(returns, success, goal_error=goal_error)


def code_state(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The commit (:func:`research.runs.git_commit`, ``-dirty`` when code outside ``results/`` is modified), the
    modified tracked paths outside ``results/``, and the SHA-256 of the files that shape this result."""
    from research.runs import git_commit

    root = Path(__file__).resolve().parents[2]
    try:
        modified = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                                  cwd=root, capture_output=True, text=True, check=True, timeout=5).stdout
        modified_paths = sorted(line[3:] for line in modified.splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError):
        modified_paths = []
    hashes = {}
    for path in paths:
        file = Path(path)
        if file.is_file():
            hashes[str(file.resolve().relative_to(root) if file.resolve().is_relative_to(root) else file)] = (
                hashlib.sha256(file.read_bytes()).hexdigest())
    return {"git_commit": git_commit(), "modified_paths": modified_paths, "code_sha256": hashes}


def summary(reference: Reference) -> dict[str, Any]:
    """The ``summary.json`` content (without the run's provenance, which :func:`main` adds)."""
    r = reference
    result = r.result
    improved = r.trajopt > r.controller
    return {
        "system": r.system.system,
        "physics": r.system.name,
        "method": "trajopt",
        "description": ("per start, the better of open-loop trajectory optimisation (Adam on max_action*tanh(u), "
                        "warm-started from the reference controller and perturbed/random restarts, best kept) and "
                        "the reference controller's closed-loop rollout; every return rolled out in the exact "
                        "physics"),
        "reference": _stats(r.best, r.best_success, r.best_goal_error),
        "trajopt": _stats(r.trajopt, r.trajopt_success, r.trajopt_goal_error),
        "trajopt_float64": {k: v for k, v in _stats(r.trajopt_float64, r.trajopt_success,
                                                    r.trajopt_goal_error).items() if k.startswith("return")},
        "controller": _stats(r.controller, r.controller_success, r.controller_goal_error),
        "trajopt_better_than_controller": float(improved.double().mean()),
        "warm_start": {kind: float(row.double().mean()) for kind, row in zip(
            [f"{i}:{k}" for i, k in enumerate(result.kinds)], r.warm_rollout, strict=True)},
        "chosen_restart": {f"{i}:{k}": int((result.restart == i).sum()) for i, k in enumerate(result.kinds)},
        "last_improvement_iteration_median": float(result.iteration.double().median()),
        "optimiser_rollout_mismatch_max": r.optimiser_mismatch,
        "float64_gap_max": float((r.trajopt_float64.double() - r.trajopt.double()).abs().max()),
        "note": NOTES.get(r.system.system, ""),
        "history_best_mean": [round(v, 4) for v in result.history[:: max(1, len(result.history) // 50)]]
        + [round(result.history[-1], 4)],
        "settings": r.settings,
        "seconds": r.seconds,
    }


def returns_csv(reference: Reference) -> str:
    """One row per start: its index among the evaluation states, the three returns, the float64 replay, the
    restart and iteration the kept sequence came from."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["episode", "controller_return", "trajopt_return", "best_return", "trajopt_return_float64",
                     "restart", "iteration"])
    r = reference
    for i in range(r.best.numel()):
        writer.writerow([i, f"{r.controller[i].item():.8g}", f"{r.trajopt[i].item():.8g}",
                         f"{r.best[i].item():.8g}", f"{r.trajopt_float64[i].item():.10g}",
                         int(r.result.restart[i]), int(r.result.iteration[i])])
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-start trajectory-optimisation reference of a system -> <out>/summary.json, returns.csv")
    parser.add_argument("--system", required=True, help="a name of research.systems.SYSTEMS")
    parser.add_argument("--physics", default="default", help="the system's preset (default: default)")
    parser.add_argument("--out", type=Path, required=True, help="e.g. results/optimal/cartpole")
    parser.add_argument("--episodes", type=int, default=None, help="the first N evaluation states (default 1000)")
    parser.add_argument("--restarts", type=int, default=None, help="warm starts per start")
    parser.add_argument("--iterations", type=int, default=None, help="Adam steps")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate (cosine to 5%%)")
    parser.add_argument("--grad-decay", type=float, default=None, help="gradient factor per step back in time")
    parser.add_argument("--curriculum", type=float, default=None,
                        help="initial fraction of the horizon in the objective (0: the full horizon throughout)")
    parser.add_argument("--horizon", type=int, default=None, help="default: the system's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random restarts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        system = get_system(args.system, args.physics)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    defaults = DEFAULTS.get(system.system, FALLBACK_DEFAULTS)
    pick = {key: getattr(args, key) if getattr(args, key) is not None else defaults[key] for key in defaults}
    for key in ("episodes", "restarts", "iterations"):
        if pick[key] < (0 if key == "iterations" else 1):
            parser.exit(2, f"error: --{key} must be positive, got {pick[key]}\n")
    from research.runs import device_description, library_versions

    provenance = code_state([__file__, importlib.import_module(type(system).__module__).__file__,
                             importlib.import_module("research.systems.base").__file__,
                             importlib.import_module("research.evaluation").__file__])
    tic = time.perf_counter()
    reference = trajopt_reference(system, pick["episodes"], pick["restarts"], pick["iterations"], pick["lr"],
                                  pick["grad_decay"], pick["curriculum"], args.horizon, args.seed,
                                  quiet=args.quiet)
    wall = time.perf_counter() - tic
    out = summary(reference)
    out.update({"wall_clock_s": wall, "argv": list(sys.argv[1:] if argv is None else argv), **provenance,
                "versions": library_versions(), "device": device_description("cpu"),
                "torch_threads": torch.get_num_threads()})
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "summary.json", json.dumps(out, indent=2) + "\n")
    _write(args.out / "returns.csv", returns_csv(reference))
    ref, traj, ctrl = out["reference"], out["trajopt"], out["controller"]
    print(f"{system.system}: reference mean {ref['return_mean']:.2f} (median {ref['return_median']:.2f}); trajopt "
          f"{traj['return_mean']:.2f}; controller {ctrl.get('return_mean', math.nan):.2f}; {wall:.0f} s -> "
          f"{args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
