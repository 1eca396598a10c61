"""The one evaluator every method is scored with (the protocol is in ``docs/protocol.md``).

1000 fixed initial states drawn from Gymnasium's reset distribution with a fixed evaluation seed that no training
run uses, 200 steps, undiscounted return, deterministic policy, batched on our own simulator. By default on
Gymnasium's physics; on a physics variant (:mod:`research.envs.presets`) the same states are used (represented in
the wall's range when there is a wall), parameters drawn per episode (``randomized``) come from a fixed parameter
seed, and torque noise (``noisy``) from a fixed noise seed, so every method meets the same pendulums and the same
noise. States, parameters and noise are drawn on the CPU in float64 and then cast, so every device and dtype sees
the same values. The episodes run on :func:`research.rollout.simulate`, the gradient-free rollout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from research.envs.physics import (
    PendulumParams,
    angle_normalize,
    is_upright,
    sample_initial_state,
    to_wall_range,
)
from research.envs.presets import Physics, get_physics
from research.policies import as_tensor_policy
from research.rollout import simulate

#: Seed of the evaluation states. Training seeds are small integers; trainers refuse this one.
EVAL_SEED = 1_000_003
#: Seed of the evaluation's torque noise (physics with ``torque_noise > 0``).
EVAL_NOISE_SEED = 1_000_033
#: Seed of the evaluation's per-episode parameter draws (physics with ranges, e.g. ``randomized``).
EVAL_PARAMS_SEED = 1_000_037
EVAL_EPISODES = 1000
EVAL_HORIZON = 200
#: An episode succeeds when it ends within this angle of upright (rad, about 29 degrees) ...
SUCCESS_ANGLE = 0.5
#: ... and slower than this (rad/s): the pendulum is held up, not swinging through.
SUCCESS_SPEED = 1.0

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


def _physics(physics: Physics | str | None) -> Physics:
    if physics is None:
        return get_physics("default")
    return get_physics(physics) if isinstance(physics, str) else physics


def evaluation_params(
    physics: Physics | str | None = None,
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_PARAMS_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PendulumParams:
    """The fixed per-episode parameters of ``physics``, each ``[num_episodes]`` (its ranges drawn from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    params = _physics(physics).params((num_episodes,), generator=generator, dtype=torch.float64)
    return PendulumParams(*(p.to(device=device, dtype=dtype) for p in params))


def evaluation_states(
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    physics: Physics | str | None = None,
    params: PendulumParams | None = None,
) -> tuple[Tensor, Tensor]:
    """The fixed initial states ``(th, thdot)``, each ``[num_episodes]``, identical on every device.

    With a wall (in ``physics``, or per episode in ``params``) the same physical angles are represented in the
    wall's range ``[phi - 2 pi, phi]``.
    """
    generator = torch.Generator().manual_seed(seed)
    th, thdot = sample_initial_state((num_episodes,), generator=generator, dtype=torch.float64)
    physics = _physics(physics)
    if physics.features.wall:
        wall_angle = (
            params.wall_angle.detach().to("cpu", torch.float64) if params is not None else physics.value("wall_angle")
        )
        th = to_wall_range(th, wall_angle)
    return th.to(device=device, dtype=dtype), thdot.to(device=device, dtype=dtype)


def evaluation_noise(
    physics: Physics | str | None = None,
    num_episodes: int = EVAL_EPISODES,
    horizon: int = EVAL_HORIZON,
    seed: int = EVAL_NOISE_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """The fixed standard-normal torque noise ``[num_episodes, horizon]``, or ``None`` when ``physics`` has none."""
    if not _physics(physics).features.noise:
        return None
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_episodes, horizon), generator=generator, dtype=torch.float64)
    return noise.to(device=device, dtype=dtype)


def interquartile_mean(values: Tensor) -> Tensor:
    """Mean of the middle 50% of ``values`` (``[N]``): the trimmed mean that drops the lowest and highest quarter."""
    n = values.numel()
    cut = n // 4
    ordered = values.sort().values
    return ordered[cut : n - cut].mean() if n - 2 * cut > 0 else ordered.mean()


def summarize_returns(returns: Tensor, upright: Tensor, final_angle: Tensor | None = None) -> dict[str, float]:
    """Protocol statistics of per-episode ``returns [N]``, final-step ``upright [N]`` flags and (if given) the final
    angles ``final_angle [N]`` (any representation; their distance to upright is reported)."""
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
        distance = angle_normalize(final_angle.detach().double().cpu()).abs()
        out["final_angle_abs_median"] = distance.median().item()
        out["final_angle_abs_p90"] = torch.quantile(distance, 0.9).item()
    out["episodes"] = int(returns.numel())
    return out


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module | Callable[[Tensor], Tensor],
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    horizon: int = EVAL_HORIZON,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    physics: Physics | str | None = None,
    *,
    noise_seed: int = EVAL_NOISE_SEED,
    params_seed: int = EVAL_PARAMS_SEED,
) -> dict[str, float]:
    """Scores a deterministic policy by the shared protocol.

    Args:
        policy: ``observation [N, 3] -> action [N, 1]`` (a plain module, a TorchRL actor, or a function).
        num_episodes, seed, horizon: the protocol's defaults; change them only for quick checks.
        device, dtype: where to simulate; default: those of the policy's parameters (CPU/float32 otherwise).
        physics: the variant to score on (a :class:`Physics` or a preset name); ``None``: Gymnasium's physics.
        noise_seed: seed of the torque noise (only with noise); params_seed: of the per-episode parameter draws
            (only with ranges). Fixed by default, so two calls, and two methods, meet the same noise and pendulums.

    Returns:
        ``return_mean``, ``return_std``, ``return_median``, ``return_iqm``, ``return_min`` (the worst episode),
        ``success_rate`` (share of episodes ending within :data:`SUCCESS_ANGLE` = 0.5 rad of upright, slower than
        :data:`SUCCESS_SPEED` = 1 rad/s), ``final_angle_abs_median`` and ``final_angle_abs_p90`` (median and 90th
        percentile of the final ``|angle|`` to upright, rad) and ``episodes``: :data:`METRIC_KEYS` plus the count.
    """
    if isinstance(policy, nn.Module):
        first = next(iter(policy.parameters()), None)
        if first is not None:
            device = first.device if device is None else device
            dtype = first.dtype if dtype is None else dtype
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    physics = _physics(physics)
    params = evaluation_params(physics, num_episodes, params_seed, device, dtype)
    th, thdot = evaluation_states(num_episodes, seed, device, dtype, physics=physics, params=params)
    noise = evaluation_noise(physics, num_episodes, horizon, noise_seed, device, dtype)
    was_training = policy.training if isinstance(policy, nn.Module) else None
    if isinstance(policy, nn.Module):
        policy.eval()
    try:
        # The gradient-free path: returns and final states only, oneDNN kernels for an MLP on CPU (about 2x faster
        # than the eager fused_rollout at 1000 x 200 steps); the same returns as fused_rollout(...).rewards.sum(-1),
        # bit for bit where both run the same kernels (tests/test_rollout_paths.py). One tile: the policy is called
        # once per step on every episode, as a rollout calls it (a policy may count its calls).
        returns, final_th, final_thdot = simulate(as_tensor_policy(policy), (th, thdot), params, horizon,
                                                  features=physics.features, noise=noise, tile=max(num_episodes, 1))
    finally:
        if was_training:
            policy.train()
    upright = is_upright(final_th, final_thdot, SUCCESS_ANGLE, SUCCESS_SPEED)
    return summarize_returns(returns, upright, final_th)
