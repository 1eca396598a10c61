"""The one evaluator every method is scored with (the protocol is in ``docs/protocol.md``).

1000 fixed initial states drawn from the system's reset distribution with a fixed evaluation seed that no training
run uses, the system's horizon (200 steps for the pendulum), undiscounted return, deterministic policy, batched on
our own simulator. By default on Gymnasium's pendulum; on any :class:`research.systems.System` and physics variant
the same states are used (for the pendulum, represented in the wall's range when there is a wall), parameters drawn
per episode (``randomized``) come from a fixed parameter seed, and noise (``noisy``) from a fixed noise seed, so
every method meets the same systems and the same noise. States, parameters and noise are drawn on the CPU in float64 and then cast, so every device and dtype sees
the same values. The episodes run on :func:`research.rollout.simulate`, the gradient-free rollout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from research.policies import as_tensor_policy
from research.rollout import simulate
from research.systems import System, get_system
from research.systems.pendulum import Pendulum

#: Seed of the evaluation states. Training seeds are small integers; trainers refuse this one.
EVAL_SEED = 1_000_003
#: Seed of the evaluation's torque noise (physics with ``torque_noise > 0``).
EVAL_NOISE_SEED = 1_000_033
#: Seed of the evaluation's per-episode parameter draws (physics with ranges, e.g. ``randomized``).
EVAL_PARAMS_SEED = 1_000_037
EVAL_EPISODES = 1000
#: The pendulum's evaluation horizon (every system declares its own: ``System.horizon``).
EVAL_HORIZON = Pendulum.horizon
#: A pendulum's episode succeeds when it ends within this angle of upright (rad, about 29 degrees) ...
SUCCESS_ANGLE = Pendulum.success_angle
#: ... and slower than this (rad/s): the pendulum is held up, not swinging through.
SUCCESS_SPEED = Pendulum.success_speed

METRIC_KEYS = (
    "return_mean",
    "return_std",
    "return_median",
    "return_iqm",
    "return_min",
    "success_rate",
    "final_angle_abs_median",
    "final_angle_abs_p90",
)


def _physics(physics: System | str | None) -> System:
    if physics is None:
        return get_system("pendulum")
    return get_system("pendulum", physics) if isinstance(physics, str) else physics


def _cast(params: tuple, device: torch.device | str, dtype: torch.dtype) -> tuple:
    return type(params)(*(p.to(device=device, dtype=dtype) for p in params))


def evaluation_params(
    physics: System | str | None = None,
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_PARAMS_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple:
    """The fixed per-episode parameters of ``physics`` (a system, or a pendulum preset name), each
    ``[num_episodes]`` (its ranges drawn from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return _cast(_physics(physics).params((num_episodes,), generator=generator, dtype=torch.float64), device, dtype)


def evaluation_states(
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    physics: System | str | None = None,
    params: tuple | None = None,
) -> Tensor:
    """The fixed initial states ``[num_episodes, state_dim]``, identical on every device: the system's reset
    distribution drawn in float64 from ``seed`` (for the pendulum with a wall, the same physical angles in the
    wall's range; ``params`` gives the wall per episode)."""
    generator = torch.Generator().manual_seed(seed)
    system = _physics(physics)
    cpu = None if params is None else _cast(params, "cpu", torch.float64)
    state = system.initial_state((num_episodes,), generator=generator, dtype=torch.float64, params=cpu)
    return state.to(device=device, dtype=dtype)


def evaluation_noise(
    physics: System | str | None = None,
    num_episodes: int = EVAL_EPISODES,
    horizon: int | None = None,
    seed: int = EVAL_NOISE_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """The fixed standard-normal noise ``[num_episodes, horizon, noise_dim]``, or ``None`` when ``physics`` has
    none (``horizon`` default: the system's)."""
    system = _physics(physics)
    if not system.needs_noise:
        return None
    horizon = system.horizon if horizon is None else horizon
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_episodes, horizon, system.noise_dim), generator=generator, dtype=torch.float64)
    return noise.to(device=device, dtype=dtype)


def interquartile_mean(values: Tensor) -> Tensor:
    """Mean of the middle 50% of ``values`` (``[N]``): the trimmed mean that drops the lowest and highest quarter."""
    n = values.numel()
    cut = n // 4
    ordered = values.sort().values
    return ordered[cut : n - cut].mean() if n - 2 * cut > 0 else ordered.mean()


