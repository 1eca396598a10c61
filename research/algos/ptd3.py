"""Parallel-environment TD3 in the style of FastTD3 (Seo et al. 2025; also PQL, Li et al. 2023).

TD3 (:mod:`research.algos.td3`: twin critics with clipped double Q, target policy smoothing, delayed actor and target
updates; here on plain tensors, :class:`TwinLosses`, checked against TorchRL's :class:`~torchrl.objectives.TD3Loss`)
run the way a researcher who owns a batched simulator
would run it: ``num_envs`` systems stepped together each iteration, a large replay batch, a few gradient steps per
collected batch, and a short random warm-up. One iteration (:meth:`PTD3.step`):

1. :class:`~research.collect.SimulatorCollector` steps ``num_envs`` systems ``frames_per_batch / num_envs`` steps
   each (default: one step of 128 systems, 128 env steps, all counted in the budget);
2. with ``n_step > 1`` the batch ``[num_envs, T]`` joins the steps carried from the previous batch and becomes
   n-step transitions (:func:`n_step_transitions`: discounted reward sum over up to ``n_step`` steps, cut at the end
   of an episode, the observation ``steps_to_next_obs`` steps later, bootstrapped with ``gamma **
   steps_to_next_obs`` as TorchRL's TD(0) estimator does with that key); the last ``n_step - 1`` steps wait for the next batch;
3. the transitions go into the shared replay buffer; after the warm-up, ``round(frames_per_batch *
   updates_per_env_step)`` TD3 updates (default 8 per 128 transitions) on ``batch_size`` samples each.

Exploration ("mixed noise" of FastTD3): each environment draws its own Gaussian noise scale uniformly from
``[noise_std_min, noise_std] * max_action`` at the start of every episode, so a batch mixes nearly greedy and
strongly perturbed trajectories; ``noise_std_min = noise_std`` gives TD3's constant noise.

What of FastTD3 is in: many parallel environments, large batches, several updates per collected batch (all three
as config fields), clipped double Q, target policy smoothing, delayed policy updates, n-step returns (``n_step``),
mixed per-environment exploration noise, a short warm-up. The default batch (512) is smaller than FastTD3's
thousands: on one CPU thread the run's cost is updates x batch x network size, and 512 learned the pendulum in the
fewest seconds of what was tried (``batch_size`` is a field). What is not: the distributional (C51) critic (a plain
regression critic here), empirical observation normalisation (the systems' observations are already bounded),
LayerNorm critics and AdamW weight decay (Adam, as in TD3), mixed precision and ``torch.compile``, its large
[1024, 512, 256] networks (the defaults here are sized for a CPU thread and the pendulum), and its per-environment
replay layout (the transitions are pooled in TorchRL's buffer; n-step returns are formed at collection instead).

Defaults (``experiments/ptd3.toml``): 128 environments, 8 updates of 512 samples per 128-step batch (one update per
16 transitions, against TD3's one per transition), [64, 64] ReLU actor and critics (small: on a CPU thread the
update's arithmetic is the run's cost), lr 1e-3, gamma 0.98, tau 0.005, policy delay 2, target noise 0.2 clipped at
0.5 (x max_action), n-step 3, mixed noise in [0.05, 0.4] x max_action, 2 560 warm-up steps, 64 000 env steps in
all (3 840 updates). Chosen lightly on the default pendulum, seed 0: at 51 200 env steps (3 040 updates) n-step 3
reached -156 and n-step 1 -1136. The defaults, seed 0, one thread: final evaluation -149.0 (median -126.1, every
start swung up) after 64 000 env steps; -164.6 at 44 800. 288 s of training wall-clock on a 2-core host at a load
average near 18 (other jobs), 68 s of CPU time for the whole process, evaluations included: not a clean timing.

Budgets count every simulated transition, as for DDPG and TD3; the deterministic squashed policy of
:mod:`research.policies` is what the evaluator scores. Device-generic: every tensor (collector, buffer, networks,
n-step carry) lives on ``run.device``. Only the simulator backend (``env.backend = "simulator"``) and Gaussian noise
are supported. A checkpoint keeps TD3's state, the replay buffer and collector (:mod:`research.algos.off_policy`),
the per-environment noise scales and the n-step carry: a resumed CPU run is bit-identical.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn

from research import harness
from research.algos.off_policy import (
    TRANSITION_KEYS,
    OffPolicy,
    OffPolicyEvalConfig,
    episode_returns,
    make_adam,
    make_critic,
)
from research.algos.td3 import TD3Config
from research.collect import Explore
from research.config import ConfigError
from research.harness import RunContext, Writer

#: Keys of an n-step transition in the replay buffer: the 1-step keys and the number of steps to the next observation.
NSTEP_KEYS = (*TRANSITION_KEYS, "steps_to_next_obs")


@dataclass
class PTD3EvalConfig(OffPolicyEvalConfig):
    """Evaluation schedule of parallel TD3: every 6 400 env steps (10 over the default budget)."""

    interval_env_steps: int = 6_400
    """Evaluate each time this many more environment steps have been collected (and once at the end)."""


@dataclass
class PTD3Config(TD3Config):
    """Parallel TD3: TD3's fields with FastTD3-style defaults, plus n-step returns and mixed exploration noise."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the actor's hidden layers (the same squashed MLP as BPTT)."""
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of each of the two critics' hidden layers; a critic reads (observation, action)."""
    total_env_steps: int = 64_000
    """Transitions collected in all (every environment's every step), warm-up included."""
    warmup_env_steps: int = 2_560
    """Transitions collected with uniformly random actions before the first update (20 steps of 128 envs)."""
    num_envs: int = 128
    """Environments stepped together by the collector."""
    frames_per_batch: int = 128
    """Transitions per collected batch (a multiple of num_envs: num_envs x steps per environment)."""
    updates_per_env_step: float = 1 / 16
    """Gradient steps per collected transition: frames_per_batch x this many updates follow each batch (8 per batch
    of 128 by default)."""
    batch_size: int = 512
    """Transitions per gradient step."""
    buffer_size: int = 100_000
    """Capacity of the replay buffer (transitions)."""
    noise_std: float = 0.4
    """Upper end of the per-environment exploration noise scale, as a fraction of the action bound."""
    noise_std_min: float = 0.05
    """Lower end of that scale: each environment draws its std uniformly from [noise_std_min, noise_std] x
    max_action at every episode start (FastTD3's mixed noise); equal to noise_std: TD3's constant noise."""
    n_step: int = 3
    """Steps summed into each transition's return before bootstrapping (1: TD3's one-step target); cut at the end
    of an episode."""
    eval: PTD3EvalConfig = field(default_factory=PTD3EvalConfig)
    """Evaluation schedule."""

    def __post_init__(self) -> None:
        if self.env.backend != "simulator":  # before TD3's checks, whose Gymnasium message would not say this
            raise ConfigError(f"env.backend must be 'simulator' for ptd3 (it steps the batched simulator), got "
                              f"{self.env.backend!r}")
        super().__post_init__()
        if self.noise != "gaussian":
            raise ConfigError(f"noise must be 'gaussian' for ptd3 (per-environment mixed Gaussian noise), got "
                              f"{self.noise!r}")
        if not 0.0 <= self.noise_std_min <= self.noise_std:
            raise ConfigError(f"noise_std_min must be in [0, noise_std={self.noise_std}], got {self.noise_std_min}")
        if not 1 <= self.n_step <= self.env.episode_length:
            raise ConfigError(f"n_step must be in [1, env.episode_length={self.env.episode_length}], got "
                              f"{self.n_step}")
        if self.updates_per_env_step > 0 and self.updates_per_batch == 0:
            raise ConfigError(f"updates_per_env_step must give at least one update per batch (frames_per_batch x "
                              f"updates_per_env_step >= 0.5), got {self.updates_per_env_step} with frames_per_batch "
                              f"{self.frames_per_batch}")


