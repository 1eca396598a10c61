"""Differentiable-physics policy learning on a batched Pendulum-v1, with model-free baselines."""

__version__ = "0.1.0"

from research.policies import load_policy  # noqa: E402

__all__ = ["__version__", "load_policy"]
