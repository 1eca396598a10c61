"""The optimal-control yardstick under its short name: ``from research.optimal import solve_optimal``.

The code lives in :mod:`research.analysis.optimal` (with the other measurements); this module only re-exports it.
"""

from research.analysis.optimal import (
    Backup,
    GreedyPolicy,
    OptimalSolution,
    StateGrid,
    TimeVaryingPolicy,
    clairvoyant_returns,
    evaluate_solution,
    evaluation_setup,
    solve_optimal,
    zero_torque_return,
)

__all__ = [
    "Backup",
    "GreedyPolicy",
    "OptimalSolution",
    "StateGrid",
    "TimeVaryingPolicy",
    "clairvoyant_returns",
    "evaluate_solution",
    "evaluation_setup",
    "solve_optimal",
    "zero_torque_return",
]
