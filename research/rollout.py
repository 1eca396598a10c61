"""Fused rollouts: the policy and the pure physics in one tensor loop, with no per-step tensordict overhead.

This is the one step loop of the library: every differentiable trainer runs it (the evaluator runs its gradient-free
twin, :func:`simulate`), for any :class:`research.systems.System` (``system=``; default: Gymnasium's pendulum). A
step is ``system.observe`` -> ``policy`` -> ``system.step``; the system owns the state layout, the observation, the
physics, the reset distribution and the noise, and this module names none of them. The pendulum's TorchRL
environment calls the same step, so both paths give identical rewards and gradients (``tests/test_rollout.py``
checks it). Where :mod:`research.native` supports the case (a small tanh/relu ``SquashedMLP`` on Gymnasium's physics,
without resets, trajectory or compile), both functions hand the whole loop to its generated C code instead, forward
and backward (``native=None``, the default; ``tests/test_native.py`` checks the agreement): at small batches that is
several times faster than any torch path, because a step no longer costs a dozen kernel launches.

Episodes can be truncated inside a rollout: with ``episode_length`` set, every environment whose step counter reaches
it is reset to a fresh state drawn from Gymnasium's reset distribution (the gradient chain is cut there, as in a
real reset, from ``system.reset_state``). Staggered step counters give the
staggered episode starts of truncated BPTT and SHAC.

Which optional physics terms the steps compute (e.g. :class:`research.systems.pendulum.PhysicsFeatures`) is decided
once per rollout: from ``features=``, else the system's own (``system.features``, static, no host sync), else (no
system given) read from ``params`` with one host sync. A system with noise (the pendulum's ``torque_noise > 0``)
takes ``system.noise_dim`` standard-normal samples per environment and step: the whole ``[*B, H, noise_dim]`` block
is drawn at the start of the rollout from ``noise_generator`` (default: ``generator``), or passed in as ``noise=``
(the evaluator does, so every method meets the same noise).

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
from typing import Any, NamedTuple

import torch
from torch import Tensor

import research.native as native_module
from research.policies import as_tensor_policy
from research.systems import System
from research.systems.pendulum import Pendulum

Policy = Callable[[Tensor], Tensor]

#: Steps per compiled chunk: long enough that Python and autograd overhead between chunks is negligible, short
#: enough that compiling stays in the tens of seconds.
COMPILE_CHUNK = 10
#: Rows per tile in :func:`simulate`: a tile's activations (``tile x 64`` floats per layer) stay in L2 cache.
SIMULATE_TILE = 4096
#: The system of a rollout that names none: Gymnasium's pendulum (its features read from the parameters).
DEFAULT_SYSTEM = Pendulum()


class RolloutState(NamedTuple):
    """What a rollout carries from one window to the next."""

    state: Tensor  # [*B, state_dim]
    step_count: Tensor  # [*B] int64: steps taken in the current episode


class Rollout(NamedTuple):
    """The result of :func:`fused_rollout`. ``B`` is the batch shape, ``H`` the horizon.

    ``observations``, ``actions``, ``next_observations`` and ``truncated`` are ``None`` unless the rollout was asked
    to keep the trajectory (``observations`` alone, detached, with ``keep_observations``).
    """

    rewards: Tensor  # [*B, H]
    state: RolloutState  # after the last step (and after any reset at that step)
    observations: Tensor | None = None  # [*B, H, obs_dim] what the policy saw
    actions: Tensor | None = None  # [*B, H, action_dim]
    next_observations: Tensor | None = None  # [*B, H, obs_dim] the state reached, before any reset
    truncated: Tensor | None = None  # [*B, H] bool: the episode ended (and was reset) after this step
    contact: Tensor | None = None  # [*B, H] bool: this step touched a contact (only with cut_at_contact)


def initial_state(state: Tensor, step_count: Tensor | None = None) -> RolloutState:
    """A :class:`RolloutState` at the start of episodes from states ``[*B, state_dim]`` (step counters zero unless
    given)."""
    if step_count is None:
        step_count = torch.zeros(state.shape[:-1], dtype=torch.int64, device=state.device)
    return RolloutState(state, step_count)


def _resolve(system: System | None, params: Any, features: Any) -> tuple[System, Any]:
    """The rollout's system and features (see the module docstring)."""
    if system is None:
        system = DEFAULT_SYSTEM
        return system, system.features_of(params) if features is None else features
    return system, system.features if features is None else features


