"""Proximal policy optimisation (PPO, Schulman et al. 2017) on thousands of batched environments, Brax style.

The chain, one iteration:

1. roll ``num_envs`` systems ``unroll_length`` steps through the simulator (no gradient) from where the last unroll
   stopped, acting with ``u ~ N(mu(s), sigma)`` and ``a = max_action * tanh(u)`` (episodes truncated every
   ``env.episode_length`` steps, staggered as in truncated BPTT and SHAC, so every unroll sees every phase of an
   episode; per-episode physics draws renewed at episode ends);
2. TorchRL's :class:`~torchrl.objectives.value.GAE` on the ``[num_envs, unroll_length]`` batch with the scaled
   rewards: ``done`` marks the truncations and ``terminated`` stays ``False`` (nothing terminates on these swing-ups),
   so the advantage recursion stops at an episode's end and bootstraps from the value of the true last state (before
   the reset); the window's last step bootstraps from the value of the state it reached;
3. ``epochs`` passes over the batch in ``minibatches`` random minibatches, each one step of Adam on TorchRL's
   :class:`~torchrl.objectives.ClipPPOLoss` (clipped surrogate + ``critic_coeff`` x the value loss + the entropy
   bonus) after clipping the global gradient norm;
4. the running mean and variance of the observations take in this unroll's observations.

The policy is the deterministic squashed MLP every method shares (:class:`~research.policies.SquashedMLP`): the
stochastic actor is a Gaussian before the tanh, with the MLP's output as its mean and a learned state-independent
log-std, and the evaluator gets its mean, ``max_action * tanh(mu(s))``. PPO's "action" (what the distribution draws
and the loss scores) is the pre-squash sample ``u``: the tanh's Jacobian is the same under the old and the new
policy, so the probability ratio of ``u`` equals that of the squashed torque, without ``atanh`` of saturated torques;
the entropy bonus is the Gaussian's (closed form). The networks read normalised observations ``(s - mean) / std``
(running statistics over every observation collected so far, kept in the checkpoint; updated after each iteration,
so an iteration's collection and its updates see the same statistics); :attr:`PPO.policy` folds them into the first
layer (``W / std``, ``b - W mean / std``), so the saved ``policy.pt`` is a plain SquashedMLP on raw observations.
The rewards GAE and the critic see are divided by the running std of the discounted return (SB3's VecNormalize;
the cart-pole's quadratic cost reaches thousands a step under a random policy) and clipped to ``+-reward_clip``
(logged returns stay unscaled).

Measured (``experiments/ppo.toml``, seed 0, one thread): the defaults take the pendulum's evaluation return from
-1208 to -186 in 1.05M env steps (90 s of training on a loaded 2-core machine) and to -150.2 in 2.10M (181 s;
DP optimum -137.0). On the cart-pole they do not work yet:
the return rises from -35,700 to about -1,550 in 262k env steps, then the deterministic policy pushes the cart off
the track (quadratic cost, no termination: returns of -10^6), with or without the reward clip and the observation
normalisation. The stochastic policy's own episodes run off too (seed 0, 786k env steps, one thread each): with
``init_std = 0.3`` the training episode return swings between -2,000 and -100,000 (the critic's explained variance
0.99); without the observation normalisation it falls steadily to -878,000 (the critic's explained variance
0.999, and the policy still gets worse); at ``lr = 3e-4`` it swings as at 1e-3; with a fixed reward scale (0.01,
no normalisation, no clip) the critic's loss takes the clipped global gradient (norm ~1,100 against 1.0) and the
policy stops moving (KL ~1e-5 per iteration, clip fraction 0) at a worse-than-random -450,000; a fixed scale of
0.1 with the +-10 clip ends at -1,915 (explained variance 0.04). What the failed policies do (deterministic, 256
reset states): none saturates the tanh (0% of steps with ``|tanh| > 0.99``, so it is not the saturation trap); each
pushes with a nearly constant force (5.6 N at x = 0 falling to -0.2 N at x = 10 m; -3.4 N; -2.2 N), which tilts the
hanging pole towards upright (angle cost 9.7 -> 6.9 per step in the first 25 steps) and carries the cart off the
track, where the quadratic cost grows into the thousands per step: a myopic optimum, plausibly left uncorrected
because one critic fits values over five orders of magnitude (one MSE over on- and off-track states).
``experiments/tune_race.toml`` searches ``init_std`` with the rest.

Every simulated transition counts against the budget (``num_envs * unroll_length`` per iteration). Everything stays
on ``run.device``; the only host syncs are the skip guard's, one per minibatch, as in the other trainers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from research import harness
from research.algos.shac import _finished_episodes
from research.config import ConfigError, EvalConfig, RunConfig
from research.harness import (
    Checkpointable,
    RunContext,
    Writer,
    make_scheduler,
    redraw_finished,
    staggered_start,
)
from research.linear import accelerate
from research.policies import ACTIVATIONS, Activation, SquashedMLP, make_policy
from research.rollout import fused_rollout


@dataclass
class PPOEvalConfig(EvalConfig):
    """Evaluation schedule of PPO: every 262,144 env steps (16 iterations at the defaults; 8 over the budget)."""

    interval_env_steps: int = 262_144
    """Evaluate each time this many more environment steps have been simulated (and once at the end)."""


@dataclass
class PPOConfig(RunConfig):
    """PPO with TorchRL's ClipPPOLoss and GAE on num_envs parallel copies of the system (Brax / Isaac Gym style)."""

    total_env_steps: int = 2_097_152
    """Simulated transitions in all; the run makes total_env_steps // (num_envs * unroll_length) iterations."""
    num_envs: int = 1024
    """Systems simulated in parallel; their states are carried from one unroll to the next."""
    unroll_length: int = 16
    """Steps per environment per iteration (the batch holds num_envs * unroll_length transitions)."""
    epochs: int = 4
    """Passes over each iteration's batch."""
    minibatches: int = 4
    """Minibatches per pass (each holds num_envs * unroll_length / minibatches transitions, one Adam step each)."""
    lr: float = 1e-3
    """Adam learning rate of the actor, its log-std and the critic (one optimizer, as in rl_games and Brax)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule of the learning rate over the iterations."""
    lr_final_fraction: float = 0.0
    """Final learning rate as a fraction of lr (linear and cosine schedules)."""
    discount: float = 0.99
    """Discount gamma of the returns GAE estimates."""
    gae_lambda: float = 0.95
    """lambda of GAE."""
    clip_epsilon: float = 0.2
    """Clipping of the probability ratio in ClipPPOLoss's surrogate: [1 - eps, 1 + eps]."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus (the Gaussian's entropy before the tanh)."""
    critic_coeff: float = 0.5
    """Weight of the value loss in the joint loss."""
    loss_critic_type: Literal["l2", "smooth_l1"] = "l2"
    """Distance of the value loss between the critic and GAE's value targets."""
    max_grad_norm: float = 1.0
    """Maximum global gradient norm of each update (0 = no clipping)."""
    init_std: float = 1.0
    """Initial std of the Gaussian before the tanh (its log is learned, state-independent)."""
    normalize_observations: bool = True
    """Feed the networks observations normalised by running statistics (folded into the evaluated policy)."""
    normalize_advantage: bool = True
    """Standardise the advantages in each minibatch (ClipPPOLoss's normalize_advantage)."""
    normalize_rewards: bool = True
    """Divide the rewards GAE and the critic see by the running std of the discounted return (each env's
    ``G = discount * G + r``, restarted at each episode's start; SB3's VecNormalize): the cart-pole's quadratic cost
    reaches thousands a step under a random policy, the pendulum's 16."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this (after the normalisation, if on) for GAE and the critic."""
    reward_clip: float = 10.0
    """The scaled rewards are clipped to [-reward_clip, reward_clip] (0 = no clipping; SB3's VecNormalize: 10)."""
    critic_hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the critic MLP's hidden layers."""
    critic_activation: Activation = "tanh"
    """Hidden activation of the critic MLP."""
    eval: PPOEvalConfig = field(default_factory=PPOEvalConfig)
    """Evaluation schedule."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_env_steps", "num_envs", "unroll_length", "epochs", "minibatches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.total_env_steps < self.steps_per_iteration:
            raise ConfigError(f"total_env_steps ({self.total_env_steps}) must be at least num_envs * unroll_length "
                              f"({self.steps_per_iteration}), one iteration")
        if self.minibatches > self.steps_per_iteration:
            raise ConfigError(f"minibatches ({self.minibatches}) exceeds the transitions per iteration "
                              f"({self.steps_per_iteration})")
        if self.lr <= 0 or not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ConfigError(f"lr must be > 0 and lr_final_fraction in [0, 1], got {self.lr}, "
                              f"{self.lr_final_fraction}")
        if not 0.0 < self.discount <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"discount must be in (0, 1] and gae_lambda in [0, 1], got {self.discount}, "
                              f"{self.gae_lambda}")
        if self.clip_epsilon <= 0 or self.critic_coeff <= 0 or self.init_std <= 0 or self.reward_scale <= 0:
            raise ConfigError(f"clip_epsilon, critic_coeff, init_std and reward_scale must be > 0, got "
                              f"{self.clip_epsilon}, {self.critic_coeff}, {self.init_std}, {self.reward_scale}")
        if self.entropy_coeff < 0 or self.max_grad_norm < 0 or self.reward_clip < 0:
            raise ConfigError(f"entropy_coeff, max_grad_norm and reward_clip must be >= 0, got {self.entropy_coeff}, "
                              f"{self.max_grad_norm}, {self.reward_clip}")
        if self.env.backend != "simulator":
            raise ConfigError(f"env.backend must be 'simulator' for PPO (it steps thousands of our batched systems), "
                              f"got {self.env.backend!r}")

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def iterations(self) -> int:
        return self.total_env_steps // self.steps_per_iteration


class RunningNorm(nn.Module):
    """Running mean and variance of observations ``[..., dim]`` (float64 buffers, merged batch by batch with Chan et
    al.'s parallel formula); ``forward`` normalises ``(x - mean) / sqrt(var + eps)`` in ``x``'s dtype.

    Before the first :meth:`update` it is the identity (mean 0, variance 1 - eps). Disabled (``enabled=False``) it
    stays the identity and ignores updates.
    """

    def __init__(self, dim: int, device: torch.device, enabled: bool = True, eps: float = 1e-8) -> None:
        super().__init__()
        self.enabled, self.eps = enabled, eps
        self.register_buffer("mean", torch.zeros(dim, device=device, dtype=torch.float64))
        self.register_buffer("var", torch.full((dim,), 1.0 - eps, device=device, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), device=device, dtype=torch.float64))

    @property
    def std(self) -> Tensor:
        """``sqrt(var + eps)``, ``[dim]`` float64."""
        return (self.var + self.eps).sqrt()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merges the observations ``x [M, dim]`` into the statistics (no host sync)."""
        if not self.enabled:
            return
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, correction=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta.square() * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class GaussianHead(nn.Module):
    """``normalised observation [..., obs_dim] -> (loc [..., act_dim], scale [..., act_dim])``: the mean is the
    squashed policy's MLP (before its tanh), the scale ``exp(log_std)`` the same for every state."""

    def __init__(self, network: SquashedMLP, act_dim: int, init_std: float) -> None:
        super().__init__()
        self.network = network
        ref = next(network.parameters())
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std), device=ref.device, dtype=ref.dtype))

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.network.net(observation)
        return loc, self.log_std.exp().expand_as(loc)


