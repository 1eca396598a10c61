"""Backpropagation through time (BPTT): trajectory returns differentiated through the simulator into the policy.

The chain, one iteration: start states -> roll the policy through the physics for ``H`` steps -> horizon loss
(minus the discounted mean reward) -> gradient -> clip -> Adam step.

Two modes:

- full horizon (``window = 0``): every iteration resets ``num_envs`` pendulums from Gymnasium's reset distribution
  and rolls out ``horizon`` steps (the seed notebook's loop);
- truncated (``window = K > 0``): the pendulums keep running between updates; each update rolls ``K`` steps from
  where the last stopped (gradients cut at the window's start), episodes are reset every ``env.episode_length``
  steps with staggered starts so updates always see every phase of an episode.

Two rollout paths with identical gradients: ``rollout = "fused"`` (default; the pure physics in a tensor loop,
optionally ``torch.compile``-d) and ``rollout = "env"`` (TorchRL's ``env.rollout`` on :class:`PendulumEnv`).

The defaults (B=128, H=64, discount 0.98, 1000 iterations, Adam 5e-3 with cosine decay, clip 1.0, 2x64 tanh MLP)
are the best of the configurations tried on swing-up; ``experiments/bptt_*.toml`` keep the instructive others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict
from torch import Tensor

from research.config import ConfigError, RunConfig
from research.envs import PendulumEnv, PendulumParams, observation, sample_initial_state, sample_params
from research.policies import SquashedMLP, make_actor, make_policy
from research.rollout import Rollout, RolloutState, fused_rollout, initial_state
from research.runs import RunWriter
from research.training import (
    DTYPES,
    Budget,
    Evaluator,
    SkipGuard,
    describe,
    log_evaluation,
    progress_bar,
    resolve_device,
)

log = logging.getLogger(__name__)


@dataclass
class BPTTConfig(RunConfig):
    """Backpropagation through the simulator."""

    iterations: int = 1000
    """Number of gradient updates."""
    num_envs: int = 128
    """Pendulums simulated in parallel (the batch B)."""
    horizon: int = 64
    """Steps per rollout in full-horizon mode (H)."""
    window: int = 0
    """0: full-horizon BPTT; K > 0: truncated BPTT on windows of K steps with state carried between updates."""
    discount: float = 0.98
    """Discount applied to the rewards inside a rollout or window (1.0 = undiscounted)."""
    lr: float = 5e-3
    """Adam learning rate."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule over the iterations."""
    lr_final_fraction: float = 0.0
    """With the cosine schedule: final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Maximum global gradient norm (0 = no clipping)."""
    rollout: Literal["fused", "env"] = "fused"
    """'fused': pure tensor loop (fast); 'env': TorchRL env.rollout on PendulumEnv (full horizon only)."""
    compile: bool = False
    """torch.compile the fused step (fused path only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "num_envs", "horizon"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.window < 0:
            raise ConfigError(f"window must be >= 0 (0 = full horizon), got {self.window}")
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(f"discount must be in (0, 1], got {self.discount}")
        if self.lr <= 0 or self.grad_clip < 0:
            raise ConfigError(f"lr must be > 0 and grad_clip >= 0, got lr={self.lr}, grad_clip={self.grad_clip}")
        if self.env.backend != "simulator":
            raise ConfigError(f"env.backend must be 'simulator' for BPTT (it differentiates through our simulator), "
                              f"got {self.env.backend!r}")
        if self.rollout == "env" and (self.window or self.compile):
            raise ConfigError("rollout='env' supports full-horizon BPTT without compile (window=0, compile=false)")

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * (self.window or self.horizon)


def discount_weights(horizon: int, discount: float, like: Tensor) -> Tensor:
    """Normalised weights ``discount**t / sum_s discount**s``, ``[H]``: the loss is a weighted mean reward."""
    weights = discount ** torch.arange(horizon, device=like.device, dtype=like.dtype)
    return weights / weights.sum()


def horizon_loss(rewards: Tensor, discount: float) -> Tensor:
    """Minus the discounted mean reward of ``rewards [B, H]``, averaged over the batch: a scalar to minimise."""
    return -(rewards * discount_weights(rewards.shape[-1], discount, rewards)).sum(-1).mean()


def env_rollout_rewards(env: PendulumEnv, policy: SquashedMLP, th: Tensor, thdot: Tensor, params: PendulumParams,
                        horizon: int) -> Tensor:
    """Rewards ``[B, H]`` of ``policy`` through TorchRL's ``env.rollout`` from the given start states."""
    batch = th.shape
    td = TensorDict(
        {
            "th": th,
            "thdot": thdot,
            "observation": observation(th, thdot),
            "params": TensorDict(params._asdict(), batch_size=batch),
        },
        batch_size=batch,
        device=th.device,
    )
    rollout = env.rollout(horizon, make_actor(policy), tensordict=td, auto_reset=False)
    return rollout["next", "reward"].squeeze(-1)