def rollout_noise(
    shape: torch.Size | tuple[int, ...],
    horizon: int,
    features: Any,
    like: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    system: System | None = None,
) -> Tensor | None:
    """The standard-normal noise block ``[*shape, horizon, noise_dim]`` of a rollout, or ``None`` without noise.

    ``noise`` (if given) is checked and returned; otherwise it is drawn from ``generator`` on ``like``'s device and
    dtype. Raises ``ValueError`` when the features need noise and neither is given.
    """
    system = DEFAULT_SYSTEM if system is None else system
    return system.noise_block(tuple(shape), horizon, generator, like, features, noise)


def _native_case(system: System, policy: Policy, constants: Any, state: Tensor, native: bool | None,
                 plain: bool) -> bool:
    """Whether :mod:`research.native` runs this rollout (``native=True`` and an unsupported case raise)."""
    if native is False:
        return False
    ok = plain and system.native and state.dim() == 2 and native_module.supported(policy, constants, state,
                                                                                  state.shape[0])
    if native and not ok:
        raise ValueError("native=True: research.native does not support this rollout (see research.native.supported; "
                         "the pendulum, no compile, episode_length or keep_trajectory, a [B] batch)")
    return ok


def fused_rollout(
    policy: Policy,
    state: RolloutState,
    params: Any,
    horizon: int,
    *,
    system: System | None = None,
    episode_length: int | None = None,
    generator: torch.Generator | None = None,
    keep_trajectory: bool = False,
    compile: bool = False,
    features: Any = None,
    noise: Tensor | None = None,
    noise_generator: torch.Generator | None = None,
    native: bool | None = None,
    cut_at_contact: str | None = None,
    action_noise: float = 0.0,
    keep_observations: bool = False,
) -> Rollout:
    """Rolls ``policy`` through ``system`` for ``horizon`` steps, differentiably.

    Args:
        policy: ``observation [*B, obs_dim] -> action [*B, action_dim]``.
        state: start state (see :func:`initial_state`); tensors may require grad. Use ``system.initial_state``
            (which represents a pendulum's angle in a wall's range); a carried state already is.
        params: the system's physical parameters (``system.params(...)``), each ``[*B]`` or broadcastable to it.
        horizon: number of steps ``H``.
        system: the :class:`~research.systems.System` (default: Gymnasium's pendulum, features read from ``params``).
        episode_length: if set, environments whose episode reaches this many steps are reset in place, with new
            states drawn from ``generator`` (``system.reset_state``).
        generator: draws the reset states, and the noise unless ``noise_generator`` or ``noise`` is given.
        keep_trajectory: also return observations, actions, next observations and truncation flags.
        compile: run the steps in ``torch.compile``-d chunks of :data:`COMPILE_CHUNK` steps (forward and backward
            compiled; the first call per batch shape compiles for tens of seconds). Not with ``episode_length``.
        features: which optional physics terms to compute; default: the system's (or, without a system, read from
            ``params``, one host sync per call). Must cover ``params``; a superset is correct, only slower.
        noise: standard-normal noise ``[*B, H, noise_dim]`` (``[*B, H]`` for one draw a step) to use instead of
            drawing it (only with noise features).
        noise_generator: a separate stream for the noise (default: ``generator``).
        native: run :func:`research.native.native_rollout` (the C loop with its own adjoint); ``None`` (default):
            wherever it supports the case (:func:`research.native.supported`: the pendulum without optional terms,
            a policy that declares its layers) and neither ``compile``, ``episode_length`` nor ``keep_trajectory``
            is asked for; ``False``: never; ``True``: required.
        cut_at_contact: ``None`` (default): no contact test. ``"before"`` or ``"after"``: each step also asks
            ``system.contact`` (no gradient) and, where the step touches a contact, cuts the gradient path across it:
            the state after it is detached (so nothing later reaches anything earlier through the contact) and the
            rollout returns the flags as ``contact``. ``"before"`` also feeds the contact step a detached state and
            detaches its ``next_observations`` row (no gradient path crosses the contact at all); ``"after"`` keeps
            ``next_observations`` differentiable through that one step (a value bootstrapped there sees it). Needs
            ``keep_trajectory``; not with ``compile``.
        action_noise: std of Gaussian noise added to a squashed policy's output before its squash at every step,
            ``max_torque * tanh(net(obs) + action_noise * eps)`` (randomised smoothing; the gradient flows through
            the mean); ``eps [H, *B, action_dim]`` is drawn from ``generator`` after the physics noise. Needs a
            :class:`~research.policies.SquashedMLP` and neither ``compile`` nor ``episode_length``; runs natively.
        keep_observations: also return the observations the policy saw (``Rollout.observations``, detached),
            without the rest of ``keep_trajectory``; runs natively.

    Returns:
        A :class:`Rollout`; ``rewards`` has shape ``[*B, H]``.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
    if cut_at_contact not in (None, "before", "after"):
        raise ValueError(f"cut_at_contact must be None, 'before' or 'after', got {cut_at_contact!r}")
    if cut_at_contact is not None and (compile or not keep_trajectory):
        raise ValueError("cut_at_contact needs keep_trajectory=True and compile=False")
    x, step_count = state
    batch = x.shape[:-1]
    system, features = _resolve(system, params, features)
    noise_generator = generator if noise_generator is None else noise_generator
    noise = rollout_noise(batch, horizon, features, x, noise, noise_generator, system)
    constants = None if compile else system.constants(params, features, like=x)  # (compiled chunks derive theirs)
    if keep_observations and compile:
        raise ValueError("keep_observations needs compile=False")
    pre_noise = None
    if action_noise:
        if compile or episode_length is not None or not hasattr(policy, "net"):
            raise ValueError("action_noise needs a squashed policy (an MLP then max_torque * tanh), compile=False and "
                             "episode_length=None")
        eps = torch.randn((horizon, *batch, system.action_dim), generator=generator, device=x.device, dtype=x.dtype)
        pre_noise = action_noise * eps.movedim(0, -2)  # [*B, H, action_dim]
    plain = not compile and episode_length is None and not keep_trajectory
    if _native_case(system, policy, constants, x, native, plain):
        rewards, *columns, seen = native_module.native_rollout(policy, *x.unbind(-1), constants, horizon, pre_noise,
                                                               noise)
        return Rollout(rewards, RolloutState(torch.stack(columns, dim=-1), step_count + horizon),
                       observations=seen if keep_observations else None)
    if compile:
        if episode_length is not None:
            raise ValueError("compile=True rolls out without resets; use episode_length=None (or compile=False)")
        return _compiled_rollout(policy, system, state, params, horizon, keep_trajectory, features, noise)
    rewards, observations, actions, next_observations, truncations, contacts = [], [], [], [], [], []
    for t in range(horizon):
        obs, aux = system.observe_for_step(x)
        if pre_noise is None:
            action = policy(obs)
        else:
            action = policy.max_torque * torch.tanh(policy.net(obs) + pre_noise[..., t, :])
        if cut_at_contact is None:
            x, reward = system.step(x, action, constants, None if noise is None else noise[..., t, :], aux)
        else:
            x, reward, next_obs, touched = _contact_step(system, x, action, constants,
                                                         None if noise is None else noise[..., t, :], aux,
                                                         cut_at_contact)
            contacts.append(touched)
        rewards.append(reward)
        if episode_length is not None:
            step_count = step_count + 1
        if keep_trajectory or keep_observations:
            observations.append(obs if keep_trajectory else obs.detach())
        if keep_trajectory:
            actions.append(action)
            next_observations.append(system.observe(x) if cut_at_contact is None else next_obs)
        if episode_length is not None:
            done = step_count >= episode_length
            fresh = system.reset_state(batch, generator, x, constants, features)
            x = torch.where(done.unsqueeze(-1), fresh, x)
            step_count = torch.where(done, torch.zeros_like(step_count), step_count)
            if keep_trajectory:
                truncations.append(done)
    final = RolloutState(x, step_count if episode_length is not None else step_count + horizon)
    if not keep_trajectory:
        return Rollout(torch.stack(rewards, dim=-1), final,
                       observations=torch.stack(observations, dim=-2) if keep_observations else None)
    if not truncations:
        truncations = [torch.zeros(batch, dtype=torch.bool, device=x.device)] * horizon
    return Rollout(
        rewards=torch.stack(rewards, dim=-1),
        state=final,
        observations=torch.stack(observations, dim=-2),
        actions=torch.stack(actions, dim=-2),
        next_observations=torch.stack(next_observations, dim=-2),
        truncated=torch.stack(truncations, dim=-1),
        contact=torch.stack(contacts, dim=-1) if contacts else None,
    )


def _contact_step(system: System, x: Tensor, action: Tensor, constants: Any, noise: Tensor | None, aux: Any,
                  mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of :func:`fused_rollout` with ``cut_at_contact=mode``: ``(next state [*B, state_dim] (detached
    where the step touched a contact), reward [*B], next observation [*B, obs_dim], contact [*B] bool)``."""
    touched = system.contact(x.detach(), action.detach(), constants, noise)
    cut = touched.unsqueeze(-1)
    if mode == "before":
        x, aux = torch.where(cut, x.detach(), x), None  # (aux was computed from the undetached state)
    x, reward = system.step(x, action, constants, noise, aux)
    if mode == "after":
        next_obs = system.observe(x)
    x = torch.where(cut, x.detach(), x)
    if mode == "before":
        next_obs = system.observe(x)
    return x, reward, next_obs, touched


