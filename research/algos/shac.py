"""Short-Horizon Actor-Critic (SHAC, Xu et al., ICLR 2022): BPTT on short windows, with a learned critic for the tail.

The chain, one iteration:

1. roll ``num_envs`` pendulums ``window = K`` steps through the simulator from where the last window stopped
   (gradients cut at the window's start; episodes truncated every ``env.episode_length`` steps, staggered);
2. actor loss: minus the discounted window rewards plus the discounted *target* critic's value of the state where
   each piece of trajectory ends (the window's end, or the true last state of an episode truncated inside the
   window), normalised by ``num_envs * K``; its gradient flows through the simulator into the policy -> clip -> Adam;
3. critic: TD(lambda) targets from the same (detached) rewards and target-critic values, then
   ``critic_iterations`` passes of ``critic_minibatches`` mean-squared-error steps;
4. target critic: polyak update ``target <- alpha * target + (1 - alpha) * critic``.

Because the critic bootstraps the tail, the gradient only ever crosses ``K`` simulator steps: it avoids the chaotic
long-horizon gradients that stall full-horizon BPTT on the swing-up.

As in the paper: Adam betas (0.7, 0.95), linear learning-rate decay, gradient-norm clipping at 1, a LayerNorm ELU
critic, K = 32, gamma 0.99, lambda 0.95, alpha 0.2, Gaussian exploration noise before the tanh (fixed here, learned in
the paper: the policy class is the deterministic squashed MLP every method shares). Three additions the pendulum needs
(each found by tuning, see ``experiments/shac.toml``): ``reward_scale`` (per-step rewards reach -16, so unscaled values
reach -1000 and a fresh critic takes hundreds of updates to reach their scale), ``squash_penalty`` (without it the
policy drifts into a saturated bang-bang controller that holds the pendulum tilted at about 2.7 rad, where the tanh's
gradient is ~1e-5 and learning stops at a mean return of about -780) and ``action_noise`` (with the noise, fewer seeds
settle on a policy that swings up the same way round from every side).

Logged besides the losses: ``train/saturated``, the fraction of the deterministic policy's actions on the window's
states beyond 0.99 of the bound (:func:`saturated_fraction`), the measure of the saturation trap the squash penalty
counters. :mod:`research.algos.ahac` subclasses this trainer through :meth:`SHAC.window_rollout` and
:meth:`SHAC.piece_ends`.

TorchRL pieces: the critic is a torchrl ``MLP`` and the targets come from torchrl's
``td_lambda_return_estimate`` (``done`` = truncated: the recursion stops there and bootstraps from the value of the
true next state; nothing terminates on the pendulum). The target update is the four-line :func:`polyak_update`
below: torchrl's ``SoftUpdate`` expects a ``LossModule`` holding the target parameters, more machinery than one
value network needs.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torchrl.modules import MLP
from torchrl.objectives.value.functional import td_lambda_return_estimate

from research import harness
from research.config import ConfigError, RunConfig
from research.harness import (
    Checkpointable,
    RunContext,
    SkipGuard,
    Writer,
    make_scheduler,
    redraw_finished,
    staggered_start,
)
from research.linear import accelerate
from research.policies import ACTIVATIONS, Activation, SquashedMLP, make_policy
from research.rollout import Rollout, RolloutState, fused_rollout

log = logging.getLogger(__name__)


@dataclass
class SHACConfig(RunConfig):
    """Short-Horizon Actor-Critic on the differentiable simulator."""

    iterations: int = 1000
    """Number of actor updates (one window each)."""
    num_envs: int = 64
    """Pendulums simulated in parallel (the batch N)."""
    window: int = 32
    """Steps per window (K): the horizon the actor's gradient crosses; the state is carried between windows."""
    discount: float = 0.99
    """Discount gamma of the actor objective and the critic's targets."""
    td_lambda: float = 0.95
    """lambda of the critic's TD(lambda) targets."""
    lr: float = 5e-3
    """Adam learning rate of the actor."""
    critic_lr: float = 2e-3
    """Adam learning rate of the critic."""
    betas: list[float] = field(default_factory=lambda: [0.7, 0.95])
    """Adam's (beta1, beta2) for the actor and the critic (SHAC's faster-forgetting moments)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule of both learning rates over the iterations (SHAC decays linearly)."""
    lr_final_fraction: float = 0.0
    """Final learning rates as a fraction of the initial ones (linear and cosine schedules)."""
    grad_clip: float = 1.0
    """Maximum global gradient norm of the actor and of the critic (0 = no clipping)."""
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the critic MLP's hidden layers."""
    critic_activation: Activation = "elu"
    """Hidden activation of the critic MLP."""
    critic_layer_norm: bool = True
    """LayerNorm in each hidden layer of the critic (as SHAC's critic)."""
    critic_iterations: int = 8
    """Passes over the window's data per critic update."""
    critic_minibatches: int = 4
    """Minibatches per pass (each holds num_envs * window / critic_minibatches states)."""
    target_alpha: float = 0.2
    """Polyak coefficient: target <- alpha * target + (1 - alpha) * critic after each critic update."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this in the actor loss and the critic's targets, so values stay O(1)-O(10) and the
    critic reaches their scale in few steps (logged returns stay unscaled)."""
    squash_penalty: float = 1e-3
    """Weight of the mean squared pre-tanh output of the policy in the actor loss: keeps the tanh out of saturation,
    where its gradient vanishes and a bang-bang policy stays stuck."""
    action_noise: float = 0.2
    """Std of the Gaussian noise added before the tanh squash in training rollouts (reparameterised: the gradient
    still flows through the mean); evaluation uses the deterministic policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "num_envs", "window", "critic_iterations", "critic_minibatches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.discount <= 1.0 or not 0.0 <= self.td_lambda <= 1.0:
            raise ConfigError(f"discount must be in (0, 1] and td_lambda in [0, 1], got {self.discount}, "
                              f"{self.td_lambda}")
        if self.lr <= 0 or self.critic_lr <= 0 or self.grad_clip < 0:
            raise ConfigError(f"lr and critic_lr must be > 0 and grad_clip >= 0, got {self.lr}, {self.critic_lr}, "
                              f"{self.grad_clip}")
        if not 0.0 <= self.target_alpha < 1.0 or not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ConfigError(f"target_alpha must be in [0, 1) and lr_final_fraction in [0, 1], got "
                              f"{self.target_alpha}, {self.lr_final_fraction}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.action_noise < 0 or self.reward_scale <= 0 or self.squash_penalty < 0:
            raise ConfigError(f"action_noise and squash_penalty must be >= 0 and reward_scale > 0, got "
                              f"{self.action_noise}, {self.squash_penalty}, {self.reward_scale}")
        if self.critic_minibatches > self.num_envs * self.window:
            raise ConfigError(f"critic_minibatches ({self.critic_minibatches}) exceeds the states per window "
                              f"({self.num_envs * self.window})")
        if self.env.backend != "simulator":
            raise ConfigError(f"env.backend must be 'simulator' for SHAC (it differentiates through our simulator), "
                              f"got {self.env.backend!r}")

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.window


def make_critic(config: SHACConfig, device: torch.device, dtype: torch.dtype, obs_dim: int = 3) -> nn.Module:
    """The value network ``observation [..., obs_dim] -> value [..., 1]``."""
    sizes = list(config.critic_hidden_sizes)
    norm = {"norm_class": nn.LayerNorm, "norm_kwargs": [{"normalized_shape": h} for h in sizes]}
    net = MLP(in_features=obs_dim, out_features=1, num_cells=sizes, activation_class=ACTIVATIONS[config.critic_activation],
              **(norm if config.critic_layer_norm else {}))
    return accelerate(net).to(device=device, dtype=dtype)


def noisy_policy(policy: SquashedMLP, std: float, generator: torch.Generator):
    """``observation -> max_torque * tanh(net(observation) + std * eps)``, ``eps ~ N(0, 1)`` from ``generator``."""
    if std == 0:
        return policy

    def act(observation: Tensor) -> Tensor:
        pre_squash = policy.net(observation)
        eps = torch.randn(pre_squash.shape, generator=generator, device=pre_squash.device, dtype=pre_squash.dtype)
        return policy.max_torque * torch.tanh(pre_squash + std * eps)

    return act


#: An action counts as saturated beyond this fraction of its bound (the tanh's slope there is below 0.02).
SATURATION = 0.99


def squash_loss(policy: SquashedMLP, observations: Tensor) -> Tensor:
    """The squash penalty's term: the mean squared pre-tanh output of ``policy`` on ``observations [..., obs_dim]``
    (detached: the penalty acts on the weights, not through the states). Multiplied by ``squash_penalty`` in the
    actor loss of SHAC (and of BPTT when its ``squash_penalty > 0``)."""
    return policy.net(observations.detach()).pow(2).mean()


@torch.no_grad()
def saturated_fraction(policy: SquashedMLP, observations: Tensor) -> Tensor:
    """The fraction of the deterministic policy's action components on ``observations [..., obs_dim]`` with
    ``|a| > SATURATION * bound`` (a scalar tensor): how much of the visited states sit in the tanh's flat tails."""
    actions = policy(observations.detach())
    return (actions.abs() > SATURATION * policy.max_torque).float().mean()