def make_step_policy(policy: SquashedMLP, compile: bool) -> SquashedMLP:
    """The policy the fused loop calls; compiled on request (the physics around it is traced with it)."""
    return torch.compile(policy, dynamic=False) if compile else policy


def train_bptt(config: BPTTConfig, writer: RunWriter | None = None, quiet: bool = False) -> dict:
    """Trains a policy by BPTT; returns the summary (and writes the run files when ``writer`` is given)."""
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    policy = make_policy(config.hidden_sizes, config.activation, device=device, dtype=dtype)
    step_policy = make_step_policy(policy, config.compile)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations, eta_min=config.lr * config.lr_final_fraction)
        if config.lr_schedule == "cosine"
        else None
    )
    env = PendulumEnv(device=device, dtype=dtype, seed=config.seed) if config.rollout == "env" else None
    ranges = {k: tuple(v) for k, v in config.env.param_ranges.items()}
    batch = (config.num_envs,)
    guard = SkipGuard(config.max_consecutive_skips, "BPTT update")
    budget = Budget(config.max_wall_time_s)
    evaluator = Evaluator(config.eval, device, dtype, budget)
    evaluation = None

    carried: RolloutState | None = None
    params = sample_params(batch, ranges, generator=generator, device=device, dtype=dtype)
    if config.window:
        th, thdot = sample_initial_state(batch, generator, device, dtype)
        # Staggered starts: episode phases spread evenly over [0, episode_length).
        offsets = torch.arange(config.num_envs, device=device) * config.env.episode_length // config.num_envs
        carried = initial_state(th, thdot, offsets.to(torch.int64))

    bar = progress_bar(config.iterations, quiet, "it", "bptt")
    for iteration in range(1, config.iterations + 1):
        if evaluator.due(budget.env_steps):
            evaluation = evaluator(policy, budget.env_steps)
            log_evaluation(writer, iteration - 1, budget, evaluation)

        if config.window:
            rollout: Rollout = fused_rollout(
                step_policy, carried, params, config.window,
                episode_length=config.env.episode_length, generator=generator,
            )
            carried = RolloutState(*(t.detach() for t in rollout.state))
            rewards = rollout.rewards
        else:
            if ranges:
                params = sample_params(batch, ranges, generator=generator, device=device, dtype=dtype)
            th, thdot = sample_initial_state(batch, generator, device, dtype)
            if env is not None:
                rewards = env_rollout_rewards(env, policy, th, thdot, params, config.horizon)
            else:
                rewards = fused_rollout(step_policy, initial_state(th, thdot), params, config.horizon).rewards
        budget.add_steps(rewards.numel())

        loss = horizon_loss(rewards, config.discount)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        updated = guard.ok(loss, policy.parameters())
        grad_norm = float("nan")
        if updated:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip or float("inf")))
            optimizer.step()
        if scheduler is not None:
            scheduler.step()

        train_return = rewards.detach().sum(-1).mean().item()
        row = {
            "iteration": iteration,
            "env_steps": budget.env_steps,
            "wall_time_s": budget.wall_time_s,
            "train/return": train_return,
            "train/reward_mean": rewards.detach().mean().item(),
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/skipped_updates": guard.skipped,
        }
        if writer is not None:
            writer.log(row)
        bar.update(1)
        bar.set_postfix(describe(train_return, evaluation))
        if budget.out_of_time():
            log.info("stopping after %d iterations: max_wall_time_s=%s reached", iteration, config.max_wall_time_s)
            break
    bar.close()

    evaluation = evaluator(policy, budget.env_steps)
    log_evaluation(writer, iteration, budget, evaluation)
    summary_extra = {"eval_time_s": budget.eval_time_s, "iterations": iteration, "skipped_updates": guard.skipped}
    if writer is None:
        return {"algo": "bptt", "seed": config.seed, "env_steps": budget.env_steps,
                "wall_time_s": budget.wall_time_s, "eval": evaluation, **summary_extra}
    return writer.finish(policy, budget.env_steps, budget.wall_time_s, evaluation, **summary_extra)