def discounted_sum(rewards: Tensor, discount: float) -> Tensor:
    """``sum_t discount**t * rewards[..., t]``: ``[*B, H]`` -> ``[*B]``."""
    horizon = rewards.shape[-1]
    weights = discount ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
    return (rewards * weights).sum(-1)


# ---------------------------------------------------------------------------------------------------- compiled chunks
def _rollout_steps(
    policy: Policy,
    system: System,
    x: Tensor,
    params: Any,
    steps: int,
    keep_trajectory: bool,
    features: Any,
    noise: Tensor | None,
) -> tuple[Tensor, ...]:
    """``steps`` steps of the fused loop without resets, the body of one compiled chunk (``noise``:
    ``[*B, steps, noise_dim]``).

    Returns ``(state, rewards [*B, steps])``, followed by ``observations [*B, steps, obs_dim]``, ``actions
    [*B, steps, action_dim]`` and ``next_observations [*B, steps, obs_dim]`` when ``keep_trajectory``.
    """
    constants = system.constants(params, features, like=x)
    rewards, observations, actions = [], [], []
    for t in range(steps):
        obs, aux = system.observe_for_step(x)
        action = policy(obs)
        x, reward = system.step(x, action, constants, None if noise is None else noise[..., t, :], aux)
        rewards.append(reward)
        if keep_trajectory:
            observations.append(obs)
            actions.append(action)
    rewards = torch.stack(rewards, dim=-1)
    if not keep_trajectory:
        return x, rewards
    observations.append(system.observe(x))
    trajectory = torch.stack(observations, dim=-2)
    return x, rewards, trajectory[..., :-1, :], torch.stack(actions, dim=-2), trajectory[..., 1:, :]


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
    system: System,
    state: RolloutState,
    params: Any,
    horizon: int,
    keep_trajectory: bool,
    features: Any,
    noise: Tensor | None,
) -> Rollout:
    x, step_count = state
    steps_fn = _compiled(_rollout_steps, x.device)
    chunks = []
    for start in range(0, horizon, COMPILE_CHUNK):
        stop = min(start + COMPILE_CHUNK, horizon)
        chunk_noise = None if noise is None else noise[..., start:stop, :]
        out = steps_fn(policy, system, x, params, stop - start, keep_trajectory, features, chunk_noise)
        x = out[0]
        chunks.append(out[1:])
    final = RolloutState(x, step_count + horizon)
    rewards = torch.cat([c[0] for c in chunks], dim=-1)
    if not keep_trajectory:
        return Rollout(rewards, final)
    observations, actions, next_observations = (torch.cat([c[i] for c in chunks], dim=-2) for i in (1, 2, 3))
    truncated = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    return Rollout(rewards, final, observations, actions, next_observations, truncated)


