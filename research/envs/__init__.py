"""Differentiable Pendulum-v1: pure physics functions, named physics variants and the TorchRL environment."""

from research.envs.pendulum import PendulumEnv
from research.envs.physics import (
    DEFAULT_PARAMS,
    GYMNASIUM_FEATURES,
    PendulumParams,
    PhysicsFeatures,
    StepConstants,
    angle_normalize,
    is_upright,
    observation,
    observe,
    pendulum_step,
    physics_features,
    sample_initial_state,
    sample_params,
    step_constants,
    to_wall_range,
    validate_params,
)
from research.envs.presets import PRESETS, Physics, get_physics

__all__ = [
    "DEFAULT_PARAMS",
    "GYMNASIUM_FEATURES",
    "PRESETS",
    "PendulumEnv",
    "PendulumParams",
    "Physics",
    "PhysicsFeatures",
    "StepConstants",
    "angle_normalize",
    "get_physics",
    "is_upright",
    "observation",
    "observe",
    "pendulum_step",
    "physics_features",
    "sample_initial_state",
    "sample_params",
    "step_constants",
    "to_wall_range",
    "validate_params",
]
