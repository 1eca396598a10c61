"""Differentiable Pendulum-v1: pure physics functions and the TorchRL environment built on them."""

from research.envs.pendulum import PendulumEnv
from research.envs.physics import (
    DEFAULT_PARAMS,
    PendulumParams,
    angle_normalize,
    is_upright,
    observation,
    pendulum_step,
    sample_initial_state,
    sample_params,
    validate_params,
)

__all__ = [
    "DEFAULT_PARAMS",
    "PendulumEnv",
    "PendulumParams",
    "angle_normalize",
    "is_upright",
    "observation",
    "pendulum_step",
    "sample_initial_state",
    "sample_params",
    "validate_params",
]