# ---------------------------------------------------------------------------------------------------- simulation
class Simulation(NamedTuple):
    """The result of :func:`simulate`."""

    returns: Tensor  # [*B] undiscounted sum of the rewards over the horizon
    state: Tensor  # [*B, state_dim] final state


def _simulate_steps(
    policy: Policy,
    system: System,
    x: Tensor,
    params: Any,
    steps: int,
    features: Any,
    noise: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``steps`` gradient-free steps: ``(state, rewards [N, steps])``, the body of one compiled chunk."""
    constants = system.constants(params, features, like=x)
    rewards = []
    for t in range(steps):
        obs, aux = system.observe_for_step(x)
        action = policy(obs)
        x, reward = system.step(x, action, constants, None if noise is None else noise[..., t, :], aux)
        rewards.append(reward)
    return x, torch.stack(rewards, dim=-1)


@torch.no_grad()
def simulate(
    policy: Policy,
    state: RolloutState | Tensor,
    params: Any,
    horizon: int,
    *,
    system: System | None = None,
    compile: bool = False,
    tile: int = SIMULATE_TILE,
    features: Any = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    native: bool | None = None,
) -> Simulation:
    """Rolls ``policy`` through ``system`` for ``horizon`` steps without gradients and returns only the returns.

    The fast path for evaluation and throughput: no autograd graph, no trajectory kept (each tile's ``[rows, H]``
    rewards are summed once at its end), batches larger than ``tile`` simulated tile by tile (each tile runs all
    ``horizon`` steps while its activations stay in cache). Agrees with ``fused_rollout(...).rewards.sum(-1)`` to
    float tolerance, and bit for bit where both run the same kernels on the same rows (eager, one tile, the same
    noise).

    Args:
        policy: ``observation [N, obs_dim] -> action [N, action_dim]``.
        state: start states ``[*B, state_dim]`` (or a :class:`RolloutState`).
        params: the system's physical parameters, each ``[*B]`` or broadcastable to it.
        horizon: number of steps ``H``.
        system: the :class:`~research.systems.System` (default: Gymnasium's pendulum, features read from ``params``).
        compile: run the loop in ``torch.compile``-d chunks of :data:`COMPILE_CHUNK` steps (CUDA graphs on CUDA).
        tile: rows simulated together.
        features: which optional physics terms to compute (default: the system's, or read from ``params``).
        generator: draws the noise (``[tile, H, noise_dim]`` per tile) when the physics has noise and ``noise`` is
            not given.
        noise: standard-normal noise ``[*B, H, noise_dim]`` (or ``[*B, H]``) to use instead.
        native: run each tile through :func:`research.native.native_simulate` (the C loop); ``None`` (default):
            wherever it supports the case (the pendulum without optional terms, a policy that declares its layers)
            and ``compile`` is off; ``False``: never; ``True``: required.

    Returns:
        A :class:`Simulation`: the undiscounted returns ``[*B]`` and the final states ``[*B, state_dim]``.
    """
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
    if tile <= 0:
        raise ValueError(f"tile must be a positive number of rows, got {tile}")
    policy = as_tensor_policy(policy)
    x = state[0] if isinstance(state, RolloutState) else state
    batch, dim = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, dim)
    n = x.shape[0]
    system, features = _resolve(system, params, features)
    params = type(params)(
        *(torch.broadcast_to(torch.as_tensor(p, dtype=x.dtype, device=x.device), batch).reshape(-1) for p in params)
    )
    if noise is not None:
        noise = rollout_noise(batch, horizon, features, x, noise, None, system)
        noise = noise.reshape(n, horizon, -1)
    steps_fn = _compiled(_simulate_steps, x.device) if compile else _simulate_steps
    graphs = compile and x.device.type == "cuda"  # _compiled captures CUDA graphs there
    chunk = COMPILE_CHUNK if compile else horizon
    tiles = []
    for lo in range(0, n, tile):
        rows = slice(lo, min(lo + tile, n))
        t_x, t_params = x[rows], type(params)(*(p[rows] for p in params))
        if noise is None:
            t_noise = rollout_noise(t_x.shape[:-1], horizon, features, t_x, None, generator, system)
        else:
            t_noise = noise[rows]
        if native is not False and not compile:
            t_constants = system.constants(t_params, features, like=t_x)
            if _native_case(system, policy, t_constants, t_x, native, True):
                returns, *columns = native_module.native_simulate(policy, *t_x.unbind(-1), t_constants, horizon,
                                                                  t_noise)
                tiles.append((returns, torch.stack(columns, dim=-1)))
                continue
        elif native:
            _native_case(system, policy, None, t_x, native, False)  # raises
        rewards = []
        for start in range(0, horizon, chunk):
            stop = min(start + chunk, horizon)
            c_noise = None if t_noise is None else t_noise[:, start:stop, :]
            t_x, c_rewards = steps_fn(policy, system, t_x, t_params, stop - start, features, c_noise)
            # A CUDA graph's outputs are overwritten by its next replay: keep copies of what outlives the call.
            rewards.append(c_rewards.clone() if graphs else c_rewards)
        if graphs:
            t_x = t_x.clone()
        # One sum over the tile's [rows, H] rewards, as fused_rollout(...).rewards.sum(-1) sums them (a running sum
        # would round differently); the tile's rewards are a few hundred kB.
        returns = (rewards[0] if len(rewards) == 1 else torch.cat(rewards, dim=-1)).sum(-1)
        tiles.append((returns, t_x))
    returns = torch.cat([t[0] for t in tiles]).reshape(batch)
    final = torch.cat([t[1] for t in tiles]).reshape(*batch, dim)
    return Simulation(returns, final)
