"""What DDPG, TD3 and SAC share: the config of a replay-buffer learner, its environment, critic, collector and step.

One step of :class:`OffPolicy`: TorchRL's :class:`~torchrl.collectors.Collector` hands over ``frames_per_batch``
transitions (uniformly random actions during the first ``warmup_env_steps``, then the algorithm's exploration
policy) -> they go into a :class:`~torchrl.data.ReplayBuffer` -> once warm-up is over, ``updates_per_env_step``
gradient steps per collected transition, each on ``batch_size`` sampled transitions through the algorithm's own
:meth:`OffPolicy.update`. Handing over 100 transitions and then running 100 updates (instead of 1 and 1) keeps the
update-to-data ratio of the rl-baselines3-zoo recipes without the collector's per-call overhead.

Episodes are truncated at ``env.episode_length`` (200) steps. Truncation is not termination: the critic targets
bootstrap through the last step of an episode (TorchRL's value estimators read ``terminated``, which stays
``False`` on the pendulum). ``env.backend = "gymnasium"`` trains on TorchRL's ``GymEnv("Pendulum-v1")`` instead of
our simulator; evaluation always uses the shared evaluator on our simulator (the two agree to float precision).

A checkpoint (:mod:`research.harness`) keeps the networks and their targets, the optimizers, the counters, the filled
part of the replay buffer with its writer's position, and the :class:`~research.collect.SimulatorCollector`'s carried
episodes and generator. Runs on TorchRL's Collector (``env.backend = "gymnasium"``, or DDPG/TD3 with
``noise = "ou"``) are not checkpointed: its environment's carried state is not something it can hand over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import Compose, EnvBase, InitTracker, RewardSum, StepCounter, TransformedEnv
from torchrl.modules import MLP, ValueOperator

from research.collect import Explore, SimulatorCollector
from research.config import ConfigError, EvalConfig, RunConfig
from research.envs.system_env import make_env
from research.harness import DTYPES, Checkpointable, RunContext
from research.linear import accelerate
from research.policies import ACTIVATIONS, Activation, make_policy
from research.systems import System

#: Keys a transition keeps in the replay buffer (all the losses read); identical for both backends.
TRANSITION_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"), ("next", "done"),
                   ("next", "terminated"))


@dataclass
class OffPolicyEvalConfig(EvalConfig):
    """Evaluation schedule of the replay-buffer learners: every 2000 env steps (10 over the default budget)."""

    interval_env_steps: int = 2_000
    """Evaluate each time this many more environment steps have been collected (and once at the end)."""


@dataclass
class OffPolicyConfig(RunConfig):
    """Fields every replay-buffer learner shares (defaults: rl-baselines3-zoo's Pendulum-v1 DDPG/TD3 recipe)."""

    hidden_sizes: list[int] = field(default_factory=lambda: [400, 300])
    """Widths of the actor's hidden layers (the same squashed MLP as BPTT)."""
    activation: Activation = "relu"
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
    num_threads: int = 1
    """CPU threads of torch during the run (0: torch's default). One is fastest for these small matrices here."""
    eval: OffPolicyEvalConfig = field(default_factory=OffPolicyEvalConfig)
    """Evaluation schedule."""

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.updates_per_env_step < 0:
            raise ConfigError(f"updates_per_env_step must be >= 0, got {self.updates_per_env_step}")
        # EnvConfig itself refuses a non-default env.physics or env.params on Gymnasium
        if self.env.backend == "gymnasium" and (self.env.param_ranges or self.dtype != "float32" or self.num_envs != 1):
            raise ConfigError("env.backend='gymnasium' runs one env in float32 without env.param_ranges")

    @property
    def updates_per_batch(self) -> int:
        return round(self.frames_per_batch * self.updates_per_env_step)


def make_environment(config: OffPolicyConfig, device: torch.device, physics: System | None = None) -> EnvBase:
    """The training env: ``num_envs`` copies of the system ``physics`` (default: the config's), truncated at
    ``env.episode_length`` steps, tracking returns."""
    if physics is None:
        physics = config.env.to_physics()
    if config.env.backend == "gymnasium":
        from torchrl.envs import GymEnv

        base = GymEnv("Pendulum-v1", device=device, max_episode_steps=config.env.episode_length)
        base.set_seed(config.seed)
    else:
        base = make_env(physics, device=device, dtype=DTYPES[config.dtype], seed=config.seed,
                        batch_size=[config.num_envs], validate=False)
    # InitTracker feeds the OU noise's reset flag; RewardSum gives the episodic return for the logs.
    return TransformedEnv(base, Compose(StepCounter(max_steps=config.env.episode_length), InitTracker(),
                                        RewardSum()))


def make_critic(config: OffPolicyConfig, device: torch.device, dtype: torch.dtype, obs_dim: int = 3,
                act_dim: int = 1) -> ValueOperator:
    """``Q(observation [..., obs_dim], action [..., act_dim]) -> state_action_value [..., 1]``: an MLP on their
    concatenation (its layers :class:`research.linear.FastLinear`)."""
    net = accelerate(MLP(in_features=obs_dim + act_dim, out_features=1, num_cells=config.critic_hidden_sizes,
                         activation_class=ACTIVATIONS[config.activation]))
    return ValueOperator(net, in_keys=["observation", "action"]).to(device=device, dtype=dtype)


def make_adam(parameters: list, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with its fused kernel where torch has one (CPU and CUDA): one kernel for all parameters instead of a
    few ``foreach`` kernels each; ~0.5 ms less per DDPG update at [400, 300] on one CPU thread."""
    return torch.optim.Adam(parameters, lr=lr, fused=True if device.type in ("cpu", "cuda") else None)


def episode_returns(batch: TensorDictBase) -> Tensor:
    """Returns of the episodes that ended inside a collector batch, ``[n_finished]``."""
    done = batch["next", "done"].squeeze(-1)
    return batch["next", "episode_reward"].squeeze(-1)[done]


def buffer_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """What a checkpoint keeps of a replay buffer on a :class:`~torchrl.data.LazyTensorStorage`: the filled rows in
    storage order (not the whole preallocated capacity, which ``ReplayBuffer.state_dict`` would save) and the
    writer's and sampler's states."""
    filled = len(buffer.storage)
    return {"rows": filled, "data": buffer.storage[:filled].clone().to_dict() if filled else None,
            "writer": buffer.writer.state_dict(), "sampler": buffer.sampler.state_dict()}


def load_buffer_state(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    """Puts :func:`buffer_state`'s rows back into an empty ``buffer`` at the same storage indices, then the writer's
    position: the buffer samples exactly what the saved one would."""
    if state["data"] is not None:
        buffer.extend(TensorDict(state["data"], batch_size=[state["rows"]], device=buffer.storage.device))
    buffer.writer.load_state_dict(state["writer"])
    buffer.sampler.load_state_dict(state["sampler"])


class OffPolicy(Checkpointable):
    """The collect -> store -> update step of a replay-buffer learner; subclasses build the networks and the update.

    It builds ``policy``, the deterministic :class:`~research.policies.SquashedMLP` that is evaluated and saved (the
    actor of DDPG and TD3, SAC's mean action); a subclass builds the rest and calls :meth:`start` with its exploration
    policy; it implements :meth:`update`, one gradient step on
    a sampled batch returning the statistics named by ``STATS`` (a ``[len(STATS)]`` tensor, NaN when skipped).
    """

    STATS: ClassVar[tuple[str, ...]] = ()
    STATE: ClassVar[tuple[str, ...]] = ("policy", "updates")

    def __init__(self, config: OffPolicyConfig, run: RunContext) -> None:
        self.config, self.run = config, run
        self.env = make_environment(config, run.device, run.system)
        self.policy = make_policy(config.hidden_sizes, config.activation, run.system.max_action, device=run.device,
                                  dtype=run.dtype, obs_dim=run.system.obs_dim, act_dim=run.system.action_dim)
        self.iterations = config.total_env_steps // config.frames_per_batch
        self.updates = 0

    def start(self, exploration_policy: Any, explore: Explore | None = None) -> None:
        """Creates the collector (random actions first, then the exploration policy) and the replay buffer.

        ``explore`` (``observation [N, 3] -> action [N, 1]`` on tensors, the same policy as ``exploration_policy``)
        lets the simulator backend collect through :class:`research.collect.SimulatorCollector`; without it, and
        on Gymnasium, TorchRL's Collector steps ``self.env`` with the TensorDict module ``exploration_policy``.
        """
        config, device = self.config, self.run.device
        if explore is not None and config.env.backend == "simulator":
            self.collector = SimulatorCollector(
                self.run.system, explore, num_envs=config.num_envs, frames_per_batch=config.frames_per_batch,
                total_frames=config.total_env_steps, warmup_frames=config.warmup_env_steps,
                episode_length=config.env.episode_length, seed=config.seed, device=device, dtype=self.run.dtype)
        else:
            self.collector = Collector(self.env, exploration_policy, frames_per_batch=config.frames_per_batch,
                                       total_frames=config.total_env_steps,
                                       init_random_frames=config.warmup_env_steps, device=device)
        self.batches = iter(self.collector)
        self.buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size, device=device),
                                   batch_size=config.batch_size)

    @property
    def checkpoint_unsupported(self) -> str:
        """Why this run cannot be checkpointed (``""``: it can)."""
        if isinstance(self.collector, SimulatorCollector):
            return ""
        return "TorchRL's Collector (env.backend='gymnasium' or noise='ou') carries environment state it cannot save"

    def state_dict(self) -> dict[str, Any]:
        """``STATE`` (networks, optimizers, counters), the replay buffer and the collector."""
        return {**super().state_dict(), "buffer": buffer_state(self.buffer),
                "collector": self.collector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_buffer_state(self.buffer, state["buffer"])
        self.collector.load_state_dict(state["collector"])

    def update(self, sample: TensorDictBase) -> Tensor:
        raise NotImplementedError

    def delayed_update(self, critic_loss: Tensor, q_mean: Tensor, actor_loss: Callable[[], Tensor],
                       target_update: Callable[[], None]) -> Tensor:
        """TD3's delayed step (TD3 and the parallel TD3): a critic step on ``critic_loss``; every ``policy_delay``-th
        one also an actor step on ``actor_loss()`` and ``target_update()``. Needs ``critic_optimizer``,
        ``critic_params``, ``critic_guard``, their actor twins and ``critic_updates`` on the subclass. Returns
        ``[loss_actor, loss_critic, mean Q]`` (NaN where skipped)."""
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        nan = critic_loss.new_full((), float("nan"))
        if self.critic_guard.clip(critic_loss, self.critic_params) is None:
            return torch.stack([nan, nan, nan])
        self.critic_optimizer.step()
        self.critic_updates += 1
        loss = nan
        if self.critic_updates % self.config.policy_delay == 0:
            loss = actor_loss()
            self.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.actor_guard.clip(loss, self.actor_params) is not None:
                self.actor_optimizer.step()
            target_update()
        return torch.stack([loss.detach(), critic_loss.detach(), q_mean])

    def step(self, iteration: int) -> dict[str, Any]:
        batch = next(self.batches).reshape(-1)
        self.run.budget.add_steps(batch.numel())
        self.buffer.extend(batch.select(*TRANSITION_KEYS))
        finished = episode_returns(batch)
        stats = []
        if self.run.budget.env_steps > self.config.warmup_env_steps:
            stats = [self.update(self.buffer.sample()) for _ in range(self.config.updates_per_batch)]
            self.updates += len(stats)
        row: dict[str, Any] = {
            "train/episode_return": finished.mean() if finished.numel() else float("nan"),
            "train/reward_mean": batch["next", "reward"].mean(), "train/updates": len(stats)}
        if stats:
            row.update(zip(self.STATS, torch.stack(stats).nanmean(0).unbind(), strict=True))
        return row

    def summary(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def close(self) -> None:
        self.collector.shutdown()
