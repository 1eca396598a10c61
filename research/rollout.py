"""Fused rollouts: the policy and the pure physics in one tensor loop, with no per-step tensordict overhead.

This is the default path of every differentiable trainer (the evaluator runs its gradient-free twin,
:func:`simulate`). It calls the same :func:`research.envs.physics.pendulum_step` as
:class:`research.envs.PendulumEnv`, so both paths give identical rewards and gradients (``tests/test_rollout.py``
checks it). Where :mod:`research.native` supports the case (a small tanh/relu ``SquashedMLP`` on Gymnasium's physics,
without resets, trajectory or compile), both functions hand the whole loop to its generated C code instead, forward
and backward (``native=None``, the default; ``tests/test_native.py`` checks the agreement): at small batches that is
several times faster than any torch path, because a step no longer costs a dozen kernel launches.

Episodes can be truncated inside a rollout: with ``episode_length`` set, every environment whose step counter reaches
it is reset to a fresh state drawn from Gymnasium's reset distribution (the gradient chain is cut there, as in a
real reset; with a wall, the new angle is represented in the wall's range). Staggered step counters give the
staggered episode starts of truncated BPTT and SHAC.

Which optional physics terms the steps compute (:class:`research.envs.physics.PhysicsFeatures`) is decided once per
rollout: from ``features=`` (e.g. ``Physics.features`` of a preset, no host sync) or else read from ``params`` with
one host sync. Torque noise (``torque_noise > 0``) takes one standard-normal sample per environment and step: the
whole ``[*B, H]`` block is drawn at the start of the rollout from ``noise_generator`` (default: ``generator``), or
passed in as ``noise=`` (the evaluator does, so every method meets the same noise).

Two faster variants of the same loop (``tests/benchmarks`` measures them; ``tests/test_rollout_paths.py`` checks
that their results agree with the eager loop to float tolerance; in general not bit for bit):

- ``fused_rollout(..., compile=True)`` runs the steps in ``torch.compile``-d chunks: policy and physics of ``chunk``
  steps become one graph, forward and backward, so a step costs a few fused kernels instead of ~30 eager ops. On CPU
  the chunks use Inductor's C++ wrapper and its exp-based ``tanh`` (Sleef's is several times slower here).
- :func:`simulate` is the gradient-free path (the evaluator, throughput): no autograd graph, only the rewards and
  the state kept, large batches fed through in cache-sized tiles. Its returns are summed as
  ``fused_rollout(...).rewards.sum(-1)`` sums them, so on the same rows (eager, one tile) they agree bit for bit.
  On CUDA its compiled chunks are captured as CUDA graphs.

Both run the policy's own forward: a :class:`~research.policies.SquashedMLP` runs its layers through
:func:`research.linear.linear`, oneDNN's kernels where they beat MKL's for the shapes (large batches on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from research.envs.physics import (
    PendulumParams,
    PhysicsFeatures,
    observation,
    observe,
    pendulum_step,
    physics_features,
    sample_initial_state,
    step_constants,
    to_wall_range,
)
import research.native as native_module
from research.policies import as_tensor_policy

Policy = Callable[[Tensor], Tensor]

#: Steps per compiled chunk: long enough that Python and autograd overhead between chunks is negligible, short
#: enough that compiling stays in the tens of seconds.
COMPILE_CHUNK = 10
#: Rows per tile in :func:`simulate`: a tile's activations (``tile x 64`` floats per layer) stay in L2 cache.
SIMULATE_TILE = 4096


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


def rollout_noise(
    shape: torch.Size | tuple[int, ...],
    horizon: int,
    features: PhysicsFeatures,
    like: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """The standard-normal torque-noise block ``[*shape, horizon]`` of a rollout, or ``None`` without noise.

    ``noise`` (if given) is checked and returned; otherwise it is drawn from ``generator`` on ``like``'s device and
    dtype. Raises ``ValueError`` when the features need noise and neither is given.
    """
    if not features.noise:
        return None
    expected = (*shape, horizon)
    if noise is not None:
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape [*B, H] = {list(expected)}, got {list(noise.shape)}")
        return noise
    if generator is None:
        raise ValueError(
            "generator (or noise_generator, or noise) is required when torque_noise > 0: the rollout draws its "
            "torque noise from it; got None"
        )
    return torch.randn(expected, generator=generator, device=like.device, dtype=like.dtype)


def fused_rollout(
    policy: Policy,
    state: RolloutState,
    params: PendulumParams,
    horizon: int,
    *,
    episode_length: int | None = None,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
    compile: bool = False,
    features: PhysicsFeatures | None = None,
    noise: Tensor | None = None,
    noise_generator: torch.Generator | None = None,
    native: bool | None = None,
) -> Rollout:
    """Rolls ``policy`` through the pendulum for ``horizon`` steps, differentiably.

    Args:
        policy: ``observation [*B, 3] -> action [*B, 1]``.
        state: start state (see :func:`initial_state`); tensors may require grad. With a wall, ``state.th`` must
            lie in the wall's range ``[phi - 2 pi, phi]`` (``Physics.initial_state`` and resets give that; a carried
            state already is).
        params: physical parameters, each ``[*B]`` or broadcastable to it.
        horizon: number of steps ``H``.
        episode_length: if set, environments whose episode reaches this many steps are reset in place, with new
            states drawn from ``generator``.
        generator: draws the reset states, and the torque noise unless ``noise_generator`` or ``noise`` is given.
        keep_trajectory: also return observations, actions, next observations and truncation flags.
        compile: run the steps in ``torch.compile``-d chunks of :data:`COMPILE_CHUNK` steps (forward and backward
            compiled; the first call per batch shape compiles for tens of seconds). Not with ``episode_length``.
        features: which optional physics terms to compute (e.g. ``Physics.features``); default: read from
            ``params`` (one host sync per call). Must cover ``params``; a superset is correct, only slower.
        noise: standard-normal torque noise ``[*B, H]`` to use instead of drawing it (only with noise features).
        noise_generator: a separate stream for the torque noise (default: ``generator``).
        native: run :func:`research.native.native_rollout` (the C loop with its own adjoint); ``None`` (default):
            wherever it supports the case (:func:`research.native.supported`: a small tanh/relu ``SquashedMLP``,
            Gymnasium's physics) and neither ``compile``, ``episode_length`` nor ``keep_trajectory`` is asked for;
            ``False``: never; ``True``: required.

    Returns:
        A :class:`Rollout`; ``rewards`` has shape ``[*B, H]``.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
    th, thdot, step_count = state
    features = physics_features(params) if features is None else features
    noise_generator = generator if noise_generator is None else noise_generator
    noise = rollout_noise(th.shape, horizon, features, th, noise, noise_generator)
    constants = None if compile else step_constants(params, features)  # (compiled chunks derive their own)
    if native is not False:
        plain = not compile and episode_length is None and not keep_trajectory and th.dim() == 1
        if plain and native_module.supported(policy, constants, th, th.numel()):
            rewards, th, thdot = native_module.native_rollout(policy, th, thdot, constants, horizon)
            return Rollout(rewards, RolloutState(th, thdot, step_count + horizon))
        if native:
            raise ValueError("native=True: research.native does not support this rollout (see "
                             "research.native.supported; no compile, episode_length or keep_trajectory, a [B] batch)")
    if compile:
        if episode_length is not None:
            raise ValueError("compile=True rolls out without resets; use episode_length=None (or compile=False)")
        return _compiled_rollout(policy, state, params, horizon, keep_trajectory, features, noise)
    rewards, observations, actions, next_observations, truncations = [], [], [], [], []
    for t in range(horizon):
        obs, sin_th = observe(th, thdot)
        action = policy(obs)
        step_noise = None if noise is None else noise[..., t]
        th, thdot, reward = pendulum_step(th, thdot, action.squeeze(-1), constants, sin_th, noise=step_noise)
        rewards.append(reward)
        if episode_length is not None:
            step_count = step_count + 1
        if keep_trajectory:
            observations.append(obs)
            actions.append(action)
            next_observations.append(observation(th, thdot))
        if episode_length is not None:
            done = step_count >= episode_length
            new_th, new_thdot = sample_initial_state(th.shape, generator, th.device, th.dtype)
            if features.wall:
                new_th = to_wall_range(new_th, constants.wall_angle)
            th = torch.where(done, new_th, th)
            thdot = torch.where(done, new_thdot, thdot)
            step_count = torch.where(done, torch.zeros_like(step_count), step_count)
            if keep_trajectory:
                truncations.append(done)
    final = RolloutState(th, thdot, step_count if episode_length is not None else step_count + horizon)
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


# ---------------------------------------------------------------------------------------------------- compiled chunks
def _rollout_steps(
    policy: Policy,
    th: Tensor,
    thdot: Tensor,
    params: PendulumParams,
    steps: int,
    keep_trajectory: bool,
    features: PhysicsFeatures,
    noise: Tensor | None,
) -> tuple[Tensor, ...]:
    """``steps`` steps of the fused loop without resets, the body of one compiled chunk (``noise``: ``[*B, steps]``).

    Returns ``(th, thdot, rewards [*B, steps])``, followed by ``observations [*B, steps, 3]``, ``actions
    [*B, steps, 1]`` and ``next_observations [*B, steps, 3]`` when ``keep_trajectory``.
    """
    constants = step_constants(params, features)
    rewards, observations, actions = [], [], []
    for t in range(steps):
        obs, sin_th = observe(th, thdot)
        action = policy(obs)
        step_noise = None if noise is None else noise[..., t]
        th, thdot, reward = pendulum_step(th, thdot, action.squeeze(-1), constants, sin_th, noise=step_noise)
        rewards.append(reward)
        if keep_trajectory:
            observations.append(obs)
            actions.append(action)
    rewards = torch.stack(rewards, dim=-1)
    if not keep_trajectory:
        return th, thdot, rewards
    observations.append(observation(th, thdot))
    trajectory = torch.stack(observations, dim=-2)
    return th, thdot, rewards, trajectory[..., :-1, :], torch.stack(actions, dim=-2), trajectory[..., 1:, :]


_COMPILED: dict[tuple[str, str], Callable] = {}


def _compiled(fn: Callable, device: torch.device) -> Callable:
    """``fn`` compiled for ``device`` (one compiled object per function and device type, created on first use).

    Shapes are static (``dynamic=False``): a new batch shape or chunk length compiles once more, and a step with fixed
    shapes is ~20% faster than a shape-generic one at small batches. On CUDA, gradient-free chunks are captured as
    CUDA graphs (``mode="reduce-overhead"``; the callers clone what they return).
    """
    key = (fn.__name__, device.type)
    if key not in _COMPILED:
        if device.type == "cuda":
            mode = "reduce-overhead" if fn is _simulate_steps else None
            _COMPILED[key] = torch.compile(fn, dynamic=False, mode=mode)
        else:
            options = {"cpp_wrapper": True, "cpp.use_decompose_tanh": True} if device.type == "cpu" else None
            _COMPILED[key] = torch.compile(fn, dynamic=False, options=options)
    return _COMPILED[key]


def _compiled_rollout(
    policy: Policy,
    state: RolloutState,
    params: PendulumParams,
    horizon: int,
    keep_trajectory: bool,
    features: PhysicsFeatures,
    noise: Tensor | None,
) -> Rollout:
    th, thdot, step_count = state
    steps_fn = _compiled(_rollout_steps, th.device)
    chunks = []
    for start in range(0, horizon, COMPILE_CHUNK):
        stop = min(start + COMPILE_CHUNK, horizon)
        chunk_noise = None if noise is None else noise[..., start:stop]
        out = steps_fn(policy, th, thdot, params, stop - start, keep_trajectory, features, chunk_noise)
        th, thdot = out[0], out[1]
        chunks.append(out[2:])
    final = RolloutState(th, thdot, step_count + horizon)
    rewards = torch.cat([c[0] for c in chunks], dim=-1)
    if not keep_trajectory:
        return Rollout(rewards, final)
    observations, actions, next_observations = (torch.cat([c[i] for c in chunks], dim=-2) for i in (1, 2, 3))
    truncated = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    return Rollout(rewards, final, observations, actions, next_observations, truncated)


# ---------------------------------------------------------------------------------------------------- simulation
class Simulation(NamedTuple):
    """The result of :func:`simulate`, each ``[*B]``."""

    returns: Tensor  # undiscounted sum of the rewards over the horizon
    th: Tensor  # final state
    thdot: Tensor


def _simulate_steps(
    policy: Policy,
    th: Tensor,
    thdot: Tensor,
    params: PendulumParams,
    steps: int,
    features: PhysicsFeatures,
    noise: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``steps`` gradient-free steps: ``(th, thdot, rewards [N, steps])``, the body of one compiled chunk."""
    constants = step_constants(params, features)
    rewards = []
    for t in range(steps):
        obs, sin_th = observe(th, thdot)
        action = policy(obs)
        step_noise = None if noise is None else noise[..., t]
        th, thdot, reward = pendulum_step(th, thdot, action.squeeze(-1), constants, sin_th, noise=step_noise)
        rewards.append(reward)
    return th, thdot, torch.stack(rewards, dim=-1)


@torch.no_grad()
def simulate(
    policy: Policy,
    state: RolloutState | tuple[Tensor, Tensor],
    params: PendulumParams,
    horizon: int,
    *,
    compile: bool = False,
    tile: int = SIMULATE_TILE,
    features: PhysicsFeatures | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    native: bool | None = None,
) -> Simulation:
    """Rolls ``policy`` through the pendulum for ``horizon`` steps without gradients and returns only the returns.

    The fast path for evaluation and throughput: no autograd graph, no trajectory kept (each tile's ``[rows, H]``
    rewards are summed once at its end), batches larger than ``tile`` simulated tile by tile (each tile runs all
    ``horizon`` steps while its activations stay in cache). Agrees with ``fused_rollout(...).rewards.sum(-1)`` to
    float tolerance, and bit for bit where both run the same kernels on the same rows (eager, one tile, the same
    noise).

    Args:
        policy: ``observation [N, 3] -> action [N, 1]``.
        state: start state ``(th, thdot)`` (or a :class:`RolloutState`), each ``[*B]``.
        params: physical parameters, each ``[*B]`` or broadcastable to it.
        horizon: number of steps ``H``.
        compile: run the loop in ``torch.compile``-d chunks of :data:`COMPILE_CHUNK` steps (CUDA graphs on CUDA).
        tile: rows simulated together.
        features: which optional physics terms to compute (default: read from ``params``, one host sync).
        generator: draws the torque noise (``[tile, H]`` per tile) when ``torque_noise > 0`` and ``noise`` is not
            given.
        noise: standard-normal torque noise ``[*B, H]`` to use instead.
        native: run each tile through :func:`research.native.native_simulate` (the C loop); ``None`` (default):
            wherever it supports the case (:func:`research.native.supported`: a small tanh/relu ``SquashedMLP``,
            Gymnasium's physics) and ``compile`` is off; ``False``: never; ``True``: required.

    Returns:
        A :class:`Simulation` of ``[*B]`` tensors: the undiscounted returns and the final state.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
    if tile <= 0:
        raise ValueError(f"tile must be a positive number of rows, got {tile}")
    policy = as_tensor_policy(policy)
    th, thdot = state[0], state[1]
    batch = th.shape
    th, thdot = th.reshape(-1), thdot.reshape(-1)
    n = th.numel()
    features = physics_features(params) if features is None else features
    params = PendulumParams(
        *(torch.broadcast_to(torch.as_tensor(p, dtype=th.dtype, device=th.device), batch).reshape(-1) for p in params)
    )
    if noise is not None:
        noise = rollout_noise(batch, horizon, features, th, noise).reshape(n, horizon)
    steps_fn = _compiled(_simulate_steps, th.device) if compile else _simulate_steps
    graphs = compile and th.device.type == "cuda"  # _compiled captures CUDA graphs there
    chunk = COMPILE_CHUNK if compile else horizon
    tiles = []
    for lo in range(0, n, tile):
        rows = slice(lo, min(lo + tile, n))
        t_th, t_thdot, t_params = th[rows], thdot[rows], PendulumParams(*(p[rows] for p in params))
        if noise is None:
            t_noise = rollout_noise(t_th.shape, horizon, features, t_th, None, generator)
        else:
            t_noise = noise[rows]
        if native is not False and not compile:
            t_constants = step_constants(t_params, features)
            if native_module.supported(policy, t_constants, t_th, t_th.shape[0]):
                tiles.append(native_module.native_simulate(policy, t_th, t_thdot, t_constants, horizon))
                continue
        if native:
            raise ValueError("native=True: research.native does not support this simulation (see "
                             "research.native.supported; compile=False)")
        rewards = []
        for start in range(0, horizon, chunk):
            stop = min(start + chunk, horizon)
            c_noise = None if t_noise is None else t_noise[:, start:stop]
            t_th, t_thdot, c_rewards = steps_fn(policy, t_th, t_thdot, t_params, stop - start, features, c_noise)
            # A CUDA graph's outputs are overwritten by its next replay: keep copies of what outlives the call.
            rewards.append(c_rewards.clone() if graphs else c_rewards)
        if graphs:
            t_th, t_thdot = t_th.clone(), t_thdot.clone()
        # One sum over the tile's [rows, H] rewards, as fused_rollout(...).rewards.sum(-1) sums them (a running sum
        # would round differently); the tile's rewards are a few hundred kB.
        returns = (rewards[0] if len(rewards) == 1 else torch.cat(rewards, dim=-1)).sum(-1)
        tiles.append((returns, t_th, t_thdot))
    returns, th, thdot = (torch.cat([t[i] for t in tiles]).reshape(batch) for i in range(3))
    return Simulation(returns, th, thdot)
