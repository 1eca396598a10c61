"""Soft Actor-Critic (SAC, Haarnoja et al. 2018) from TorchRL's :class:`SACLoss`, collector and replay buffer.

A stochastic actor, ``a = max_torque * tanh(u)`` with ``u ~ N(mu(s), sigma(s))``, maximises ``Q(s, a)`` plus
``alpha`` times its entropy; two critics learn soft Q-values from the minimum of their targets; ``alpha`` is tuned
so that the entropy stays near ``-dim(A) = -1``. The actor's mean head is the shared
:class:`~research.policies.SquashedMLP` (``max_torque * tanh(mu(s))``), so the deterministic policy that the
evaluator scores and ``policy.pt`` stores is exactly SAC's mean action; a linear head on the same last hidden
layer gives ``log sigma(s)``, clamped to [-20, 2] as in SB3.

One update (after the collect -> store step of :mod:`research.algos.off_policy`): actor, critic and temperature
losses on a sampled batch -> one backward (each loss reads detached copies of the other networks) -> Adam -> soft
update of the target critics. Defaults: rl-baselines3-zoo's Pendulum-v1 recipe, 20k steps and lr 1e-3 with SB3's
other defaults (``docs/protocol.md``): 100 random warm-up steps, gamma 0.99, [256, 256] ReLU networks, batch 256,
tau 0.005, buffer 1M, alpha learned from 1.0, one gradient step per env step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal
from torchrl.objectives import SACLoss, SoftUpdate, ValueEstimators

from research import harness
from research.algos.off_policy import OffPolicy, OffPolicyConfig, make_adam, make_critic
from research.config import ConfigError
from research.harness import RunContext, Writer
from research.policies import SquashedMLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class SACConfig(OffPolicyConfig):
    """SAC: the replay-buffer learner's fields with SB3's SAC defaults, plus the learning rate and temperature."""

    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the actor's hidden layers."""
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the critics' hidden layers."""
    warmup_env_steps: int = 100
    """Transitions collected with uniformly random actions before the first update (SB3's learning_starts)."""
    buffer_size: int = 1_000_000
    """Capacity of the replay buffer."""
    gamma: float = 0.99
    """Discount of the soft TD(0) target."""
    lr: float = 1e-3
    """Adam learning rate of the actor, the critics and the temperature."""
    alpha_init: float = 1.0
    """Initial entropy temperature."""
    target_entropy: float = -1.0
    """Entropy the temperature is tuned towards (-dim(A))."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.alpha_init <= 0:
            raise ConfigError(f"lr and alpha_init must be > 0, got {self.lr}, {self.alpha_init}")


class GaussianHead(nn.Module):
    """``observation [..., 3] -> (loc [..., 1], scale [..., 1])`` with ``loc`` from the policy's own layers."""

    def __init__(self, policy: SquashedMLP) -> None:
        super().__init__()
        self.policy = policy
        self.log_std = nn.Linear(policy.spec["hidden_sizes"][-1], policy.spec["act_dim"])

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        layers = list(self.policy.net)
        hidden = observation
        for layer in layers[:-1]:
            hidden = layer(hidden)
        log_std = self.log_std(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return layers[-1](hidden), log_std.exp()


class SAC(OffPolicy):
    """SAC's actor, twin critics, temperature, loss, optimizer and target updater on the shared step."""

    STATS = ("train/loss_actor", "train/loss_critic", "train/loss_alpha", "train/alpha", "train/entropy")
    STATE = (*OffPolicy.STATE, "loss_module", "optimizer")

    def __init__(self, config: SACConfig, run: RunContext) -> None:
        super().__init__(config, run)
        head = GaussianHead(self.policy).to(device=run.device, dtype=run.dtype)
        max_torque = self.policy.max_torque
        actor = ProbabilisticActor(TensorDictModule(head, in_keys=["observation"], out_keys=["loc", "scale"]),
                                   in_keys=["loc", "scale"], distribution_class=TanhNormal,
                                   distribution_kwargs={"low": -max_torque, "high": max_torque},
                                   spec=self.env.action_spec_unbatched.to(run.device))
        self.actor = actor
        self.loss_module = SACLoss(actor, make_critic(config, run.device, run.dtype, run.system.obs_dim, run.system.action_dim), num_qvalue_nets=2,
                                   loss_function="l2", alpha_init=config.alpha_init,
                                   target_entropy=config.target_entropy,
                                   deactivate_vmap=True)  # a loop over the twin critics runs them on oneDNN
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=config.gamma)
        self.target_updater = SoftUpdate(self.loss_module, tau=config.tau)
        self.parameters = list(self.loss_module.parameters())
        self.optimizer = make_adam(self.parameters, config.lr, run.device)
        self.guard = run.guard("SAC update")
        self.start(actor, self._explore)

    def _explore(self, observation: Tensor, generator: torch.Generator) -> Tensor:
        """A sample of the stochastic actor (as TorchRL's Collector draws it, from torch's global generator)."""
        with set_exploration_type(ExplorationType.RANDOM):
            return self.actor(TensorDict({"observation": observation}, batch_size=observation.shape[:-1]))["action"]

    def update(self, sample: TensorDictBase) -> Tensor:
        losses = self.loss_module(sample)
        loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats = torch.stack([losses[k].detach().mean() for k in
                             ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy")])
        if self.guard.clip(loss, self.parameters) is None:
            return torch.full_like(stats, float("nan"))
        self.optimizer.step()
        self.target_updater.step()
        return stats


def train_sac(config: SACConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with SAC; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, SAC, writer, quiet, name="sac")