def n_step_transitions(steps: TensorDictBase, n: int, gamma: float) -> tuple[TensorDict, TensorDictBase]:
    """n-step transitions from consecutive steps of ``E`` environments, and the steps still waiting for theirs.

    Args:
        steps: ``[E, L]`` one-step transitions in time order along dim 1 (``observation``, ``action``, ``("next",
            "observation" | "reward" | "done" | "terminated")``), every environment ending its episodes at the same
            steps (as :class:`~research.collect.SimulatorCollector` does).
        n: steps per transition at most.
        gamma: discount.

    Returns:
        ``(ready [E, R], carry [E, L - R])``: ``ready[:, t]`` starts at step ``t`` with its ``observation`` and
        ``action``; ``("next", "reward")`` is ``sum_k gamma^k r_{t+k}`` over its ``k_t = steps_to_next_obs [E, R, 1]``
        steps (``n``, or fewer when an episode ends at step ``t + k_t - 1``); ``("next", "observation" | "done" |
        "terminated")`` are those of step ``t + k_t - 1``. ``carry`` is the suffix of ``steps`` whose ``n`` steps are
        not all in ``steps`` yet: prepend it to the next steps.
    """
    E, L = steps.shape
    device = steps.device
    reward = steps["next", "reward"]
    done = steps["next", "done"].to(torch.bool)
    # past the end: a stop that flags the transitions reaching it as not ready
    reward = torch.cat([reward, reward.new_zeros(E, n - 1, *reward.shape[2:])], dim=1)
    done = torch.cat([done, done.new_ones(E, n - 1, *done.shape[2:])], dim=1)
    total = torch.zeros_like(reward[:, :L])
    count = torch.zeros(E, L, 1, dtype=torch.int64, device=device)
    alive = torch.ones(E, L, 1, dtype=torch.bool, device=device)
    for k in range(n):
        total = total + alive * (gamma ** k) * reward[:, k:k + L]
        count = count + alive
        alive = alive & ~done[:, k:k + L]
    last = torch.arange(L, device=device).view(1, L, 1) + count - 1  # [E, L, 1]: the step whose next state is used
    ready = (last < L).all(0).view(L)
    R = int(ready.sum())
    if R and not bool(ready[:R].all()):
        raise ValueError("n_step_transitions needs environments that end their episodes at the same steps")
    index = last[:, :R].clamp_max(L - 1)

    def at_last(value: Tensor) -> Tensor:
        return value.gather(1, index.expand(E, R, *value.shape[2:]))

    ready_td = TensorDict({
        "observation": steps["observation"][:, :R],
        "action": steps["action"][:, :R],
        "steps_to_next_obs": count[:, :R],
        "next": TensorDict({
            "observation": at_last(steps["next", "observation"]),
            "reward": total[:, :R],
            "done": at_last(steps["next", "done"]),
            "terminated": at_last(steps["next", "terminated"]),
        }, batch_size=(E, R)),
    }, batch_size=(E, R), device=device)
    return ready_td, steps[:, R:]


