"""The gap between a learner and the optimum, taken apart into parts that add up (issue #22).

Every number is a protocol return (:func:`research.evaluation.evaluate_policy`: the 1000 fixed start states, 200 steps,
undiscounted, the fixed noise and parameter draws). For a pendulum preset and a learner trained at discount ``g``::

    R*       the time-varying finite-horizon DP policy (greedy w.r.t. V_{t+1} at step t; optimal.evaluate_solution)
    R_stat   the DP's stationary greedy policy (greedy w.r.t. V_1 at every step: optimal.GreedyPolicy)
    R_g      the stationary greedy policy of the DP of the *discounted* objective at the learner's discount g
             (V_H = 0, V_t = max_u r + g V_{t+1}, H = 200; greedy w.r.t. g V_1, :func:`solve_discounted`)
    R_dist   R_g's policy in the learners' MLP (2x64 tanh, squashed: make_policy): the better on the protocol of two
             students, each a labelled reference row, never a learner:
             - ``mse``: DAgger with an MSE loss on the teacher's actions (:func:`distill`)
             - ``value``: "SHAC with an oracle critic" (:func:`value_distill`): warm-started from the MSE student, it
               maximises the DP's own discounted objective through K-step differentiable rollouts of the physics
               ended by the DP's value, ``-(sum_{t<K} g^t r_t + g^K V_g(s_K))`` with ``V_g`` the DP table
               interpolated bilinearly (:class:`GridValue`), on states the student's own rollouts visit
    R_L      the learner's final evaluation return (mean over its seeds), read from an experiment directory

    gap = R* - R_L = (R* - R_stat)      stationarity
                   + (R_stat - R_g)     objective        (exactly 0 at g = 1: the same DP, the same policy)
                   + (R_g - R_dist)     representation
                   + (R_dist - R_L)     optimisation     (what remains)

A telescoping sum, so the parts add up to the gap (up to float rounding); any part may be negative (a stationary
policy may beat the time-varying one within the grid's error; a learner may beat the distilled reference).
``R_stat`` is the best stationary policy *at hand*, not a proven best one.

**Grid error.** Every DP return above is measured at the main grid and at a coarse one (about half the nodes per
axis); ``|R(main) - R(coarse)|`` is taken as that return's resolution error (refinement roughly halves it, so it
overstates the main grid's error), and a part is flagged ``within_dp_error`` when its magnitude is at most the sum
of its ends' errors.

**Systems without a grid DP** (cart-pole, acrobot: :mod:`research.analysis.trajopt`): ``R*`` is the per-start
reference there (``results/optimal/<system>/summary.json``: the better of the trajectory-optimisation plan and the
reference controller per start, time-varying open-loop plans), ``R_stat`` the reference controller (stationary, the
best stationary controller at hand), the objective part is *not defined* (no discounted optimum: left empty), and the
representation part distills the reference controller into the MLP (the MSE student only: there is no DP value
there for the value-based one).

``python -m research.analysis.gap`` (``make gap``) writes ``<out>/summary.csv`` (a row per experiment, physics and
learner, plus the reference rows), ``<out>/dp.csv`` (each DP return at each grid), ``<out>/config.json`` (settings and
the code's provenance, :func:`research.analysis.trajopt.code_state`); ``scripts/gap_report.py`` writes ``REPORT.md``
and the figure. A run for some physics (``--physics``) keeps the other physics' rows already in ``<out>``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from research.analysis.optimal import (
    GreedyPolicy,
    OptimalSolution,
    StateGrid,
    evaluate_solution,
    resolve_physics,
    solve_optimal,
)
from research.config import ConfigError
from research.envs.presets import PRESETS
from research.evaluation import EVAL_EPISODES, EVAL_HORIZON, evaluate_policy
from research.policies import SquashedMLP, make_policy
from research.systems import SYSTEMS, System, get_system

#: The parts, in the order of the chain R* -> R_stat -> R_g -> R_dist -> R_L.
PARTS = ("stationarity", "objective", "representation", "optimisation")
#: Experiment directories read by default (learners' committed results).
DEFAULT_EXPERIMENTS = ("results/pendulum_compare", "results/when_study", "results/systems", "results/gap_learners",
                       "results/gap_learners_shac")

log = logging.getLogger(__name__)

Teacher = Callable[[Tensor], Tensor]  # state [M, state_dim] -> action [M, action_dim]


# ---------------------------------------------------------------------------------------------------- the DP parts
def solve_discounted(physics: Any, discount: float, grid: tuple[int, int] = (401, 401), actions: int = 11,
                     horizon: int = EVAL_HORIZON, quiet: bool = True, noise_nodes: int = 7) -> OptimalSolution:
    """The ``horizon``-step DP of the discounted objective, ``V_t = max_u E[r + discount * V_{t+1}]``, ``V_H = 0``,
    as a one-step :class:`OptimalSolution` whose ``value(1)`` is ``discount * V_1``: its :attr:`policy` (greedy at
    step 0) is the stationary greedy policy of the discounted problem.

    The grid, torques, noise quadrature and transitions are those of :func:`solve_optimal` (a one-step solve builds
    them; its backup is applied to ``discount * V_{t+1}``: the backup is linear in the following table). At
    ``discount = 1`` the tables are those of the undiscounted solve, bit for bit.
    """
    if not 0.0 < discount <= 1.0:
        raise ConfigError(f"discount must be in (0, 1], got {discount}")
    start = time.perf_counter()
    # horizon 1 with a segment length of 2 keeps the solve's Backup (the transitions) on the solution
    base = solve_optimal(physics, grid, actions, horizon=1, noise_nodes=noise_nodes, checkpoint_every=2)
    backup = base._backup
    following = torch.zeros(base.grid.shape, dtype=base.dtype)
    name = getattr(base.physics, "name", "physics")
    for _ in tqdm(range(horizon - 1), desc=f"DP {name} g={discount} {grid[0]}x{grid[1]}", disable=quiet,
                  leave=False, unit="step"):
        following = backup(following if discount == 1.0 else discount * following)[0]
    scaled = following if discount == 1.0 else discount * following  # discount * V_1
    value0, greedy0 = backup(scaled)
    return OptimalSolution(base.physics, base.params, base.grid, base.torques, 1, {0: value0, 1: scaled},
                           {0: greedy0}, None, 1, base.noise, time.perf_counter() - start)


def protocol_return(policy: Any, physics: Any, episodes: int = EVAL_EPISODES) -> float:
    """The protocol's mean return of ``policy`` (observation -> action) on ``physics``."""
    return float(evaluate_policy(policy, num_episodes=episodes, physics=physics)["return_mean"])


