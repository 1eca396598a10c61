"""Fused rollouts: the policy and the pure physics in one tensor loop, with no per-step tensordict overhead.

This is the default path of every differentiable trainer and of the evaluator. It calls the same
:func:`research.envs.physics.pendulum_step` as :class:`research.envs.PendulumEnv`, so both paths give identical
rewards and gradients (``tests/test_rollout.py`` checks it).

Episodes can be truncated inside a rollout: with ``episode_length`` set, every environment whose step counter reaches
it is reset to a fresh state drawn from Gymnasium's reset distribution (the gradient chain is cut there, as in a
real reset). Staggered step counters give the staggered episode starts of truncated BPTT and SHAC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from research.envs.physics import PendulumParams, observation, pendulum_step, sample_initial_state

Policy = Callable[[Tensor], Tensor]


class RolloutState(NamedTuple):
    """What a rollout carries from one window to the next, each ``[*B]``."""

    th: Tensor
    thdot: Tensor
    step_count: Tensor  # int64: steps taken in the current episode


class Rollout(NamedTuple):
    """The result of :func:`fused_rollout`. ``B`` is the batch shape, ``H`` the horizon.

    ``observations``, ``actions``, ``next_observations`` and ``truncated`` are ``None`` unless the rollout was asked
    to keep the trajectory.
    """

    rewards: Tensor  # [*B, H]
    state: RolloutState  # after the last step (and after any reset at that step)
    observations: Tensor | None = None  # [*B, H, 3] what the policy saw
    actions: Tensor | None = None  # [*B, H, 1]
    next_observations: Tensor | None = None  # [*B, H, 3] the state reached, before any reset
    truncated: Tensor | None = None  # [*B, H] bool: the episode ended (and was reset) after this step


def initial_state(th: Tensor, thdot: Tensor, step_count: Tensor | None = None) -> RolloutState:
    """A :class:`RolloutState` at the start of episodes (step counters zero unless given)."""
    if step_count is None:
        step_count = torch.zeros(th.shape, dtype=torch.int64, device=th.device)
    return RolloutState(th, thdot, step_count)


def fused_rollout(
    policy: Policy,
    state: RolloutState,
    params: PendulumParams,
    horizon: int,
    *,
    episode_length: int | None = None,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
) -> Rollout:
    """Rolls ``policy`` through the pendulum for ``horizon`` steps, differentiably.

    Args:
        policy: ``observation [*B, 3] -> action [*B, 1]``.
        state: start state (see :func:`initial_state`); tensors may require grad.
        params: physical parameters, each ``[*B]``.
        horizon: number of steps ``H``.
        episode_length: if set, environments whose episode reaches this many steps are reset in place, with new
            states drawn from ``generator``.
        keep_trajectory: also return observations, actions, next observations and truncation flags.

    Returns:
        A :class:`Rollout`; ``rewards`` has shape ``[*B, H]``.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
    th, thdot, step_count = state
    rewards, observations, actions, next_observations, truncations = [], [], [], [], []
    for _ in range(horizon):
        obs = observation(th, thdot)
        action = policy(obs)
        th, thdot, reward = pendulum_step(th, thdot, action.squeeze(-1), params)
        rewards.append(reward)
        step_count = step_count + 1
        if keep_trajectory:
            observations.append(obs)
            actions.append(action)
            next_observations.append(observation(th, thdot))
        if episode_length is not None:
            done = step_count >= episode_length
            new_th, new_thdot = sample_initial_state(th.shape, generator, th.device, th.dtype)
            th = torch.where(done, new_th, th)
            thdot = torch.where(done, new_thdot, thdot)
            step_count = torch.where(done, torch.zeros_like(step_count), step_count)
            if keep_trajectory:
                truncations.append(done)
    final = RolloutState(th, thdot, step_count)
    if not keep_trajectory:
        return Rollout(torch.stack(rewards, dim=-1), final)
    if not truncations:
        truncations = [torch.zeros(th.shape, dtype=torch.bool, device=th.device)] * horizon
    return Rollout(
        rewards=torch.stack(rewards, dim=-1),
        state=final,
        observations=torch.stack(observations, dim=-2),
        actions=torch.stack(actions, dim=-2),
        next_observations=torch.stack(next_observations, dim=-2),
        truncated=torch.stack(truncations, dim=-1),
    )


def discounted_sum(rewards: Tensor, discount: float) -> Tensor:
    """``sum_t discount**t * rewards[..., t]``: ``[*B, H]`` -> ``[*B]``."""
    horizon = rewards.shape[-1]
    weights = discount ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    return (rewards * weights).sum(-1)
