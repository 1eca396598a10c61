"""Backpropagation through time (BPTT): trajectory returns differentiated through the simulator into the policy.

The chain, one iteration: start states -> roll the policy through the physics for ``H`` steps -> horizon loss
(minus the discounted mean reward) -> gradient -> clip -> Adam step.

Two modes:

- full horizon (``window = 0``): every iteration resets ``num_envs`` systems from the system's reset distribution
  and rolls out ``horizon`` steps (the TorchRL pendulum tutorial's loop);
- truncated (``window = K > 0``): the systems keep running between updates; each update rolls ``K`` steps from
  where the last stopped (gradients cut at the window's start), episodes are reset every ``env.episode_length``
  steps with staggered starts so updates always see every phase of an episode.

Two rollout paths with identical gradients: ``rollout = "fused"`` (default; the pure physics in a tensor loop,
optionally ``torch.compile``-d) and ``rollout = "env"`` (TorchRL's ``env.rollout`` on :class:`PendulumEnv`).

The defaults (B=128, H=64, discount 0.98, 1000 iterations, Adam 5e-3 with cosine decay, clip 1.0, 2x64 tanh MLP)
are the best of the configurations tried on swing-up; ``experiments/bptt_*.toml`` keep the instructive others.

Randomised smoothing (Suh, Pang and Tedrake's bundled gradients; ``action_noise > 0``): the training rollouts add
Gaussian noise before the tanh squash, as SHAC does (:func:`research.algos.shac.noisy_policy`), and the gradient flows
through it (reparameterised), optionally ``noise_samples`` draws per start state. In full-horizon mode the noise of
the whole rollout is drawn at once (``fused_rollout(action_noise=...)``, which the native C loop runs on Gymnasium's
physics); truncated windows draw it step by step. At the defaults (0, 1) the rollouts run the deterministic policy
itself, as before, and the config hash leaves both fields out. The squash penalty reads the rollout's observations
(``keep_observations``, also native).

``squash_penalty > 0`` adds SHAC's squash penalty (:func:`research.algos.shac.squash_loss` on the rollout's states)
to the loss: the ablation of the saturation trap, where a bang-bang policy's tanh gradients vanish. Every update logs
``train/saturated``, the fraction of the policy's actions beyond 0.99 of the bound on the update's start states
(in full-horizon mode the reset distribution, i.e. the state space).

:mod:`research.algos.bptt_finetune` adds a second stage on the evaluation's own objective;
:mod:`research.algos.bptt_blend` blends the first-order gradient with the likelihood-ratio one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict
from torch import Tensor

from research import harness
from research.algos.shac import noisy_policy, saturated_fraction, squash_loss
from research.config import ConfigError, RunConfig
from research.envs import PendulumEnv, PendulumParams
from research.harness import (
    Checkpointable,
    RunContext,
    Writer,
    load_state,
    make_scheduler,
    redraw_finished,
    save_state,
    staggered_start,
)
from research.policies import SquashedMLP, make_actor, make_policy
from research.rollout import RolloutState, fused_rollout, initial_state

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
    """Full-horizon fused rollouts in ``torch.compile``-d chunks of policy and physics, forward and backward
    (``research.rollout.fused_rollout(compile=True)``; the first iteration compiles, and that time counts)."""
    action_noise: float = 0.0
    """Randomised smoothing (Suh, Pang and Tedrake's bundled gradients): std of Gaussian noise added before the tanh
    squash in training rollouts, as SHAC's ``action_noise``, reparameterised (the gradient flows through the mean);
    0 = deterministic rollouts. Evaluation uses the deterministic policy."""
    noise_samples: int = 1
    """Noise draws per start state in full-horizon mode: each of the ``num_envs`` start states (and its physical
    parameters) is rolled out this many times with independent action noise (the batch has num_envs * noise_samples
    rows); > 1 needs action_noise > 0 and window = 0."""
    squash_penalty: float = 0.0
    """Weight of SHAC's squash penalty (the mean squared pre-tanh output of the policy on the rollout's states,
    ``research.algos.shac.squash_loss``) added to the loss: keeps the tanh out of the saturated bang-bang trap where
    its gradient vanishes; 0 = plain BPTT (today's path)."""

    #: Fields added after runs were recorded, left out of the config hash at these values (``research.config``).
    HASH_NEUTRAL_FIELDS: ClassVar[dict[str, Any]] = {"action_noise": 0.0, "noise_samples": 1, "squash_penalty": 0.0}

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
        if self.rollout == "env" and self.env.system != "pendulum":
            raise ConfigError(f"rollout='env' runs the pendulum's TorchRL environment: env.system must be 'pendulum', "
                              f"got {self.env.system!r} (use rollout='fused')")
        if self.rollout == "env" and (self.window or self.compile):
            raise ConfigError("rollout='env' supports full-horizon BPTT without compile (window=0, compile=false)")
        if self.window and self.compile:
            raise ConfigError("compile=true needs full-horizon BPTT (window=0): compiled chunks have no resets")
        if not (0.0 <= self.action_noise < math.inf):
            raise ConfigError(f"action_noise must be a finite std >= 0, got {self.action_noise}")
        if self.noise_samples < 1 or (self.noise_samples > 1 and (not self.action_noise or self.window)):
            raise ConfigError(f"noise_samples must be >= 1, and > 1 only with action_noise > 0 and window = 0, got "
                              f"noise_samples={self.noise_samples} (action_noise={self.action_noise}, "
                              f"window={self.window})")
        if not (0.0 <= self.squash_penalty < math.inf) or (self.squash_penalty and self.rollout == "env"):
            raise ConfigError(f"squash_penalty must be a finite weight >= 0, and 0 with rollout='env', got "
                              f"{self.squash_penalty} (rollout={self.rollout!r})")
        if self.action_noise and (self.rollout == "env" or self.compile):
            raise ConfigError("action_noise > 0 needs rollout='fused' and compile=false")

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.noise_samples * (self.window or self.horizon)


def discount_weights(horizon: int, discount: float, like: Tensor) -> Tensor:
    """Normalised weights ``discount**t / sum_s discount**s``, ``[H]``: the loss is a weighted mean reward."""
    weights = discount ** torch.arange(horizon, device=like.device, dtype=like.dtype)
    return weights / weights.sum()


def horizon_loss(rewards: Tensor, discount: float) -> Tensor:
    """Minus the discounted mean reward of ``rewards [B, H]``, averaged over the batch: a scalar to minimise."""
    return -(rewards * discount_weights(rewards.shape[-1], discount, rewards)).sum(-1).mean()


def repeat_rows(x: Any, count: int) -> Any:
    """Each row of ``x [B, ...]`` (a tensor or a tuple of them, e.g. physical parameters) ``count`` times in a row:
    ``[B * count, ...]``; ``x`` itself when ``count == 1``."""
    if count == 1:
        return x
    if isinstance(x, tuple):
        return type(x)(*(repeat_rows(t, count) for t in x))
    return x.repeat_interleave(count, dim=0)


def env_rollout_rewards(env: PendulumEnv, policy: SquashedMLP, state: Tensor, params: PendulumParams,
                        horizon: int) -> Tensor:
    """Rewards ``[B, H]`` of ``policy`` through TorchRL's ``env.rollout`` from the given start states ``[B, 2]``."""
    batch = state.shape[:-1]
    td = TensorDict(
        {
            **dict(zip(env.system.state_names, state.unbind(-1), strict=True)),
            "observation": env.system.observe(state),
            "params": TensorDict(params._asdict(), batch_size=batch),
        },
        batch_size=batch,
        device=state.device,
    )
    rollout = env.rollout(horizon, make_actor(policy), tensordict=td, auto_reset=False)
    return rollout["next", "reward"].squeeze(-1)


class BPTT(Checkpointable):
    """BPTT's state (policy, optimizer, schedule, carried systems) and its step, run by :func:`research.harness.train`."""

    STATE = ("policy", "optimizer", "scheduler", "params", "carried")

    def __init__(self, config: BPTTConfig, run: RunContext) -> None:
        self.config, self.run = config, run
        self.iterations = config.iterations
        self.horizon, self.discount, self.full_horizon = config.horizon, config.discount, not config.window
        self.system = run.system
        self.policy = make_policy(config.hidden_sizes, config.activation, self.system.max_action, device=run.device,
                                  dtype=run.dtype, obs_dim=self.system.obs_dim, act_dim=self.system.action_dim)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.scheduler = make_scheduler(self.optimizer, config.lr_schedule, config.iterations,
                                        config.lr_final_fraction)
        self.guard = run.guard("BPTT update")
        self.env = (PendulumEnv(device=run.device, dtype=run.dtype, seed=config.seed, physics=self.system)
                    if config.rollout == "env" else None)
        self.batch = (config.num_envs,)
        self.params = self.system.params(self.batch, run.generator, run.device, run.dtype)
        self.carried = (staggered_start(config.num_envs, config.env.episode_length, self.system, run.generator,
                                        run.device, run.dtype, self.params) if config.window else None)
        # What the training rollouts run: the policy itself without action noise (today's path, bit for bit).
        self.behaviour = noisy_policy(self.policy, config.action_noise, run.generator)

    def state_dict(self) -> dict:
        """The policy, Adam, the schedule, the episodes' parameters, the carried states (truncated mode) and, with
        ``rollout = "env"``, the environment's generator."""
        state = super().state_dict()
        if self.env is not None:
            state["env_rng"] = save_state(self.env.rng)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.env is not None:
            load_state(self.env.rng, state["env_rng"])

    def rollout_rewards(self) -> Tensor:
        """Rewards ``[B, H]`` (or ``[B, K]`` in truncated mode) of one differentiable rollout of the policy."""
        config, run = self.config, self.run
        features = self.system.features
        penalty = bool(config.squash_penalty)  # the penalty needs the rollout's observations
        if not self.full_horizon:
            self.start_state = self.carried.state
            rollout = fused_rollout(self.behaviour, self.carried, self.params, config.window,
                                    episode_length=config.env.episode_length, generator=run.generator,
                                    system=self.system, features=features,
                                    keep_trajectory=bool(self.system.ranges) or penalty)
            self.observations = rollout.observations
            self.carried = RolloutState(*(t.detach() for t in rollout.state))
            if self.system.ranges:
                self.params = redraw_finished(self.params, self.system, rollout.truncated.any(-1), run.generator)
            return rollout.rewards
        if self.system.ranges:
            self.params = self.system.params(self.batch, run.generator, run.device, run.dtype)
        state = self.system.initial_state(self.batch, run.generator, run.device, run.dtype, params=self.params)
        self.start_state = state
        if self.env is not None:
            return env_rollout_rewards(self.env, self.policy, state, self.params, config.horizon)
        samples = config.noise_samples
        # full horizon: the action noise is drawn for the whole rollout at once, which the native loop also runs
        rollout = fused_rollout(self.policy, initial_state(repeat_rows(state, samples)),
                                repeat_rows(self.params, samples), self.horizon, system=self.system,
                                compile=config.compile, features=features, generator=run.generator,
                                action_noise=config.action_noise, keep_observations=penalty)
        self.observations = rollout.observations
        return rollout.rewards

    def step(self, iteration: int) -> dict[str, Tensor | float]:
        rewards = self.rollout_rewards()
        self.run.budget.add_steps(rewards.numel())
        loss = horizon_loss(rewards, self.discount)
        if self.config.squash_penalty:
            loss = loss + self.config.squash_penalty * squash_loss(self.policy, self.observations)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.guard.clip(loss, self.policy.parameters(), self.config.grad_clip)
        if grad_norm is not None:
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        rewards = rewards.detach()
        return {"train/return": rewards.sum(-1).mean(), "train/reward_mean": rewards.mean(),
                "train/loss": loss.detach(), "train/grad_norm": math.nan if grad_norm is None else grad_norm,
                "train/lr": lr,
                "train/saturated": saturated_fraction(self.policy, self.system.observe(self.start_state))}


def train_bptt(config: BPTTConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy by BPTT; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, BPTT, writer, quiet, name="bptt")
