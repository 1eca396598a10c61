"""DDPG (Lillicrap et al., 2016) assembled from TorchRL's parts: the model-free baseline.

The chain, one collector batch: collect ``frames_per_batch`` transitions with the noisy actor (uniformly random
actions during the warm-up) -> extend the replay buffer -> once the warm-up is over, ``frames_per_batch *
updates_per_env_step`` updates, each: sample ``batch_size`` transitions -> :class:`DDPGLoss` (TD(0) critic target
from target networks, actor loss ``-Q(s, pi(s))``) -> Adam steps -> :class:`SoftUpdate` of the targets.

Defaults follow the rl-baselines3-zoo recipe for Pendulum-v1 (``shared/REFERENCE.md``): 20k env steps, 10k random
warm-up steps, gamma 0.98, Gaussian noise 0.1, lr 1e-3, [400, 300] ReLU networks, batch 256, tau 0.005, one
gradient step per env step. The collector hands over 100 transitions at a time followed by 100 updates (instead of
1 and 1): the same number of updates per transition, without the per-call overhead of the collector.

Episodes are truncated at ``env.episode_length`` (200) steps. Truncation is not termination: the critic target
bootstraps through the last step of an episode (TorchRL's TD(0) reads ``terminated``, which stays ``False``).

``env.backend = "gymnasium"`` trains on TorchRL's ``GymEnv("Pendulum-v1")`` instead of our simulator; evaluation
always uses the shared evaluator on our simulator (the two agree to float precision, see ``tests/envs``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import Compose, EnvBase, InitTracker, RewardSum, StepCounter, TransformedEnv
from torchrl.modules import MLP, AdditiveGaussianModule, OrnsteinUhlenbeckProcessModule, ValueOperator
from torchrl.objectives import DDPGLoss, SoftUpdate, ValueEstimators

from research.config import ConfigError, EvalConfig, RunConfig
from research.envs import PendulumEnv
from research.policies import ACTIVATIONS, make_actor, make_policy
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

#: Keys a transition keeps in the replay buffer (all DDPGLoss reads); identical for both backends.
TRANSITION_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "done"),
                   ("next", "terminated"))


@dataclass
class DDPGEvalConfig(EvalConfig):
    """Evaluation schedule of DDPG: every 2000 env steps (10 evaluations over the default budget)."""

    interval_env_steps: int = 2_000
    """Evaluate each time this many more environment steps have been collected (and once at the end)."""


@dataclass
class DDPGConfig(RunConfig):
    """Deep deterministic policy gradient from TorchRL's collector, replay buffer, loss and target updaters."""

    hidden_sizes: list[int] = field(default_factory=lambda: [400, 300])
    """Widths of the actor's hidden layers (the same squashed MLP as BPTT)."""
    activation: Literal["tanh", "relu", "elu", "silu"] = "relu"
    """Hidden activation of the actor and the critic."""
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [400, 300])
    """Widths of the critic's hidden layers; the critic reads (observation, action)."""
    total_env_steps: int = 20_000
    """Transitions collected in all, warm-up included."""
    warmup_env_steps: int = 10_000
    """Transitions collected with uniformly random actions before the first update."""
    num_envs: int = 1
    """Environments stepped in parallel by the collector."""
    frames_per_batch: int = 100
    """Transitions per collector batch; updates run between batches."""
    updates_per_env_step: float = 1.0
    """Gradient steps per collected transition (the update-to-data ratio)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 200_000
    """Capacity of the replay buffer."""
    gamma: float = 0.98
    """Discount of the critic's TD(0) target."""
    tau: float = 0.005
    """Polyak rate of the target networks (target <- (1 - tau) target + tau online)."""
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
    num_threads: int = 1
    """CPU threads of torch during the run (0: torch's default). One is fastest for these small matrices here."""
    eval: DDPGEvalConfig = field(default_factory=DDPGEvalConfig)
    """Evaluation schedule."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_threads < 0:
            raise ConfigError(f"num_threads must be >= 0, got {self.num_threads}")
        for name in ("total_env_steps", "num_envs", "frames_per_batch", "batch_size", "buffer_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.frames_per_batch % self.num_envs:
            raise ConfigError(f"frames_per_batch ({self.frames_per_batch}) must be a multiple of num_envs "
                              f"({self.num_envs})")
        for name in ("total_env_steps", "warmup_env_steps"):
            if getattr(self, name) % self.frames_per_batch:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be a multiple of frames_per_batch "
                                  f"({self.frames_per_batch})")
        if not 0 <= self.warmup_env_steps < self.total_env_steps:
            raise ConfigError(f"warmup_env_steps must be in [0, total_env_steps), got {self.warmup_env_steps}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"gamma and tau must be in (0, 1], got gamma={self.gamma}, tau={self.tau}")
        if self.updates_per_env_step < 0 or self.actor_lr <= 0 or self.critic_lr <= 0 or self.noise_std < 0:
            raise ConfigError("updates_per_env_step and noise_std must be >= 0, actor_lr and critic_lr > 0")
        if self.env.backend == "gymnasium" and (self.env.param_ranges or self.dtype != "float32" or self.num_envs != 1):
            raise ConfigError("env.backend='gymnasium' runs one env in float32 without env.param_ranges")

    @property
    def updates_per_batch(self) -> int:
        return round(self.frames_per_batch * self.updates_per_env_step)


def make_environment(config: DDPGConfig, device: torch.device) -> EnvBase:
    """The training env: ``num_envs`` pendulums, truncated at ``env.episode_length`` steps, tracking returns."""
    if config.env.backend == "gymnasium":
        from torchrl.envs import GymEnv

        base = GymEnv("Pendulum-v1", device=device, max_episode_steps=config.env.episode_length)
        base.set_seed(config.seed)
    else:
        ranges = {k: tuple(v) for k, v in config.env.param_ranges.items()}
        base = PendulumEnv(device=device, dtype=DTYPES[config.dtype], seed=config.seed,
                           batch_size=[config.num_envs], param_ranges=ranges, validate=False)
    # InitTracker feeds the OU noise's reset flag; RewardSum gives the episodic return for the logs.
    return TransformedEnv(base, Compose(StepCounter(max_steps=config.env.episode_length), InitTracker(),
                                        RewardSum()))


def make_critic(config: DDPGConfig, device: torch.device, dtype: torch.dtype) -> ValueOperator:
    """``Q(observation [..., 3], action [..., 1]) -> state_action_value [..., 1]``: an MLP on their concatenation."""
    net = MLP(in_features=4, out_features=1, num_cells=config.critic_hidden_sizes,
              activation_class=ACTIVATIONS[config.activation])
    return ValueOperator(net, in_keys=["observation", "action"]).to(device=device, dtype=dtype)


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


def episode_returns(batch: TensorDictBase) -> torch.Tensor:
    """Returns of the episodes that ended inside a collector batch, ``[n_finished]``."""
    done = batch["next", "done"].squeeze(-1)
    return batch["next", "episode_reward"].squeeze(-1)[done]


def train_ddpg(config: DDPGConfig, writer: RunWriter | None = None, quiet: bool = False) -> dict:
    """Trains a policy with DDPG; returns the summary (and writes the run files when ``writer`` is given)."""
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, writer, quiet)
    finally:
        torch.set_num_threads(threads)


def _train(config: DDPGConfig, writer: RunWriter | None, quiet: bool) -> dict:
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    torch.manual_seed(config.seed)
    env = make_environment(config, device)
    policy = make_policy(config.hidden_sizes, config.activation, device=device, dtype=dtype)
    actor = make_actor(policy)
    critic = make_critic(config, device, dtype)
    loss_module = make_loss_module(actor, critic, config.gamma)
    target_updater = SoftUpdate(loss_module, tau=config.tau)
    actor_optimizer = torch.optim.Adam(loss_module.actor_network_params.values(True, True), lr=config.actor_lr)
    critic_optimizer = torch.optim.Adam(loss_module.value_network_params.values(True, True), lr=config.critic_lr)
    parameters = list(loss_module.actor_network_params.values(True, True)) + list(
        loss_module.value_network_params.values(True, True))

    collector = Collector(
        env,
        TensorDictSequential(actor, make_exploration(config, env, device)),
        frames_per_batch=config.frames_per_batch,
        total_frames=config.total_env_steps,
        init_random_frames=config.warmup_env_steps,
        device=device,
    )
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size, device=device), batch_size=config.batch_size)
    guard = SkipGuard(config.max_consecutive_skips, "DDPG update")
    budget = Budget(config.max_wall_time_s)
    evaluator = Evaluator(config.eval, device, dtype, budget)
    evaluation = evaluator(policy, 0)
    log_evaluation(writer, 0, budget, evaluation)
    evaluated_at, updates = 0, 0

    bar = progress_bar(config.total_env_steps, quiet, "step", "ddpg")
    train_return = None
    for iteration, batch in enumerate(collector, start=1):
        batch = batch.reshape(-1)
        budget.add_steps(batch.numel())
        buffer.extend(batch.select(*TRANSITION_KEYS))
        finished = episode_returns(batch)
        if finished.numel():
            train_return = finished.mean().item()

        losses = []
        if budget.env_steps > config.warmup_env_steps:
            for _ in range(config.updates_per_batch):
                losses.append(update(loss_module, buffer.sample(), actor_optimizer, critic_optimizer, guard,
                                     parameters))
                target_updater.step()
            updates += len(losses)
        row = {"iteration": iteration, "env_steps": budget.env_steps, "wall_time_s": budget.wall_time_s,
               "train/episode_return": train_return if finished.numel() else float("nan"),
               "train/reward_mean": batch["next", "reward"].mean().item(),
               "train/updates": len(losses), "train/skipped_updates": guard.skipped}
        if losses:
            stacked = torch.stack(losses).nanmean(0).tolist()
            row.update(zip(("train/loss_actor", "train/loss_critic", "train/q_mean"), stacked, strict=True))
        if writer is not None:
            writer.log(row)
        if evaluator.due(budget.env_steps):
            evaluation, evaluated_at = evaluator(policy, budget.env_steps), budget.env_steps
            log_evaluation(writer, iteration, budget, evaluation)
        bar.update(batch.numel())
        bar.set_postfix(describe(train_return, evaluation))
        if budget.out_of_time():
            log.info("stopping after %d env steps: max_wall_time_s=%s reached", budget.env_steps,
                     config.max_wall_time_s)
            break
    bar.close()
    collector.shutdown()

    if evaluated_at != budget.env_steps:  # stopped early, between two scheduled evaluations
        evaluation = evaluator(policy, budget.env_steps)
        log_evaluation(writer, iteration, budget, evaluation)
    summary_extra = {"eval_time_s": budget.eval_time_s, "iterations": iteration, "updates": updates,
                     "skipped_updates": guard.skipped}
    if writer is None:
        return {"algo": "ddpg", "seed": config.seed, "env_steps": budget.env_steps,
                "wall_time_s": budget.wall_time_s, "eval": evaluation, **summary_extra}
    return writer.finish(policy, budget.env_steps, budget.wall_time_s, evaluation, **summary_extra)


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
    if not guard.ok(loss, parameters):
        return torch.full_like(stats, float("nan"))
    actor_optimizer.step()
    critic_optimizer.step()
    return stats