def fold_normalizer(network: SquashedMLP, mean: Tensor, std: Tensor) -> SquashedMLP:
    """A copy of ``network`` that reads raw observations: ``network((x - mean) / std)`` with the normalisation
    folded into its first linear layer (``W / std``, ``b - (W / std) @ mean``, computed in float64)."""
    policy = copy.deepcopy(network)
    first = policy.net[0]
    with torch.no_grad():
        weight = first.weight.to(torch.float64) / std.to(first.weight.device)
        bias = first.bias.to(torch.float64) - weight @ mean.to(first.weight.device)
        first.weight.copy_(weight)
        first.bias.copy_(bias)
    return policy


def make_critic(config: PPOConfig, device: torch.device, dtype: torch.dtype, obs_dim: int) -> ValueOperator:
    """``V(normalised observation [..., obs_dim]) -> state_value [..., 1]``."""
    net = accelerate(MLP(in_features=obs_dim, out_features=1, num_cells=config.critic_hidden_sizes,
                         activation_class=ACTIVATIONS[config.critic_activation]))
    return ValueOperator(net, in_keys=["observation"]).to(device=device, dtype=dtype)


def make_actor(head: GaussianHead) -> ProbabilisticActor:
    """TorchRL's actor around ``head``: ``observation`` -> ``loc``, ``scale`` -> ``IndependentNormal`` over
    ``action`` (the pre-squash sample ``u``, ``[..., act_dim]``; log-probs summed over its dimensions)."""
    module = TensorDictModule(head, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(module, in_keys=["loc", "scale"], out_keys=["action"],
                              distribution_class=IndependentNormal, distribution_kwargs={"tanh_loc": False},
                              return_log_prob=True)


class PPO(Checkpointable):
    """PPO's state (actor head, critic, optimizer, observation statistics, carried systems) and its step."""

    STATE = ("head", "critic", "optimizer", "scheduler", "normalizer", "return_norm", "params", "carried",
             "episode_return", "discounted_return", "updates")
    STATS = ("loss_objective", "loss_critic", "entropy", "kl_approx", "clip_fraction", "explained_variance")

    def __init__(self, config: PPOConfig, run: RunContext) -> None:
        self.config, self.run = config, run
        self.iterations = config.iterations
        system = self.system = run.system
        network = make_policy(config.hidden_sizes, config.activation, system.max_action, device=run.device,
                              dtype=run.dtype, obs_dim=system.obs_dim, act_dim=system.action_dim)
        self.head = GaussianHead(network, system.action_dim, config.init_std)
        self.critic = make_critic(config, run.device, run.dtype, system.obs_dim)
        self.normalizer = RunningNorm(system.obs_dim, run.device, config.normalize_observations)
        self.return_norm = RunningNorm(1, run.device, config.normalize_rewards)
        self.actor = make_actor(self.head)
        self.advantage = GAE(gamma=config.discount, lmbda=config.gae_lambda, value_network=self.critic,
                             time_dim=1, deactivate_vmap=True)
        self.loss_module = ClipPPOLoss(self.actor, self.critic, clip_epsilon=config.clip_epsilon,
                                       entropy_bonus=config.entropy_coeff > 0, entropy_coeff=config.entropy_coeff,
                                       critic_coeff=config.critic_coeff, loss_critic_type=config.loss_critic_type,
                                       normalize_advantage=config.normalize_advantage)
        self.log_prob_key = self.loss_module.tensor_keys.sample_log_prob
        self.trainable = [*self.head.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.trainable, lr=config.lr,
                                          fused=True if run.device.type in ("cpu", "cuda") else None)
        self.scheduler = make_scheduler(self.optimizer, config.lr_schedule, config.iterations,
                                        config.lr_final_fraction)
        self.guard = run.guard("PPO update")
        self.params = system.params((config.num_envs,), run.generator, run.device, run.dtype)
        self.carried = staggered_start(config.num_envs, config.env.episode_length, system, run.generator,
                                       run.device, run.dtype, self.params)
        self.episode_return = torch.zeros(config.num_envs, device=run.device, dtype=run.dtype)
        self.discounted_return = torch.zeros(config.num_envs, device=run.device, dtype=run.dtype)
        self.updates = 0

    @property
    def policy(self) -> SquashedMLP:
        """The deterministic policy on raw observations: ``max_action * tanh(mu(normalise(s)))``, the normaliser
        folded into the first layer (a fresh copy; the harness evaluates and saves it)."""
        if not self.config.normalize_observations:
            return self.head.network
        return fold_normalizer(self.head.network, self.normalizer.mean, self.normalizer.std)

    def collect(self) -> tuple[TensorDict, Tensor, Tensor, Tensor]:
        """One unroll of the stochastic policy; returns the batch ``[num_envs, unroll_length]`` for GAE and the loss
        (normalised observations, pre-squash samples, scaled rewards, truncation flags, behaviour log-probs), the raw
        observations ``[N, T, obs_dim]``, the rewards ``[N, T]`` and the truncation flags ``[N, T]``."""
        config, run, head, normalizer = self.config, self.run, self.head, self.normalizer
        max_action = self.system.max_action
        samples: list[Tensor] = []

        def behaviour(observation: Tensor) -> Tensor:
            loc, scale = head(normalizer(observation))
            noise = torch.randn(loc.shape, generator=run.generator, device=loc.device, dtype=loc.dtype)
            u = loc + scale * noise
            samples.append(u)
            return max_action * torch.tanh(u)

        with torch.no_grad():
            rollout = fused_rollout(behaviour, self.carried, self.params, config.unroll_length, system=self.system,
                                    episode_length=config.env.episode_length, generator=run.generator,
                                    keep_trajectory=True)
            self.carried = rollout.state
            self.params = redraw_finished(self.params, self.system, rollout.truncated.any(-1), run.generator)
            truncated = rollout.truncated.unsqueeze(-1)
            batch = TensorDict({
                "observation": normalizer(rollout.observations),
                "action": torch.stack(samples, dim=-2),
                "next": TensorDict({"observation": normalizer(rollout.next_observations),
                                    "reward": self.scale_rewards(rollout.rewards, rollout.truncated).unsqueeze(-1),
                                    "done": truncated, "terminated": torch.zeros_like(truncated)},
                                   batch_size=rollout.rewards.shape),
            }, batch_size=rollout.rewards.shape, device=run.device)
            batch.set(self.log_prob_key, self.actor.get_dist(batch).log_prob(batch["action"]))
            self.advantage(batch)
        return batch, rollout.observations, rollout.rewards, rollout.truncated

    def scale_rewards(self, rewards: Tensor, truncated: Tensor) -> Tensor:
        """The rewards ``[N, T]`` as GAE and the critic see them: divided by the running std of the discounted
        return (updated with this unroll's returns first; with ``normalize_rewards``), times ``reward_scale``,
        clipped to ``+-reward_clip`` (when > 0)."""
        config = self.config
        if config.normalize_rewards:
            returns, running = [], self.discounted_return
            for t in range(rewards.shape[-1]):
                running = config.discount * running + rewards[:, t]
                returns.append(running)
                running = torch.where(truncated[:, t], 0.0, running)
            self.discounted_return = running
            self.return_norm.update(torch.stack(returns, dim=-1).reshape(-1, 1))
            rewards = rewards / self.return_norm.std.to(rewards.dtype)
        rewards = rewards * config.reward_scale
        return rewards.clamp(-config.reward_clip, config.reward_clip) if config.reward_clip > 0 else rewards

    def step(self, iteration: int) -> dict[str, Tensor | float]:
        config, run = self.config, self.run
        batch, observations, rewards, truncated = self.collect()
        run.budget.add_steps(rewards.numel())
        flat = batch.reshape(-1)
        stats, norms = [], []
        for _ in range(config.epochs):
            order = torch.randperm(flat.shape[0], generator=run.generator, device=run.device)
            for rows in order.chunk(config.minibatches):
                out = self.loss_module(flat[rows])
                loss = out["loss_objective"] + out["loss_critic"]
                if config.entropy_coeff > 0:
                    loss = loss + out["loss_entropy"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = self.guard.clip(loss, self.trainable, config.max_grad_norm)
                if norm is not None:
                    self.optimizer.step()
                    self.updates += 1
                    norms.append(norm)
                stats.append(torch.stack([out.get(k, torch.full_like(loss, math.nan)).detach().reshape(())
                                          for k in self.STATS]))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.normalizer.update(observations)

        finished_total, finished_count, self.episode_return = _finished_episodes(self.episode_return, rewards,
                                                                                 truncated)
        episode_return = torch.where(finished_count > 0, finished_total / finished_count.clamp(min=1), math.nan)
        row: dict[str, Tensor | float] = dict(zip((f"train/{k}" for k in self.STATS),
                                                  torch.stack(stats).nanmean(0).unbind(), strict=True))
        row.update({"train/episode_return": episode_return, "train/reward_mean": rewards.mean(),
                    "train/value_target_mean": batch["value_target"].mean(),
                    "train/std": self.head.log_std.detach().exp().mean(),
                    "train/grad_norm": sum(norms) / len(norms) if norms else math.nan, "train/lr": lr})
        return row

    def summary(self) -> dict[str, Any]:
        return {"updates": self.updates}


def train_ppo(config: PPOConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with PPO; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, PPO, writer, quiet, name="ppo")