def segment_discounts(truncated: Tensor, discount: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``discount ** (t - start of t's episode piece)``, ``[N, K]``: the discount restarts after a truncation.

    ``truncated [N, K]`` marks the steps after which an episode ended (and the env was reset).
    """
    weights, current = [], torch.ones(truncated.shape[:-1], device=truncated.device, dtype=dtype)
    for t in range(truncated.shape[-1]):
        weights.append(current)
        current = torch.where(truncated[..., t], 1.0, current * discount)
    return torch.stack(weights, dim=-1)


def actor_loss(rewards: Tensor, next_values: Tensor, truncated: Tensor, discount: float) -> Tensor:
    """Minus the SHAC objective, averaged over ``N * K``.

    Each piece of trajectory inside the window (split at truncations) contributes its discounted rewards plus
    ``discount ** length`` times the value of the state it ends in.

    Args:
        rewards: ``[N, K]``, differentiable.
        next_values: ``[N, K]`` target-critic values of the states reached (before any reset), differentiable
            through the states.
        truncated: ``[N, K]`` bool, the episode ended after this step.
        discount: gamma.
    """
    weights = segment_discounts(truncated, discount, rewards.dtype)
    ends = truncated.clone()
    ends[..., -1] = True
    objective = (weights * rewards).sum() + (discount * weights * next_values * ends).sum()
    return -objective / rewards.numel()


def critic_targets(rewards: Tensor, next_values: Tensor, truncated: Tensor, discount: float, td_lambda: float) -> Tensor:
    """TD(lambda) targets ``[N, K]`` for the states the window started each step from.

    ``G_t = r_t + gamma * ((1 - lambda) V(s_{t+1}) + lambda G_{t+1})``, with ``G_t = r_t + gamma V(s_{t+1})`` at the
    window's last step and at truncations (``s_{t+1}`` is then the true next state, before the reset): the recursion
    never crosses an episode boundary, and nothing terminates. Inputs as in :func:`actor_loss`; no gradient.
    """
    with torch.no_grad():
        done = truncated.unsqueeze(-1)
        return td_lambda_return_estimate(
            discount, td_lambda, next_values.unsqueeze(-1), rewards.unsqueeze(-1), done=done,
            terminated=torch.zeros_like(done),
        ).squeeze(-1)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, alpha: float) -> None:
    """``target <- alpha * target + (1 - alpha) * online``, parameter by parameter."""
    for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p, 1.0 - alpha)


def train_critic(critic: nn.Module, optimizer: torch.optim.Optimizer, observations: Tensor, targets: Tensor,
                 config: SHACConfig, guard: SkipGuard, generator: torch.Generator) -> Tensor:
    """Regresses ``critic(observations [M, 3])`` on ``targets [M]``; returns the mean loss of the last pass."""
    count = observations.shape[0]
    losses = []
    for _ in range(config.critic_iterations):
        losses.clear()
        order = torch.randperm(count, generator=generator, device=observations.device)
        for batch in order.chunk(config.critic_minibatches):
            loss = (critic(observations[batch]).squeeze(-1) - targets[batch]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if guard.clip(loss, critic.parameters(), config.grad_clip) is not None:
                optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).mean()


class SHAC(Checkpointable):
    """SHAC's state (policy, critic and its target, optimizers, carried systems) and its step."""

    STATE = ("policy", "critic", "target_critic", "actor_optimizer", "critic_optimizer", "schedulers", "params",
             "carried", "episode_return")

    def __init__(self, config: SHACConfig, run: RunContext) -> None:
        self.config, self.run = config, run
        self.iterations = config.iterations
        self.system = run.system
        self.policy = make_policy(config.hidden_sizes, config.activation, self.system.max_action, device=run.device,
                                  dtype=run.dtype, obs_dim=self.system.obs_dim, act_dim=self.system.action_dim)
        self.critic = make_critic(config, run.device, run.dtype, self.system.obs_dim)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        betas = tuple(config.betas)
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, betas=betas, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, betas=betas,
                                                 fused=True)
        self.schedulers = [make_scheduler(opt, config.lr_schedule, config.iterations, config.lr_final_fraction)
                           for opt in (self.actor_optimizer, self.critic_optimizer)]
        self.actor_guard = run.guard("SHAC actor update")
        self.critic_guard = run.guard("SHAC critic update")
        self.params = self.system.params((config.num_envs,), run.generator, run.device, run.dtype)
        self.carried = staggered_start(config.num_envs, config.env.episode_length, self.system, run.generator,
                                       run.device, run.dtype, self.params)
        self.episode_return = torch.zeros(config.num_envs, device=run.device, dtype=run.dtype)
        self.behaviour = noisy_policy(self.policy, config.action_noise, run.generator)

    def window_rollout(self) -> Rollout:
        """One window (``K`` steps, trajectory kept) of the behaviour policy from the carried systems."""
        config = self.config
        return fused_rollout(self.behaviour, self.carried, self.params, config.window,
                             episode_length=config.env.episode_length, generator=self.run.generator,
                             keep_trajectory=True, system=self.system)

    def piece_ends(self, rollout: Rollout) -> Tensor:
        """``[N, K]`` bool: the steps after which a piece of the actor objective ends and is bootstrapped with the
        target critic's value of ``next_observations`` (SHAC: the truncations; the window's end is added by
        :func:`actor_loss`)."""
        return rollout.truncated

    def window_metrics(self, rollout: Rollout, ends: Tensor) -> dict[str, Tensor | float]:
        """Extra ``train/`` metrics of one window (none for SHAC)."""
        return {}

    def step(self, iteration: int) -> dict[str, Tensor | float]:
        config = self.config
        rollout = self.window_rollout()
        self.carried = RolloutState(*(t.detach() for t in rollout.state))
        self.params = redraw_finished(self.params, self.system, rollout.truncated.any(-1), self.run.generator)
        self.run.budget.add_steps(rollout.rewards.numel())
        next_values = self.target_critic(rollout.next_observations).squeeze(-1)

        scaled_rewards = rollout.rewards * config.reward_scale
        ends = self.piece_ends(rollout)
        loss = actor_loss(scaled_rewards, next_values, ends, config.discount)
        if config.squash_penalty:
            loss = loss + config.squash_penalty * squash_loss(self.policy, rollout.observations)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.actor_guard.clip(loss, self.policy.parameters(), config.grad_clip)
        if grad_norm is not None:
            self.actor_optimizer.step()

        next_values = next_values.detach()
        targets = critic_targets(scaled_rewards.detach(), next_values, rollout.truncated, config.discount,
                                 config.td_lambda)
        critic_loss = train_critic(self.critic, self.critic_optimizer, rollout.observations.detach().flatten(0, -2),
                                   targets.reshape(-1), config, self.critic_guard, self.run.generator)
        polyak_update(self.target_critic, self.critic, config.target_alpha)
        lr = self.actor_optimizer.param_groups[0]["lr"]
        for scheduler in self.schedulers:
            scheduler.step()

        rewards = rollout.rewards.detach()
        finished_total, finished_count, self.episode_return = _finished_episodes(self.episode_return, rewards,
                                                                                 rollout.truncated)
        episode_return = torch.where(finished_count > 0, finished_total / finished_count.clamp(min=1), math.nan)
        return {"train/return": rewards.sum(-1).mean(), "train/episode_return": episode_return,
                "train/reward_mean": rewards.mean(), "train/actor_loss": loss.detach(),
                "train/critic_loss": critic_loss, "train/value_mean": next_values.mean(),
                "train/target_mean": targets.mean(), "train/grad_norm": math.nan if grad_norm is None else grad_norm,
                "train/lr": lr, "train/saturated": saturated_fraction(self.policy, rollout.observations),
                **self.window_metrics(rollout, ends)}


def train_shac(config: SHACConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with SHAC; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, SHAC, writer, quiet, name="shac")


def _finished_episodes(running: Tensor, rewards: Tensor, truncated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sum and count of the undiscounted returns of the episodes that ended in this window, and the running
    returns carried on (without host syncs). Each env's first episode is shorter: its start was staggered."""
    total = rewards.new_zeros(())
    for t in range(rewards.shape[-1]):
        running = running + rewards[..., t]
        total = total + torch.where(truncated[..., t], running, 0.0).sum()
        running = torch.where(truncated[..., t], 0.0, running)
    return total, truncated.sum(), running