class TwinLosses(nn.Module):
    """TD3's two losses on plain tensors, with target copies of the actor and of both critics.

    - :meth:`critic_loss` ``(sample) -> (loss, q [2, N, 1])`` for a replay sample of ``N`` transitions: ``sum_i
      mean((Q_i(s, a) - y)^2)`` with ``y = r + gamma^k (1 - terminated) min_i Q'_i(s', clip(pi'(s') + eps))``, ``k``
      the sample's ``steps_to_next_obs`` (1 without it) and ``eps`` Gaussian of std ``policy_noise`` clipped to
      ``+- noise_clip``, drawn from torch's global generator first (as TorchRL's ``TD3Loss`` draws it);
    - :meth:`actor_loss` ``(observation [N, obs_dim]) -> -mean(Q_1(s, pi(s)))`` through the first critic with its
      weights frozen.

    The numbers of TorchRL's ``TD3Loss`` with a TD(0) estimator (``tests/algos/test_ptd3.py`` checks them against
    it) without its TensorDict plumbing, which costs several times the arithmetic of the small networks and large
    batches used here.

    Args:
        actor: ``observation [N, obs_dim] -> action [N, act_dim]``.
        critics: two ``(observation [N, obs_dim], action [N, act_dim]) -> Q [N, 1]`` networks.
        gamma: discount per step.
        policy_noise, noise_clip: target policy smoothing, in action units.
        max_action: the target action is clipped to ``+- max_action``.
    """

    def __init__(self, actor: nn.Module, critics: list[nn.Module], gamma: float, policy_noise: float,
                 noise_clip: float, max_action: float) -> None:
        super().__init__()
        self.actor, self.critics = actor, nn.ModuleList(critics)
        self.gamma, self.policy_noise, self.noise_clip, self.max_action = gamma, policy_noise, noise_clip, max_action
        self.target_actor = copy.deepcopy(actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self._online = [*actor.parameters(), *self.critics.parameters()]
        self._targets = [*self.target_actor.parameters(), *self.target_critics.parameters()]

    def critic_loss(self, sample: TensorDictBase) -> tuple[Tensor, Tensor]:
        observation, action = sample["observation"], sample["action"]
        noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
        with torch.no_grad():
            next_observation = sample["next", "observation"]
            next_action = (self.target_actor(next_observation) + noise).clamp(-self.max_action, self.max_action)
            next_q = torch.minimum(*(critic(next_observation, next_action) for critic in self.target_critics))
            steps = sample.get("steps_to_next_obs", None)
            discount = self.gamma if steps is None else self.gamma ** steps.to(next_q.dtype)
            target = sample["next", "reward"] + discount * (~sample["next", "terminated"]) * next_q
        q = torch.stack([critic(observation, action) for critic in self.critics])
        return (q - target).square().mean(dim=(1, 2)).sum(), q.detach()

    def actor_loss(self, observation: Tensor) -> Tensor:
        critic = self.critics[0]
        critic.requires_grad_(False)
        try:
            return -critic(observation, self.actor(observation)).mean()
        finally:
            critic.requires_grad_(True)

    @torch.no_grad()
    def soft_update(self, tau: float) -> None:
        """``target <- (1 - tau) target + tau online`` for the actor and both critics (one fused call)."""
        torch._foreach_lerp_(self._targets, self._online, tau)


class PTD3(OffPolicy):
    """TD3 on many parallel environments: mixed per-environment noise, n-step transitions, TD3's update.

    The collector and replay buffer are :class:`~research.algos.off_policy.OffPolicy`'s, the critics
    :func:`~research.algos.off_policy.make_critic`'s; :class:`TwinLosses` computes TD3's losses. This class adds
    the exploration policy (:meth:`explore`), the n-step carry between batches (:meth:`step`) and the delayed
    actor and target updates (:meth:`update`, TD3's schedule).
    """

    STATS = ("train/loss_actor", "train/loss_critic", "train/q_mean")
    STATE = (*OffPolicy.STATE, "losses", "actor_optimizer", "critic_optimizer", "critic_updates", "noise_scale")

    def __init__(self, config: PTD3Config, run: RunContext) -> None:
        super().__init__(config, run)
        system = run.system
        self.noise_scale = torch.zeros(config.num_envs, system.action_dim, device=run.device, dtype=run.dtype)
        self.carry: TensorDictBase | None = None
        critics = [make_critic(config, run.device, run.dtype, system.obs_dim, system.action_dim).module
                   for _ in range(2)]
        max_action = system.max_action
        self.losses = TwinLosses(self.policy, critics, config.gamma, config.target_policy_noise * max_action,
                                 config.target_noise_clip * max_action, max_action)
        self.actor_params = list(self.policy.parameters())
        self.critic_params = list(self.losses.critics.parameters())
        self.actor_optimizer = make_adam(self.actor_params, config.actor_lr, run.device)
        self.critic_optimizer = make_adam(self.critic_params, config.critic_lr, run.device)
        self.critic_guard = run.guard("PTD3 critic update")
        self.actor_guard = run.guard("PTD3 actor update")
        self.critic_updates = 0
        self.start(None, self.explore)

    def start(self, exploration_policy: Any, explore: Explore | None = None) -> None:
        """The shared collector (exploring with :meth:`explore`) and buffer; the first noise scales are drawn from
        the collector's generator."""
        super().start(exploration_policy, explore)
        self._draw_noise_scale(self.collector.generator)

    def _draw_noise_scale(self, generator: torch.Generator) -> None:
        """Per-environment noise std ``[num_envs, action_dim]``, uniform in ``[noise_std_min, noise_std] *
        max_action`` (one draw per environment, shared by its action dimensions)."""
        config, max_action = self.config, self.run.system.max_action
        u = torch.rand((config.num_envs, 1), generator=generator, device=self.run.device, dtype=self.run.dtype)
        low, high = config.noise_std_min * max_action, config.noise_std * max_action
        self.noise_scale = (low + (high - low) * u).expand_as(self.noise_scale).contiguous()

    def explore(self, observation: Tensor, generator: torch.Generator) -> Tensor:
        """``observation [num_envs, obs_dim] -> action [num_envs, action_dim]``: the policy's action plus Gaussian
        noise of each environment's own scale, clipped to the action range; new scales at each episode start."""
        if self.collector.episode_step == 0:
            self._draw_noise_scale(generator)
        action = self.policy(observation)
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=action.dtype)
        max_action = self.run.system.max_action
        return (action + self.noise_scale * noise).clamp(-max_action, max_action)

    def update(self, sample: TensorDictBase) -> Tensor:
        """One critic step on ``sample``; every ``policy_delay``-th also an actor step and the soft target update.
        Returns ``[loss_actor, loss_critic, mean Q]`` (NaN where skipped)."""
        critic_loss, q = self.losses.critic_loss(sample)
        return self.delayed_update(critic_loss, q.mean(), lambda: self.losses.actor_loss(sample["observation"]),
                                   lambda: self.losses.soft_update(self.config.tau))

    def step(self, iteration: int) -> dict[str, Any]:
        batch = next(self.batches)  # [num_envs, steps per environment]
        self.run.budget.add_steps(batch.numel())
        steps = batch.select(*TRANSITION_KEYS)
        if self.config.n_step == 1:
            ready = steps
        else:
            if self.carry is not None and self.carry.shape[1]:
                steps = torch.cat([self.carry, steps], dim=1)
            ready, self.carry = n_step_transitions(steps, self.config.n_step, self.config.gamma)
        if ready.shape[1]:
            self.buffer.extend(ready.reshape(-1))
        batch = batch.reshape(-1)
        finished = episode_returns(batch)
        stats = []
        if self.run.budget.env_steps > self.config.warmup_env_steps and len(self.buffer):
            stats = [self.update(self.buffer.sample()) for _ in range(self.config.updates_per_batch)]
            self.updates += len(stats)
        row: dict[str, Any] = {
            "train/episode_return": finished.mean() if finished.numel() else float("nan"),
            "train/reward_mean": batch["next", "reward"].mean(), "train/updates": len(stats),
            "train/noise_std": self.noise_scale.mean()}
        if stats:
            row.update(zip(self.STATS, torch.stack(stats).nanmean(0).unbind(), strict=True))
        return row

    def state_dict(self) -> dict[str, Any]:
        """TD3's state, the per-environment noise scales and the n-step steps carried to the next batch."""
        carry = None if self.carry is None else self.carry.clone().to_dict()
        return {**super().state_dict(), "carry": carry,
                "carry_steps": None if self.carry is None else self.carry.shape[1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.carry = None
        if state["carry"] is not None:
            self.carry = TensorDict(state["carry"], batch_size=[self.config.num_envs, state["carry_steps"]],
                                    device=self.run.device)


def train_ptd3(config: PTD3Config, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with parallel-environment TD3; returns the summary (and writes the run files through
    ``writer``)."""
    return harness.train(config, PTD3, writer, quiet, name="ptd3")
