"""Deep deterministic policy gradient (DDPG) from TorchRL's collector, replay buffer, loss and target updaters.

One update (after the collect -> store step of :mod:`research.algos.off_policy`): sample ``batch_size``
transitions -> :class:`DDPGLoss` (TD(0) critic target from target networks, actor loss ``-Q(s, pi(s))``) -> Adam
steps -> :class:`SoftUpdate` of the targets.

Defaults follow the rl-baselines3-zoo recipe for Pendulum-v1 (``docs/protocol.md``): 20k env steps, 10k random
warm-up steps, gamma 0.98, Gaussian noise 0.1, lr 1e-3, [400, 300] ReLU networks, batch 256, tau 0.005, one
gradient step per env step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.envs import EnvBase
from torchrl.modules import AdditiveGaussianModule, OrnsteinUhlenbeckProcessModule, ValueOperator
from torchrl.objectives import DDPGLoss, SoftUpdate, ValueEstimators

from research import harness
from research.algos.off_policy import (  # noqa: F401  (re-exported: the pieces every DDPG user reaches for)
    TRANSITION_KEYS,
    OffPolicy,
    OffPolicyConfig,
    OffPolicyEvalConfig,
    make_critic,
    make_environment,
)
from research.config import ConfigError
from research.harness import RunContext, SkipGuard, Writer
from research.policies import make_actor

DDPGEvalConfig = OffPolicyEvalConfig



@dataclass
class DDPGConfig(OffPolicyConfig):
    """DDPG: the replay-buffer learner's fields, plus the exploration noise and the two learning rates."""

    actor_lr: float = 1e-3
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    noise: Literal["gaussian", "ou"] = "gaussian"
    """Exploration noise: TorchRL's AdditiveGaussianModule or OrnsteinUhlenbeckProcessModule."""
    noise_std: float = 0.1
    """Gaussian std (or OU sigma) as a fraction of max_torque, as in SB3, which adds it to actions scaled to [-1, 1]."""
    ou_theta: float = 0.15
    """Mean-reversion rate of the Ornstein-Uhlenbeck noise (time step 0.01, TorchRL's and SB3's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actor_lr <= 0 or self.critic_lr <= 0 or self.noise_std < 0:
            raise ConfigError(f"actor_lr and critic_lr must be > 0 and noise_std >= 0, got {self.actor_lr}, "
                              f"{self.critic_lr}, {self.noise_std}")


def make_exploration(config: DDPGConfig, env: EnvBase, device: torch.device) -> nn.Module:
    """TorchRL's exploration module, constant noise of ``noise_std * max_torque`` (no annealing)."""
    spec = env.action_spec_unbatched.to(device)
    scale = config.noise_std * float(spec.space.high.max())
    if config.noise == "ou":
        return OrnsteinUhlenbeckProcessModule(spec=spec, sigma=scale, theta=config.ou_theta, annealing_num_steps=1,
                                              eps_init=1.0, eps_end=1.0, device=device)
    return AdditiveGaussianModule(spec=spec, sigma_init=scale, sigma_end=scale, annealing_num_steps=1, std=1.0,
                                  device=device)


def make_loss_module(actor: nn.Module, critic: ValueOperator, gamma: float) -> DDPGLoss:
    """DDPG's loss with target copies of both networks and a TD(0) critic target."""
    loss = DDPGLoss(actor, critic, loss_function="l2", delay_actor=True, delay_value=True)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
    return loss


def update(loss_module: DDPGLoss, sample: TensorDictBase, actor_optimizer: torch.optim.Optimizer,
           critic_optimizer: torch.optim.Optimizer, guard: SkipGuard, parameters: list[nn.Parameter]) -> torch.Tensor:
    """One gradient step on the actor and the critic; returns ``[loss_actor, loss_critic, mean Q]`` (NaN if skipped).

    The actor loss reads a detached copy of the critic, so one backward pass gives both gradients.
    """
    losses = loss_module(sample)
    loss = losses["loss_actor"] + losses["loss_value"]
    actor_optimizer.zero_grad(set_to_none=True)
    critic_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stats = torch.stack([losses["loss_actor"], losses["loss_value"], losses["pred_value"].mean()]).detach()
    if guard.clip(loss, parameters) is None:
        return torch.full_like(stats, float("nan"))
    actor_optimizer.step()
    critic_optimizer.step()
    return stats


class DDPG(OffPolicy):
    """DDPG's networks, loss, optimizers and target updater on the shared collect -> store -> update step."""

    STATS = ("train/loss_actor", "train/loss_critic", "train/q_mean")

    def __init__(self, config: DDPGConfig, run: RunContext) -> None:
        super().__init__(config, run)
        actor = make_actor(self.policy)
        self.loss_module = make_loss_module(actor, make_critic(config, run.device, run.dtype), config.gamma)
        self.target_updater = SoftUpdate(self.loss_module, tau=config.tau)
        actor_params = list(self.loss_module.actor_network_params.values(True, True))
        critic_params = list(self.loss_module.value_network_params.values(True, True))
        self.actor_optimizer = torch.optim.Adam(actor_params, lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(critic_params, lr=config.critic_lr)
        self.parameters = actor_params + critic_params
        self.guard = run.guard("DDPG update")
        self.start(TensorDictSequential(actor, make_exploration(config, self.env, run.device)))

    def update(self, sample: TensorDictBase) -> torch.Tensor:
        stats = update(self.loss_module, sample, self.actor_optimizer, self.critic_optimizer, self.guard,
                       self.parameters)
        self.target_updater.step()
        return stats


def train_ddpg(config: DDPGConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with DDPG; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, DDPG, writer, quiet, name="ddpg")
