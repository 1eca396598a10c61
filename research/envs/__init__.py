"""Differentiable Pendulum-v1: pure physics functions and the TorchRL environment built on them."""

from research.envs.pendulum import PendulumEnv
from research.envs.physics import (
    DEFAULT_PARAMS,
    PendulumParams,
    StepConstants,
    angle_normalize,
    is_upright,
    observation,
    observe,
    pendulum_step,
    sample_initial_state,
    sample_params,
    step_constants,
    validate_params,
)

__all__ = [
    "DEFAULT_PARAMS",
    "PendulumEnv",
    "PendulumParams",
    "StepConstants",
    "angle_normalize",
    "is_upright",
    "observation",
    "observe",
    "pendulum_step",
    "sample_initial_state",
    "sample_params",
    "step_constants",
    "validate_params",
]