@dataclass
class DPReturns:
    """The DP returns of one pendulum preset at one grid: ``optimum`` (time-varying), ``stationary`` (greedy w.r.t.
    ``V_1``), ``discounted`` (discount -> the stationary greedy policy's return at that discount) and the policies
    (``policies``: discount -> :class:`GreedyPolicy`, ``1.0`` the undiscounted one)."""

    grid: tuple[int, int]
    optimum: float
    stationary: float
    discounted: dict[float, float]
    policies: dict[float, GreedyPolicy]
    seconds: float


def dp_returns(physics: Any, discounts: Sequence[float], grid: tuple[int, int], actions: int = 11,
               episodes: int = EVAL_EPISODES, quiet: bool = True) -> DPReturns:
    """:class:`DPReturns` of ``physics`` at ``grid`` for each discount in ``discounts`` (``1.0`` reuses the
    undiscounted solve's stationary policy: the same tables)."""
    start = time.perf_counter()
    physics = resolve_physics(physics)
    solution = solve_optimal(physics, grid, actions, quiet=quiet)
    optimum = float(evaluate_solution(solution, episodes)["return_mean"])
    stationary_policy = GreedyPolicy(solution, step=0)
    stationary = protocol_return(stationary_policy, physics, episodes)
    policies, returns = {1.0: stationary_policy}, {1.0: stationary}
    for discount in sorted({float(d) for d in discounts} - {1.0}):
        policies[discount] = solve_discounted(physics, discount, grid, actions, quiet=quiet).policy
        returns[discount] = protocol_return(policies[discount], physics, episodes)
    return DPReturns(grid, optimum, stationary, returns, policies, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- distillation
@dataclass
class DistillConfig:
    """DAgger distillation of a teacher into the learners' MLP (:func:`distill`)."""

    rounds: int = 3
    """Rounds after the first (teacher-rolled) data: roll the student, label with the teacher, aggregate, refit."""
    starts: int = 128
    """Episodes rolled per round from the system's reset distribution (a generator apart from the evaluation's)."""
    steps: int = 200
    """Adam steps per round on the aggregated data (the last round runs twice as many)."""
    batch: int = 1024
    """Minibatch of (observation, teacher action) pairs per Adam step."""
    lr: float = 3e-3
    """Adam learning rate (cosine-decayed to 10% within each round)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """The student's hidden layers: the learners' own default MLP."""
    activation: str = "tanh"
    """The student's activation: the learners' own default."""
    seed: int = 0
    """Seed of the student's initialisation, the training starts and the minibatches."""

    def __post_init__(self) -> None:
        for name in ("rounds", "starts", "steps", "batch"):
            if int(getattr(self, name)) < (0 if name == "rounds" else 1):
                raise ConfigError(f"distill.{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"distill.lr must be > 0, got {self.lr}")


@dataclass
class Distilled:
    """The distilled student and its record: ``returns`` (protocol return after each round), ``mae`` (mean absolute
    action error / max_action on all aggregated states after the last fit), ``states`` (aggregated count)."""

    policy: SquashedMLP
    returns: list[float]
    mae: float
    states: int
    seconds: float


@torch.no_grad()
def visited_states(system: System, act: Callable[[Tensor], Tensor], starts: int, generator: torch.Generator,
                   horizon: int | None = None) -> Tensor:
    """States ``[starts * horizon, state_dim]`` visited by ``act`` (state -> action) from ``starts`` draws of the
    system's reset distribution and parameters, in its physics (fresh torque noise where it has noise)."""
    horizon = system.horizon if horizon is None else horizon
    params = system.params((starts,), generator=generator)
    state = system.initial_state((starts,), generator=generator, params=params)
    constants = system.constants(params, like=state)
    states = []
    for _ in range(horizon):
        states.append(state)
        noise = torch.randn((starts, system.noise_dim), generator=generator) if system.needs_noise else None
        state, _ = system.step(state, act(state).to(state.dtype), constants, noise)
    return torch.cat(states)


def distill(system: System, teacher: Teacher, config: DistillConfig | None = None, episodes: int = EVAL_EPISODES,
            quiet: bool = True) -> Distilled:
    """DAgger: the teacher's own rollouts, then ``config.rounds`` times roll the student, label the visited states
    with ``teacher`` (state ``[M, S]`` -> action ``[M, A]``), aggregate, refit (MSE on actions / max_action). The
    student is scored on the protocol after each round (recorded only: the last round's student is the result)."""
    config = config or DistillConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(10_007 + config.seed)
    bound = float(system.max_action)
    student = make_policy(config.hidden_sizes, config.activation, bound, obs_dim=system.obs_dim,
                          act_dim=system.action_dim)
    optimiser = torch.optim.Adam(student.parameters(), lr=config.lr)
    observations, labels, returns = [], [], []

    def label(states: Tensor) -> None:
        with torch.no_grad():
            observations.append(system.observe(states))
            labels.append(teacher(states).reshape(states.shape[0], -1).to(states.dtype) / bound)

    label(visited_states(system, teacher, config.starts, generator))
    for round_ in tqdm(range(config.rounds + 1), desc="distill", disable=quiet, leave=False):
        if round_ > 0:
            label(visited_states(system, lambda s: student(system.observe(s)), config.starts, generator))
        obs, target = torch.cat(observations), torch.cat(labels)
        steps = config.steps * (2 if round_ == config.rounds else 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=config.lr / 10)
        for group in optimiser.param_groups:
            group["lr"] = config.lr
        for _ in range(steps):
            index = torch.randint(obs.shape[0], (min(config.batch, obs.shape[0]),), generator=generator)
            loss = ((student(obs[index]) / bound - target[index]) ** 2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        returns.append(protocol_return(student, system, episodes))
    with torch.no_grad():
        obs, target = torch.cat(observations), torch.cat(labels)
        mae = float((student(obs) / bound - target).abs().mean())
    return Distilled(student, returns, mae, int(obs.shape[0]), time.perf_counter() - start)


def observation_teacher(system: System, policy: Callable[[Tensor], Tensor]) -> Teacher:
    """A state -> action teacher from an observation -> action policy."""
    return lambda state: policy(system.observe(state))


def controller_teacher(system: System) -> Teacher:
    """The system's reference controller (:func:`research.analysis.trajopt.reference_controller_of`) as a teacher
    that is not told the parameter draw."""
    from research.analysis.trajopt import reference_controller_of

    controller = reference_controller_of(system)
    if controller is None:
        raise ValueError(f"system {type(system).__name__} has no reference controller to distill")
    return lambda state: controller(system, state, None)


# ---------------------------------------------------------------------------------------------------- value-based
class GridValue:
    """A DP value table as a function of the state, differentiable in it: ``state [*B, 2] -> [*B]``.

    Bilinear interpolation on the solve's :class:`StateGrid` (:meth:`StateGrid.interpolate`: the angle wrapped on a
    periodic grid, clamped into a wall's range and the speed into ``[-max_speed, max_speed]`` otherwise). The gradient
    w.r.t. ``(th, thdot)`` is the cell's slope (piecewise constant; zero where clamped). The state's angle is the
    system's own representation (unwrapped; in the wall's range with a wall), which is what the grid expects.
    """

    def __init__(self, solution: OptimalSolution, t: int = 0) -> None:
        self.grid: StateGrid = solution.grid
        self.table = solution.value(t)  # [n_th, n_thdot]
        self.stacked = self.grid.stack(self.table)  # [n_th * n_thdot, 4]

    def __call__(self, state: Tensor) -> Tensor:
        value = self.grid.interpolate(None, state[..., 0], state[..., 1], self.stacked.to(state.dtype))
        return value.to(state.dtype)


def dp_value(policy: GreedyPolicy) -> GridValue:
    """``V_g``: the time-0 value table of the DP behind a stationary greedy policy of :func:`dp_returns` (at
    ``g < 1`` the 200-step discounted DP's ``V_0``, within ``g^200`` of the infinite-horizon value; at ``g = 1`` the
    undiscounted finite-horizon DP's ``V_0``, the optimal 200-step return-to-go)."""
    return GridValue(policy.solution, 0)


@dataclass
class ValueDistillConfig:
    """The value-based student (:func:`value_distill`): "SHAC with an oracle critic"."""

    horizons: tuple[int, ...] = (1, 4, 16)
    """Rollout lengths K tried (each warm-started from the same student); the one that scores best on the protocol
    is kept. K = 1 is the one-step lookahead: a policy greedy w.r.t. the DP's Q."""
    rounds: int = 2
    """DAgger-style rounds: roll the current student from fresh starts, aggregate the visited states, train."""
    starts: int = 64
    """Episodes rolled per round from the system's reset distribution (a generator apart from the evaluation's)."""
    steps: int = 200
    """Adam steps per round (the last round runs twice as many)."""
    batch: int = 256
    """Start states of the K-step rollouts per Adam step (a quarter fresh draws of the reset distribution, the rest
    drawn from the aggregated visited states)."""
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 10% within each round)."""
    seed: int = 1
    """Seed of the rollouts' starts, parameter draws, torque noise and minibatches (apart from the MSE student's)."""

    def __post_init__(self) -> None:
        self.horizons = tuple(int(k) for k in self.horizons)
        if not self.horizons or any(k < 1 for k in self.horizons):
            raise ConfigError(f"value_distill.horizons must be positive integers, got {list(self.horizons)}")
        for name in ("rounds", "starts", "steps", "batch"):
            if int(getattr(self, name)) < (0 if name == "rounds" else 1):
                raise ConfigError(f"value_distill.{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"value_distill.lr must be > 0, got {self.lr}")


def value_loss(system: System, policy: Callable[[Tensor], Tensor], value: Callable[[Tensor], Tensor], state: Tensor,
               horizon: int, discount: float, generator: torch.Generator | None = None) -> Tensor:
    """``-(sum_{t<K} g^t r_t + g^K V(s_K))`` averaged over the start states ``state [B, state_dim]``: a scalar,
    differentiable end to end (policy -> physics -> value table's interpolation).

    ``policy``: observation ``[B, obs_dim]`` -> action ``[B, action_dim]``; ``value``: state ``[B, state_dim]`` -> ``[B]``
    (:class:`GridValue`). Each start gets a parameter draw of the system (fresh per call: a randomised physics' draws)
    and fresh torque noise where the physics has noise; both from ``generator``.
    """
    batch = state.shape[0]
    params = system.params((batch,), generator=generator)
    constants = system.constants(params, like=state)
    total = torch.zeros(batch, dtype=state.dtype)
    weight = 1.0
    for _ in range(horizon):
        noise = (torch.randn((batch, system.noise_dim), generator=generator, dtype=state.dtype)
                 if system.needs_noise else None)
        state, reward = system.step(state, policy(system.observe(state)), constants, noise)
        total = total + weight * reward
        weight *= discount
    return -(total + weight * value(state)).mean()


@dataclass
class ValueDistilled:
    """The value-based student and its record: ``horizon`` (the K kept), ``by_horizon`` (K -> the protocol return
    after each round), ``returns`` (those of the K kept), ``warm`` (the warm start's protocol return), ``states``
    (the aggregated start states of the K kept)."""

    policy: SquashedMLP
    horizon: int
    by_horizon: dict[int, list[float]]
    returns: list[float]
    warm: float
    states: int
    seconds: float


def value_distill(system: System, value: Callable[[Tensor], Tensor], discount: float, warm: SquashedMLP,
                  config: ValueDistillConfig | None = None, episodes: int = EVAL_EPISODES, quiet: bool = True,
                  warm_return: float | None = None) -> ValueDistilled:
    """For each K in ``config.horizons``: a copy of ``warm`` (the MSE student) trained by Adam on :func:`value_loss`
    from start states that its own rollouts visit (aggregated over ``config.rounds`` rounds, plus fresh draws of the
    reset distribution), scored on the protocol after each round. The K whose last round scores best is kept (ties:
    the shorter). ``warm`` is left untouched."""
    config = config or ValueDistillConfig()
    start = time.perf_counter()
    warm_score = protocol_return(warm, system, episodes) if warm_return is None else float(warm_return)
    results: dict[int, tuple[SquashedMLP, list[float], int]] = {}
    for horizon in config.horizons:
        generator = torch.Generator().manual_seed(20_011 + config.seed)  # the same starts for every K
        student = copy.deepcopy(warm)
        act = observation_teacher(system, student)  # state -> action
        optimiser = torch.optim.Adam(student.parameters(), lr=config.lr)
        buffer: list[Tensor] = []
        returns = []
        for round_ in tqdm(range(config.rounds + 1), desc=f"value K={horizon}", disable=quiet, leave=False):
            buffer.append(visited_states(system, act, config.starts, generator))
            states = torch.cat(buffer)
            steps = config.steps * (2 if round_ == config.rounds else 1)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=config.lr / 10)
            for group in optimiser.param_groups:
                group["lr"] = config.lr
            fresh = max(1, config.batch // 4)
            for _ in range(steps):
                index = torch.randint(states.shape[0], (config.batch - fresh,), generator=generator)
                batch = torch.cat((states[index], system.initial_state((fresh,), generator=generator)))
                loss = value_loss(system, student, value, batch, horizon, discount, generator)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
            returns.append(protocol_return(student, system, episodes))
        results[horizon] = (student, returns, int(states.shape[0]))
    best = max(results, key=lambda k: (results[k][1][-1], -k))
    policy, returns, count = results[best]
    return ValueDistilled(policy, best, {k: r[1] for k, r in results.items()}, returns, warm_score, count,
                          time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- learners
def objective_discount(config: dict[str, Any]) -> float | None:
    """The discount of the objective a run's *last* stage optimised, from its config dict: a nested stage's
    ``discount`` (e.g. ``finetune``) over the top-level ``discount`` over ``gamma``; ``None`` without any."""
    nested = [value["discount"] for value in config.values() if isinstance(value, dict) and "discount" in value]
    if nested:
        return float(nested[-1])
    for key in ("discount", "gamma"):
        if key in config:
            return float(config[key])
    return None


def _default_discount(algo: str) -> float | None:
    from research.algos import get_algo

    try:
        config_class = get_algo(algo)[0]
    except ValueError:
        return None
    return objective_discount(dataclasses.asdict(config_class()))


def learner_rows(experiment: str | Path) -> list[dict[str, Any]]:
    """The learners of an experiment directory: ``experiment, physics, algo, n_seeds, learner_return`` (mean over
    seeds of each seed's final protocol mean), ``learner_median`` (median over seeds) and ``discount`` (each run's
    ``config.json`` via ``experiment.json``; all seeds must agree; else the algorithm's default config)."""
    root = Path(experiment)
    discounts: dict[tuple[str, str], set[float]] = {}
    meta_path = root / "experiment.json"
    if meta_path.is_file():
        for run in json.loads(meta_path.read_text()).get("runs", []):
            config_path = root / run["path"] / "config.json"
            if config_path.is_file():
                found = objective_discount(json.loads(config_path.read_text())["config"])
                if found is not None:
                    discounts.setdefault((run.get("physics", "default"), run["algo"]), set()).add(found)
    rows = []
    if not (root / "summary.csv").is_file():
        log.warning("%s has no summary.csv (not run, or not aggregated yet): its learners are left out", root)
        return rows
    with (root / "summary.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row.get("physics") or "default", row["algo"])
            seen = discounts.get(key, set())
            if len(seen) > 1:
                raise ValueError(f"{root}: seeds of {key} trained at different discounts {sorted(seen)}")
            discount = seen.pop() if seen else _default_discount(row["algo"])
            rows.append({"experiment": root.name, "physics": key[0], "algo": key[1], "n_seeds": int(row["n_seeds"]),
                         "learner_return": float(row["final_return_mean"]),
                         "learner_median": float(row["final_return_median"]), "discount": discount})
    return rows


# ---------------------------------------------------------------------------------------------------- the parts
def decompose(optimum: float, stationary: float, discounted: float | None, distilled: float, learner: float
              ) -> dict[str, float]:
    """The parts of ``gap = optimum - learner`` (``discounted=None``: the objective part is not defined, NaN, and the
    chain skips it). Keys: :data:`PARTS` and ``gap``; the defined parts sum to ``gap`` up to float rounding."""
    chain = [optimum, stationary, stationary if discounted is None else discounted, distilled, learner]
    parts = {name: chain[i] - chain[i + 1] for i, name in enumerate(PARTS)}
    if discounted is None:
        parts["objective"] = math.nan
    parts["gap"] = optimum - learner
    return parts


def defined_sum(parts: dict[str, float]) -> float:
    """``fsum`` of the defined (non-NaN) parts."""
    return math.fsum(parts[name] for name in PARTS if parts[name] == parts[name])


def _grid_from(n: int) -> tuple[int, int]:
    return (n, n)


def pendulum_gap(physics: str, learners: list[dict[str, Any]], grid: int, coarse: int, actions: int,
                 distill_config: DistillConfig, episodes: int, quiet: bool,
                 value_config: ValueDistillConfig | None = None) -> tuple[list[dict], list[dict]]:
    """``(rows, dp_rows)`` of one pendulum preset: a row per learner, two reference rows per teacher discount (the
    MSE student ``distilled_dp_g*`` and, unless ``value_config`` is ``None``, the value-based one ``value_dp_g*``).
    The learners' ``distilled`` (R_dist) is the better of the two on the protocol; ``reference`` names it."""
    system = resolve_physics(physics)
    discounts = sorted({1.0} | {float(r["discount"]) for r in learners if r["discount"] is not None})
    say = (lambda text: None) if quiet else (lambda text: tqdm.write(f"{physics}: {text}"))
    say(f"DP at {grid}x{grid}, discounts {discounts}")
    main = dp_returns(system, discounts, _grid_from(grid), actions, episodes)
    say(f"DP at {coarse}x{coarse} (resolution check); main: optimum {main.optimum:.2f}, stationary "
        f"{main.stationary:.2f}, discounted {main.discounted}")
    rough = dp_returns(system, discounts, _grid_from(coarse), actions, episodes)
    dp_rows = [{"physics": physics, "grid": f"{d.grid[0]}x{d.grid[1]}", "actions": actions, "optimum": d.optimum,
                "stationary": d.stationary, **{f"discounted_{g:g}": d.discounted[g] for g in discounts},
                "seconds": d.seconds} for d in (rough, main)]
    error = {"optimum": abs(main.optimum - rough.optimum),
             **{g: abs(main.discounted[g] - rough.discounted[g]) for g in discounts}}
    best: dict[float, tuple[float, float, str]] = {}  # g -> (R_dist, its action MAE, which student)
    rows = []
    for g in discounts:
        say(f"distilling the DP policy at discount {g}")
        mse = distill(system, observation_teacher(system, main.policies[g]), distill_config, episodes, quiet)
        common = {"experiment": "reference", "physics": physics, "n_seeds": 1, "grid": f"{grid}x{grid}",
                  "discount": g, "role": "reference", "learner_median": math.nan, "optimum": main.optimum,
                  "stationary": main.stationary, "discounted": main.discounted[g]}
        rows.append({**common, "algo": f"distilled_dp_g{g:g}", "learner_return": mse.returns[-1],
                     "distilled": mse.returns[-1], "distill_mae": mse.mae, "reference": "mse",
                     "distill_rounds": " ".join(f"{r:.2f}" for r in mse.returns), "seconds": mse.seconds})
        best[g] = (mse.returns[-1], mse.mae, "mse")
        if value_config is None:
            continue
        say(f"value-based student at discount {g} (K in {list(value_config.horizons)})")
        valued = value_distill(system, dp_value(main.policies[g]), g, mse.policy, value_config, episodes, quiet,
                               warm_return=mse.returns[-1])
        with torch.no_grad():  # its action error against the teacher on the MSE student's aggregated states
            obs = system.observe(visited_states(system, observation_teacher(system, main.policies[g]),
                                                distill_config.starts, torch.Generator().manual_seed(30_011)))
            mae = float(((valued.policy(obs) - main.policies[g](obs)).abs() / float(system.max_action)).mean())
        rows.append({**common, "algo": f"value_dp_g{g:g}", "learner_return": valued.returns[-1],
                     "distilled": valued.returns[-1], "distill_mae": mae, "reference": f"value_K{valued.horizon}",
                     "value_horizon": valued.horizon,
                     "value_by_horizon": " ".join(f"K{k}:{r[-1]:.2f}" for k, r in valued.by_horizon.items()),
                     "distill_rounds": " ".join(f"{r:.2f}" for r in valued.returns), "seconds": valued.seconds})
        if valued.returns[-1] > best[g][0]:
            best[g] = (valued.returns[-1], mae, f"value_K{valued.horizon}")
    for g in discounts:  # the winner of each discount, named on its reference row
        for row in rows:
            if row["discount"] == g:
                row["reference_used"] = best[g][2]
    rows += _learner_parts(learners, f"{grid}x{grid}", main.optimum, main.stationary, main.discounted, best, error)
    return rows, dp_rows


def _learner_parts(learners: list[dict[str, Any]], grid: str, optimum: float, stationary: float,
                   discounted: dict[float, float], best: dict[float, tuple[float, float, str]],
                   error: dict[Any, float]) -> list[dict]:
    """A pendulum preset's learner rows: each learner's gap decomposed at its discount ``g`` against the DP returns
    (``discounted[g]``), the better student ``best[g] = (R_dist, its action MAE, which)`` and the grid errors
    (``error["optimum"]`` and ``error[g]``)."""
    rows = []
    for learner in learners:
        g = 1.0 if learner["discount"] is None else float(learner["discount"])
        if g not in best:
            raise ValueError(f"{learner['physics']}: {learner['experiment']}/{learner['algo']} trained at discount {g:g}, "
                             f"which has no reference rows (DP and students at {sorted(best)}); run make gap "
                             f"PHYSICS={learner['physics']} without --reuse-references")
        distilled, mae, which = best[g]
        parts = decompose(optimum, stationary, discounted[g], distilled, learner["learner_return"])
        errors = {"stationarity": error["optimum"] + error[1.0], "objective": error[1.0] + error[g],
                  "representation": error[g], "optimisation": 0.0}
        rows.append({**learner, "role": "learner", "grid": grid, "optimum": optimum, "stationary": stationary,
                     "discounted": discounted[g], "distilled": distilled, "distill_mae": mae, "reference": which,
                     **parts, **{f"{name}_dp_error": errors[name] for name in PARTS},
                     "within_dp_error": " ".join(n for n in PARTS if abs(parts[n]) <= errors[n] and errors[n] > 0)})
    return rows


def _system_parts(learners: list[dict[str, Any]], optimum: float, stationary: float, distilled: float,
                  mae: float) -> list[dict]:
    """A system's learner rows (no grid DP: the objective part undefined, no grid error)."""
    rows = []
    for learner in learners:
        parts = decompose(optimum, stationary, None, distilled, learner["learner_return"])
        rows.append({**learner, "role": "learner", "optimum": optimum, "stationary": stationary,
                     "discounted": math.nan, "distilled": distilled, "distill_mae": mae, "reference": "mse", **parts,
                     "within_dp_error": ""})
    return rows


def reused_gap(physics: str, learners: list[dict[str, Any]], summary: Sequence[dict[str, str]],
               dp: Sequence[dict[str, str]]) -> list[dict]:
    """Rows of one physics with ``learners`` decomposed against the reference rows already in ``summary`` (an
    earlier ``summary.csv``: the DP returns, the students) and the grid errors of ``dp`` (``dp.csv``): no DP solve
    and no distillation (``--reuse-references``, for learners added after the references were computed). Returns
    those reference rows unchanged, then a row per learner; ``ValueError`` when the physics has no reference rows
    or a learner's discount none of its own."""
    refs = [row for row in summary if row["physics"] == physics and row["role"] == "reference"]
    if not refs:
        raise ValueError(f"--reuse-references: no reference rows for {physics!r} in the existing summary.csv; run "
                         f"make gap PHYSICS={physics} without it first")
    optimum, stationary = float(refs[0]["optimum"]), float(refs[0]["stationary"])
    if physics not in PRESETS:
        used = next(row for row in refs if row["reference"] == row["reference_used"])
        return [*refs, *_system_parts(learners, optimum, stationary, float(used["distilled"]),
                                      float(used["distill_mae"]))]
    grid = refs[0]["grid"]
    best = {float(row["discount"]): (float(row["distilled"]), float(row["distill_mae"]), row["reference"])
            for row in refs if row["reference"] == row["reference_used"]}
    discounted = {float(row["discount"]): float(row["discounted"]) for row in refs}
    grids = {row["grid"]: row for row in dp if row["physics"] == physics}
    main = grids[grid]
    rough = next(row for name, row in grids.items() if name != grid)
    error: dict[Any, float] = {"optimum": abs(float(main["optimum"]) - float(rough["optimum"]))}
    for g in discounted:
        key = f"discounted_{g:g}"
        error[g] = abs(float(main[key]) - float(rough[key]))
    return [*refs, *_learner_parts(learners, grid, optimum, stationary, discounted, best, error)]


def system_gap(name: str, learners: list[dict[str, Any]], optimal_dir: Path, distill_config: DistillConfig,
               episodes: int, quiet: bool) -> list[dict]:
    """Rows of a system without a grid DP (see the module docstring): the objective part is left undefined."""
    summary_path = optimal_dir / name / "summary.json"
    reference = json.loads(summary_path.read_text())
    system = get_system(name, reference.get("physics", "default"))
    optimum, stationary = float(reference["reference"]["return_mean"]), float(reference["controller"]["return_mean"])
    distilled = distill(system, controller_teacher(system), distill_config, episodes, quiet)
    rows = [{"experiment": "reference", "physics": name, "algo": "distilled_controller", "n_seeds": 1,
             "discount": math.nan, "role": "reference", "learner_return": distilled.returns[-1],
             "learner_median": math.nan, "optimum": optimum, "stationary": stationary, "discounted": math.nan,
             "distilled": distilled.returns[-1], "distill_mae": distilled.mae,
             "distill_rounds": " ".join(f"{r:.2f}" for r in distilled.returns), "seconds": distilled.seconds,
             "reference": "mse", "reference_used": "mse"}]
    return rows + _system_parts(learners, optimum, stationary, distilled.returns[-1], distilled.mae)


# ---------------------------------------------------------------------------------------------------- output
COLUMNS = ("experiment", "physics", "algo", "role", "grid", "n_seeds", "discount", "learner_return", "learner_median",
           "optimum", "stationary", "discounted", "distilled", "gap", *PARTS, *(f"{p}_dp_error" for p in PARTS),
           "within_dp_error", "distill_mae", "distill_rounds", "reference", "reference_used", "value_horizon",
           "value_by_horizon", "seconds")


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def _kept(path: Path, physics: set[str]) -> tuple[list[dict], list[str]]:
    """Rows of an existing CSV whose physics is not being recomputed, and its header."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return [row for row in reader if row["physics"] not in physics], list(reader.fieldnames or [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The gap to the optimum taken apart -> <out>/summary.csv")
    parser.add_argument("--physics", nargs="+", default=None,
                        help="pendulum presets and/or systems (cartpole, acrobot); default: all of them")
    parser.add_argument("--experiments", nargs="+", type=Path, default=[Path(p) for p in DEFAULT_EXPERIMENTS],
                        help="experiment directories with summary.csv (and experiment.json + run configs)")
    parser.add_argument("--grid", type=int, default=401, help="main DP grid (square)")
    parser.add_argument("--coarse-grid", type=int, default=201, help="DP grid of the resolution check")
    parser.add_argument("--actions", type=int, default=11)
    parser.add_argument("--optimal", type=Path, default=Path("results/optimal"),
                        help="the trajopt references of the systems (<optimal>/<system>/summary.json)")
    parser.add_argument("--rounds", type=int, default=DistillConfig.rounds)
    parser.add_argument("--steps", type=int, default=DistillConfig.steps)
    parser.add_argument("--starts", type=int, default=DistillConfig.starts)
    parser.add_argument("--value-horizons", type=int, nargs="*", default=list(ValueDistillConfig.horizons),
                        help="K of the value-based student's rollouts (none: MSE student only)")
    parser.add_argument("--value-rounds", type=int, default=ValueDistillConfig.rounds)
    parser.add_argument("--value-steps", type=int, default=ValueDistillConfig.steps)
    parser.add_argument("--value-starts", type=int, default=ValueDistillConfig.starts)
    parser.add_argument("--student-sizes", type=int, nargs="+", default=list(DistillConfig.hidden_sizes),
                        help="hidden layers of both students (default: the learners' 64 64; a capacity probe: 256 256)")
    parser.add_argument("--episodes", type=int, default=EVAL_EPISODES)
    parser.add_argument("--out", type=Path, default=Path("results/gap"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse-references", action="store_true",
                        help="decompose the learners against the reference rows already in <out> (no DP, no "
                             "distillation): for learners added since; the reference rows keep their invocation")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from research.analysis.trajopt import code_state
    from research.runs import device_description, library_versions

    systems = [name for name in SYSTEMS if name != "pendulum"]
    selected = args.physics or [*PRESETS, *systems]
    unknown = [p for p in selected if p not in PRESETS and p not in systems]
    if unknown:
        raise SystemExit(f"--physics: unknown {unknown}; expected pendulum presets {list(PRESETS)} or {systems}")
    learners = [row for exp in args.experiments for row in learner_rows(exp)]
    config = DistillConfig(rounds=args.rounds, steps=args.steps, starts=args.starts,
                           hidden_sizes=tuple(args.student_sizes))
    value_config = (ValueDistillConfig(tuple(args.value_horizons), args.value_rounds, args.value_starts,
                                       args.value_steps) if args.value_horizons else None)
    start = time.perf_counter()
    rows, dp_rows = [], []
    if args.reuse_references:
        old_rows, _ = _kept(args.out / "summary.csv", set())
        old_dp, _ = _kept(args.out / "dp.csv", set())
        dp_rows = [row for row in old_dp if row["physics"] in selected]
    progress = tqdm(selected, desc="gap", disable=args.quiet, unit="physics")
    for physics in progress:
        progress.set_postfix_str(physics)
        mine = [r for r in learners if r["physics"] == physics]
        if args.reuse_references:
            try:
                new = reused_gap(physics, mine, old_rows, old_dp)
            except ValueError as err:
                raise SystemExit(str(err)) from None
        elif physics in PRESETS:
            new, new_dp = pendulum_gap(physics, mine, args.grid, args.coarse_grid, args.actions, config,
                                       args.episodes, args.quiet, value_config)
            dp_rows += new_dp
        else:
            new = system_gap(physics, mine, args.optimal, config, args.episodes, args.quiet)
        rows += new
        if not args.quiet:
            for row in new:
                tqdm.write(f"{physics:>15} {row['experiment']:>16} {row['algo']:>22}  return {float(row['learner_return']):9.2f}"
                           + (f"  gap {row['gap']:7.2f} = " + " + ".join(f"{row[p]:.2f}" for p in PARTS)
                              if row["role"] == "learner" else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    kept, _ = _kept(args.out / "summary.csv", set(selected))
    kept_dp, dp_header = _kept(args.out / "dp.csv", set(selected))
    dp_columns = list(dict.fromkeys([*dp_header, *(k for r in dp_rows for k in r)]))
    (args.out / "summary.csv").write_text(to_csv([*kept, *rows], COLUMNS))
    (args.out / "dp.csv").write_text(to_csv([*kept_dp, *dp_rows], dp_columns))
    config_path = args.out / "config.json"
    previous = json.loads(config_path.read_text()) if config_path.is_file() else {}
    root = Path(__file__).resolve().parents[2]
    paths = [root / p for p in ("research/analysis/gap.py", "research/analysis/optimal.py",
                                "research/analysis/trajopt.py", "research/evaluation.py", "research/policies.py")]
    invocation = {"physics": selected, "argv": list(sys.argv[1:] if argv is None else argv), "grid": args.grid,
                  "coarse_grid": args.coarse_grid, "actions": args.actions, "distill": dataclasses.asdict(config),
                  "value_distill": None if value_config is None else dataclasses.asdict(value_config),
                  "episodes": args.episodes,
                  **code_state(paths), "versions": library_versions(), "device": device_description("cpu"),
                  "torch_threads": torch.get_num_threads(), "seconds": time.perf_counter() - start}
    invocations = previous.get("invocations", [])
    if args.reuse_references:  # the reference rows stand from the invocations that computed them
        invocation["references"] = "reused: the learners decomposed against the reference rows of the invocations above"
    else:
        invocations = [inv for inv in invocations if set(inv["physics"]) - set(selected)]
    record = {"horizon": EVAL_HORIZON, "experiments": [str(p) for p in args.experiments], "invocations": [*invocations, invocation]}
    config_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'summary.csv'}, dp.csv and config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
