"""Differentiable-physics policy learning on batched pendulum, cart-pole and acrobot simulators, with model-free baselines."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_policy"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the standard-library modules (research.rundir) import without torch (the scripts read runs).
    if name == "load_policy":
        from research.policies import load_policy

        return load_policy
    raise AttributeError(f"module 'research' has no attribute {name!r}")
