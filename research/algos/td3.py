"""Twin Delayed DDPG (TD3, Fujimoto et al. 2018) from TorchRL's :class:`TD3Loss`, collector and replay buffer.

DDPG with three changes, each against the critic's overestimation: two critics whose minimum is the target
("clipped double Q"), Gaussian noise on the target policy's action ("target policy smoothing", in torque units:
SB3's 0.2 and 0.5 of the [-1, 1] action range are 0.4 N m and 1 N m here), and the actor and the target networks
updated only every ``policy_delay`` critic updates.

One update (after the collect -> store step of :mod:`research.algos.off_policy`): the critics' loss on a sampled
batch -> Adam step; every ``policy_delay``-th update also the actor's loss ``-Q_1(s, pi(s))`` -> Adam step -> soft
update of all targets. Defaults: rl-baselines3-zoo's Pendulum-v1 recipe, the same as DDPG's (``docs/protocol.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl.objectives import SoftUpdate, TD3Loss, ValueEstimators

from research import harness
from research.algos.ddpg import DDPGConfig, gaussian_explore, make_exploration
from research.algos.off_policy import OffPolicy, make_adam, make_critic
from research.config import ConfigError
from research.harness import RunContext, Writer
from research.policies import make_actor


@dataclass
class TD3Config(DDPGConfig):
    """TD3: DDPG's fields (and the zoo's Pendulum-v1 recipe) plus the three TD3 changes."""

    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    target_policy_noise: float = 0.2
    """Std of the noise on the target policy's action, as a fraction of max_torque (SB3's 0.2 of [-1, 1])."""
    target_noise_clip: float = 0.5
    """That noise is clipped to +- this fraction of max_torque (SB3's 0.5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy_delay <= 0:
            raise ConfigError(f"policy_delay must be > 0, got {self.policy_delay}")
        if self.target_policy_noise < 0 or self.target_noise_clip < 0:
            raise ConfigError(f"target_policy_noise and target_noise_clip must be >= 0, got "
                              f"{self.target_policy_noise}, {self.target_noise_clip}")


class TD3(OffPolicy):
    """TD3's actor, twin critics, loss, optimizers and target updater on the shared collect -> store -> update step."""

    STATS = ("train/loss_actor", "train/loss_critic", "train/q_mean")
    STATE = (*OffPolicy.STATE, "loss_module", "actor_optimizer", "critic_optimizer", "critic_updates")

    def __init__(self, config: TD3Config, run: RunContext) -> None:
        super().__init__(config, run)
        actor = make_actor(self.policy)
        max_torque = self.policy.max_torque
        self.loss_module = TD3Loss(actor, make_critic(config, run.device, run.dtype, run.system.obs_dim, run.system.action_dim), num_qvalue_nets=2,
                                   bounds=(-max_torque, max_torque), loss_function="l2",
                                   policy_noise=config.target_policy_noise * max_torque,
                                   noise_clip=config.target_noise_clip * max_torque,
                                   deactivate_vmap=True)  # a loop over the twin critics runs them on oneDNN
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=config.gamma)
        self.target_updater = SoftUpdate(self.loss_module, tau=config.tau)
        self.actor_params = list(self.loss_module.actor_network_params.values(True, True))
        self.critic_params = list(self.loss_module.qvalue_network_params.values(True, True))
        self.actor_optimizer = make_adam(self.actor_params, config.actor_lr, run.device)
        self.critic_optimizer = make_adam(self.critic_params, config.critic_lr, run.device)
        self.critic_guard = run.guard("TD3 critic update")
        self.actor_guard = run.guard("TD3 actor update")
        self.critic_updates = 0
        self.start(TensorDictSequential(actor, make_exploration(config, self.env, run.device)),
                   gaussian_explore(self.policy, config, self.run.system.max_action))

    def update(self, sample: TensorDictBase) -> torch.Tensor:
        critic_loss, info = self.loss_module.value_loss(sample)
        return self.delayed_update(critic_loss, info["pred_value"].mean(),
                                   lambda: self.loss_module.actor_loss(sample)[0], self.target_updater.step)


def train_td3(config: TD3Config, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with TD3; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, TD3, writer, quiet, name="td3")
