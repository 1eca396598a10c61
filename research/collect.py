"""The replay-buffer learners' collector on our simulator: pure tensor steps, one TensorDict per batch.

TorchRL's :class:`~torchrl.collectors.Collector` steps :class:`research.envs.PendulumEnv` through its transforms and
the exploration module with a TensorDict per step: ~0.45 ms per transition on one env, about 9 s of a 20k-step DDPG
run. :class:`SimulatorCollector` steps the same system (``system.step``, the env's
reset distribution and per-episode parameter draws, truncation at ``episode_length``) on plain tensors and builds the
batch once, with the keys and layout the Collector gives (``[num_envs, frames_per_batch / num_envs]``, the
``("next", ...)`` entries, ``done = truncated`` at the episode's end, ``terminated`` always ``False`` and the
``episode_reward`` of :class:`~torchrl.envs.RewardSum`).

Actions: uniformly random over the action range for the first ``warmup_frames`` transitions (the Collector's
``init_random_frames``), then ``explore(observation [N, obs_dim], generator) -> action [N, action_dim]``. Every draw
(resets, parameters, physics noise, random actions, and the exploration noise ``explore`` draws from ``generator``)
comes from the collector's own generator, seeded by ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tensordict import TensorDict
from torch import Tensor

from research.systems import System

#: ``explore(observation [N, obs_dim], generator) -> action [N, action_dim]``: the exploration policy, drawing its
#: noise from the collector's generator.
Explore = Callable[[Tensor, torch.Generator], Tensor]


class SimulatorCollector:
    """Yields ``total_frames / frames_per_batch`` batches of transitions from ``num_envs`` copies of ``physics``.

    Args:
        physics: the system and its variant (fixed values, per-episode draws, noise).
        explore: ``(observation [num_envs, obs_dim], generator) -> action [num_envs, action_dim]`` after the
            warm-up (called without grad).
        num_envs: systems stepped together.
        frames_per_batch: transitions per batch (a multiple of ``num_envs``).
        total_frames: transitions in all.
        warmup_frames: transitions with uniformly random actions first.
        episode_length: steps after which an episode is truncated and its system reset.
        seed: seeds :attr:`generator`.
    """

    def __init__(self, physics: System, explore: Explore, *, num_envs: int, frames_per_batch: int,
                 total_frames: int, warmup_frames: int, episode_length: int, seed: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if frames_per_batch % num_envs:
            raise ValueError(f"frames_per_batch ({frames_per_batch}) must be a multiple of num_envs ({num_envs})")
        self.physics, self.explore = physics, explore
        self.num_envs, self.steps_per_batch = num_envs, frames_per_batch // num_envs
        self.total_frames, self.warmup_frames, self.episode_length = total_frames, warmup_frames, episode_length
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.features = physics.features
        self.max_action = physics.max_action
        self.frames = 0
        shape = (num_envs,)
        self.params = physics.params(shape, self.generator, self.device, dtype)
        self.state = physics.initial_state(shape, self.generator, self.device, dtype, params=self.params)
        self.episode_step = 0  # every system starts, and so ends, its episodes at the same step
        self.episode_return = torch.zeros(shape, dtype=dtype, device=self.device)

    def __iter__(self) -> Iterator[TensorDict]:
        return self

    def _random_action(self) -> Tensor:
        u = torch.rand((self.num_envs, self.physics.action_dim), generator=self.generator, device=self.device,
                       dtype=self.dtype)
        return (2.0 * u - 1.0) * self.max_action

    def _reset(self) -> None:
        """New episodes: fresh states (and, for ranged parameters, fresh parameters) for every system."""
        shape = (self.num_envs,)
        if self.physics.ranges:
            self.params = self.physics.params(shape, self.generator, self.device, self.dtype)
        self.state = self.physics.initial_state(shape, self.generator, self.device, self.dtype, params=self.params)
        self.episode_step = 0
        self.episode_return = torch.zeros_like(self.episode_return)

    @torch.no_grad()
    def __next__(self) -> TensorDict:
        if self.frames >= self.total_frames:
            raise StopIteration
        n, steps = self.num_envs, self.steps_per_batch
        system = self.physics
        constants = system.constants(self.params, self.features, like=self.state)
        columns: dict[str, list[Tensor]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "done", "return")}
        for _ in range(steps):
            obs, aux = system.observe_for_step(self.state)
            warmup = self.frames < self.warmup_frames
            action = self._random_action() if warmup else self.explore(obs, self.generator)
            noise = system.noise_block((n,), 1, self.generator, self.state, self.features)
            self.state, reward = system.step(self.state, action, constants,
                                             None if noise is None else noise[:, 0, :], aux)
            self.episode_step += 1
            self.episode_return = self.episode_return + reward
            done = self.episode_step >= self.episode_length
            for key, value in zip(columns, (obs, action, system.observe(self.state), reward,
                                            torch.full((n,), done, device=self.device), self.episode_return),
                                  strict=True):
                columns[key].append(value)
            self.frames += n
            if done:
                self._reset()
                constants = system.constants(self.params, self.features, like=self.state)
        obs, action, next_obs = (torch.stack(columns[k], dim=1) for k in ("obs", "action", "next_obs"))
        reward, done, episode_return = (torch.stack(columns[k], dim=1).unsqueeze(-1)
                                        for k in ("reward", "done", "return"))
        batch = (n, steps)
        return TensorDict({
            "observation": obs,
            "action": action,
            "next": TensorDict({"observation": next_obs, "reward": reward, "done": done,
                                "terminated": torch.zeros_like(done), "truncated": done,
                                "episode_reward": episode_return}, batch_size=batch),
        }, batch_size=batch, device=self.device)

    def state_dict(self) -> dict:
        """What the collector carries between batches: its generator, the systems' states and parameters, the
        episode's step and returns, the frames collected (a checkpoint of the run keeps it)."""
        params = None if self.params is None else [p.clone() if isinstance(p, Tensor) else p for p in self.params]
        return {"generator": self.generator.get_state(), "state": self.state.clone(), "params": params,
                "episode_step": self.episode_step, "episode_return": self.episode_return.clone(),
                "frames": self.frames}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.state = state["state"].to(self.device)
        if state["params"] is not None:
            self.params = type(self.params)(*(p.to(self.device) if isinstance(p, Tensor) else p
                                              for p in state["params"]))
        self.episode_step, self.frames = int(state["episode_step"]), int(state["frames"])
        self.episode_return = state["episode_return"].to(self.device)

    def shutdown(self) -> None:
        """Nothing to release (the Collector's interface)."""