def summarize_returns(returns: Tensor, upright: Tensor, final_angle: Tensor | None = None,
                      goal_error: Tensor | None = None) -> dict[str, float]:
    """Protocol statistics of per-episode ``returns [N]``, final-step success flags ``upright [N]`` and (if given)
    the final distance to the goal: ``goal_error [N]`` (radians from upright, ``System.goal_error``) or a pendulum's
    final angles ``final_angle [N]`` (any representation; their distance to upright is reported)."""
    returns = returns.detach().double().cpu()
    out = {
        "return_mean": returns.mean().item(),
        "return_std": returns.std(unbiased=False).item(),
        "return_median": returns.median().item(),
        "return_iqm": interquartile_mean(returns).item(),
        "return_min": returns.min().item(),
        "success_rate": upright.detach().double().cpu().mean().item(),
    }
    if final_angle is not None:
        goal_error = Pendulum().goal_error(final_angle.unsqueeze(-1))
    if goal_error is not None:
        distance = goal_error.detach().double().cpu()
        out["final_angle_abs_median"] = distance.median().item()
        out["final_angle_abs_p90"] = torch.quantile(distance, 0.9).item()
    out["episodes"] = int(returns.numel())
    return out


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module | Callable[[Tensor], Tensor],
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    horizon: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    physics: System | str | None = None,
    *,
    noise_seed: int = EVAL_NOISE_SEED,
    params_seed: int = EVAL_PARAMS_SEED,
) -> dict[str, float]:
    """Scores a deterministic policy by the shared protocol.

    Args:
        policy: ``observation [N, obs_dim] -> action [N, action_dim]`` (a plain module, a TorchRL actor, or a
            function).
        num_episodes, seed, horizon: the protocol's defaults (``horizon``: the system's); change them only for
            quick checks.
        device, dtype: where to simulate; default: those of the policy's parameters (CPU/float32 otherwise).
        physics: the system and variant to score on (a :class:`~research.systems.System`, or a pendulum preset
            name); ``None``: Gymnasium's pendulum.
        noise_seed: seed of the torque noise (only with noise); params_seed: of the per-episode parameter draws
            (only with ranges). Fixed by default, so two calls, and two methods, meet the same noise and pendulums.

    Returns:
        ``return_mean``, ``return_std``, ``return_median``, ``return_iqm``, ``return_min`` (the worst episode),
        ``success_rate`` (share of episodes ending at the goal, ``System.is_success``: for the pendulum within
        :data:`SUCCESS_ANGLE` = 0.5 rad of upright, slower than :data:`SUCCESS_SPEED` = 1 rad/s),
        ``final_angle_abs_median`` and ``final_angle_abs_p90`` (median and 90th percentile of the final distance
        to the goal, ``System.goal_error``, radians from upright for the swing-ups) and ``episodes``: :data:`METRIC_KEYS` plus the count.
    """
    if isinstance(policy, nn.Module):
        first = next(iter(policy.parameters()), None)
        if first is not None:
            device = first.device if device is None else device
            dtype = first.dtype if dtype is None else dtype
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    system = _physics(physics)
    horizon = system.horizon if horizon is None else horizon
    params = evaluation_params(system, num_episodes, params_seed, device, dtype)
    state = evaluation_states(num_episodes, seed, device, dtype, physics=system, params=params)
    noise = evaluation_noise(system, num_episodes, horizon, noise_seed, device, dtype)
    was_training = policy.training if isinstance(policy, nn.Module) else None
    if isinstance(policy, nn.Module):
        policy.eval()
    try:
        # The gradient-free path: returns and final states only, oneDNN kernels for an MLP on CPU (about 2x faster
        # than the eager fused_rollout at 1000 x 200 steps); the same returns as fused_rollout(...).rewards.sum(-1),
        # bit for bit where both run the same kernels (tests/test_rollout_paths.py). One tile: the policy is called
        # once per step on every episode, as a rollout calls it (a policy may count its calls).
        returns, final = simulate(as_tensor_policy(policy), state, params, horizon, system=system, noise=noise,
                                  tile=max(num_episodes, 1))
    finally:
        if was_training:
            policy.train()
    return summarize_returns(returns, system.is_success(final), goal_error=system.goal_error(final.double().cpu()))
