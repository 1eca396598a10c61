"""Differentiable-physics policy learning on a batched Pendulum-v1, with model-free baselines."""

__version__ = "0.1.0"
