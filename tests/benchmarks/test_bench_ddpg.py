"""Question 3: the model-free baseline's two hot loops, built from :mod:`research.algos.ddpg`'s own factories.

- ``ddpg-update``: one gradient step of the trainer (:func:`research.algos.ddpg.update` on a replay sample of 256
  transitions, then the soft target update), with the default [400, 300] networks;
- ``ddpg-collector``: one collector batch of 100 transitions (the trainer's ``frames_per_batch``, one env) with the
  noisy actor: the trainer's :class:`research.collect.SimulatorCollector` (``research``), and TorchRL's Collector on
  our simulator (``simulator``) and on TorchRL's ``GymEnv("Pendulum-v1")`` (``gymnasium``).
"""

from __future__ import annotations

import pytest
import torch
from tensordict.nn import TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer

from research.algos.ddpg import (
    TRANSITION_KEYS,
    DDPGConfig,
    DDPGLosses,
    gaussian_explore,
    make_adam,
    make_critic,
    make_environment,
    make_exploration,
    update,
)
from research.collect import SimulatorCollector
from research.config import EnvConfig
from research.envs.presets import get_physics
from research.harness import SkipGuard
from research.policies import make_actor, make_policy

from .conftest import DEVICES


def _collector(config: DDPGConfig, device: torch.device, init_random_frames: int | None = None) -> Collector:
    """The trainer's collector: its environment and its noisy actor, ``frames_per_batch`` transitions a batch."""
    torch.manual_seed(config.seed)
    env = make_environment(config, device)
    actor = make_actor(make_policy(config.hidden_sizes, config.activation, device=device))
    return Collector(env, TensorDictSequential(actor, make_exploration(config, env, device)),
                     frames_per_batch=config.frames_per_batch, total_frames=-1,
                     init_random_frames=init_random_frames, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_update(measure, smoke, device):
    config = DDPGConfig(device=device)
    device = torch.device(device)
    torch.manual_seed(0)
    policy = make_policy(config.hidden_sizes, config.activation, device=device)
    losses = DDPGLosses(policy, make_critic(config, device, torch.float32).module, config.gamma)
    actor_optimizer = make_adam(list(policy.parameters()), config.actor_lr, device)
    critic_optimizer = make_adam(list(losses.critic.parameters()), config.critic_lr, device)
    parameters = [*policy.parameters(), *losses.critic.parameters()]
    guard = SkipGuard(config.max_consecutive_skips)

    # A replay buffer of random-action transitions, as after the trainer's warm-up (smaller: sampling cost does not
    # depend on the fill level).
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size, device=device), batch_size=config.batch_size)
    collector = _collector(config, device, init_random_frames=10_000)
    for _, batch in zip(range(3 if smoke else 20), collector, strict=False):
        buffer.extend(batch.reshape(-1).select(*TRANSITION_KEYS))
    collector.shutdown()

    def step() -> torch.Tensor:
        stats = update(losses, buffer.sample(), actor_optimizer, critic_optimizer, guard, parameters)
        losses.soft_update(config.tau)
        return stats

    stats = measure(step, question="ddpg-update", case="ddpg-update", batch=config.batch_size, horizon=1,
                    device=str(device), updates=1, rounds=3 if smoke else 200, warmup_rounds=1 if smoke else 20)
    assert torch.isfinite(stats).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["research", "simulator", "gymnasium"])
def test_collector_batch(measure, smoke, backend, device):
    if backend == "gymnasium":
        pytest.importorskip("gymnasium")
        if device != "cpu":
            pytest.skip("Gymnasium steps on the CPU")
    if backend == "research":  # the trainer's own collector on our simulator
        config = DDPGConfig(device=device)
        torch.manual_seed(config.seed)
        policy = make_policy(config.hidden_sizes, config.activation, device=device)
        collector = SimulatorCollector(get_physics("default"), gaussian_explore(policy, config, 2.0),
                                       num_envs=config.num_envs, frames_per_batch=config.frames_per_batch,
                                       total_frames=10**9, warmup_frames=0,
                                       episode_length=config.env.episode_length, seed=config.seed, device=device)
    else:
        config = DDPGConfig(device=device, env=EnvConfig(backend=backend))
        collector = _collector(config, torch.device(device))
    batches = iter(collector)
    try:
        batch = measure(lambda: next(batches), question="ddpg-collector", case=backend, batch=config.num_envs,
                        horizon=config.frames_per_batch, device=device, env_steps=config.frames_per_batch,
                        rounds=3 if smoke else 30, warmup_rounds=1 if smoke else 3)
    finally:
        collector.shutdown()
    assert batch.numel() == config.frames_per_batch
