"""The one evaluator every method is scored with (protocol in ``shared/REFERENCE.md``).

1000 fixed initial states drawn from Gymnasium's reset distribution with a fixed evaluation seed that no training
run uses, 200 steps, undiscounted return, deterministic policy, batched on our own simulator with default physics.
The initial states are drawn on the CPU in float64 and then cast, so every device and dtype sees the same states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from research.envs.physics import PendulumParams, is_upright, sample_initial_state
from research.policies import as_tensor_policy
from research.rollout import fused_rollout, initial_state

#: Seed of the evaluation states. Training seeds are small integers; trainers refuse this one.
EVAL_SEED = 1_000_003
EVAL_EPISODES = 1000
EVAL_HORIZON = 200

METRIC_KEYS = ("return_mean", "return_std", "return_median", "return_iqm", "return_min", "success_rate")


def evaluation_states(
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The fixed initial states ``(th, thdot)``, each ``[num_episodes]``, identical on every device."""
    generator = torch.Generator().manual_seed(seed)
    th, thdot = sample_initial_state((num_episodes,), generator=generator, dtype=torch.float64)
    return th.to(device=device, dtype=dtype), thdot.to(device=device, dtype=dtype)


def interquartile_mean(values: Tensor) -> Tensor:
    """Mean of the middle 50% of ``values`` (``[N]``): the trimmed mean that drops the lowest and highest quarter."""
    n = values.numel()
    cut = n // 4
    ordered = values.sort().values
    return ordered[cut : n - cut].mean() if n - 2 * cut > 0 else ordered.mean()


def summarize_returns(returns: Tensor, upright: Tensor) -> dict[str, float]:
    """Protocol statistics of per-episode ``returns [N]`` and final-step ``upright [N]`` flags."""
    returns = returns.detach().double().cpu()
    return {
        "return_mean": returns.mean().item(),
        "return_std": returns.std(unbiased=False).item(),
        "return_median": returns.median().item(),
        "return_iqm": interquartile_mean(returns).item(),
        "return_min": returns.min().item(),
        "success_rate": upright.detach().double().cpu().mean().item(),
        "episodes": int(returns.numel()),
    }


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module | Callable[[Tensor], Tensor],
    num_episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    horizon: int = EVAL_HORIZON,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Scores a deterministic policy by the shared protocol.

    Args:
        policy: ``observation [N, 3] -> action [N, 1]`` (a plain module, a TorchRL actor, or a function).
        num_episodes, seed, horizon: the protocol's defaults; change them only for quick checks.
        device, dtype: where to simulate; default: those of the policy's parameters (CPU/float32 otherwise).

    Returns:
        ``return_mean``, ``return_std``, ``return_median``, ``return_iqm``, ``return_min`` (the worst episode),
        ``success_rate`` (share of episodes ending with ``|angle| < 0.1`` rad and ``|thdot| < 1`` rad/s) and
        ``episodes``.
    """
    if isinstance(policy, nn.Module):
        first = next(iter(policy.parameters()), None)
        if first is not None:
            device = first.device if device is None else device
            dtype = first.dtype if dtype is None else dtype
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.float32 if dtype is None else dtype
    was_training = policy.training if isinstance(policy, nn.Module) else None
    if isinstance(policy, nn.Module):
        policy.eval()
    try:
        th, thdot = evaluation_states(num_episodes, seed, device, dtype)
        params = PendulumParams.default((num_episodes,), device=device, dtype=dtype)
        rollout = fused_rollout(as_tensor_policy(policy), initial_state(th, thdot), params, horizon)
    finally:
        if was_training:
            policy.train()
    returns = rollout.rewards.sum(-1)
    return summarize_returns(returns, is_upright(rollout.state.th, rollout.state.thdot))
