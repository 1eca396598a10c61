"""research.collect.SimulatorCollector: the Collector's batch layout, the physics' transitions, truncation, resets
and per-episode parameter draws, reproducible from its seed."""

from __future__ import annotations

import pytest
import torch

from research.algos.off_policy import TRANSITION_KEYS
from research.collect import SimulatorCollector
from research.envs.physics import observation, pendulum_step
from research.envs.presets import get_physics


def _collector(physics="default", num_envs=2, frames_per_batch=100, total_frames=1000, warmup_frames=200,
               episode_length=50, seed=0, explore=None):
    explore = explore or (lambda obs, gen: torch.full((obs.shape[0], 1), 0.5))
    return SimulatorCollector(get_physics(physics), explore, num_envs=num_envs, frames_per_batch=frames_per_batch,
                              total_frames=total_frames, warmup_frames=warmup_frames,
                              episode_length=episode_length, seed=seed)


def test_batches_have_the_collectors_layout_and_stop_at_total_frames():
    batches = list(_collector())
    assert len(batches) == 10
    batch = batches[0]
    assert batch.batch_size == (2, 50)
    for key in (*TRANSITION_KEYS, ("next", "truncated"), ("next", "episode_reward")):
        assert key in batch.keys(True)
    assert batch["observation"].shape == (2, 50, 3) and batch["action"].shape == (2, 50, 1)
    assert batch["next", "reward"].shape == (2, 50, 1) and batch["next", "done"].dtype == torch.bool
    assert not batch["next", "terminated"].any()


def test_transitions_follow_the_physics_and_episodes_truncate():
    params = get_physics("default").params(())
    for batch in _collector(total_frames=400, warmup_frames=0):
        obs, action, nxt = batch["observation"], batch["action"], batch["next", "observation"]
        th, thdot = torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]
        th2, thdot2, reward = pendulum_step(th, thdot, action.squeeze(-1), params)
        torch.testing.assert_close(nxt, observation(th2, thdot2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["next", "reward"].squeeze(-1), reward, rtol=1e-5, atol=1e-5)
        assert torch.equal(action, torch.full_like(action, 0.5))  # explore, no warm-up
        done = batch["next", "done"].squeeze(-1)
        assert done[:, -1].all() and not done[:, :-1].any()  # 50-step episodes, 50 steps a batch
        returns = batch["next", "episode_reward"].squeeze(-1)
        torch.testing.assert_close(returns[:, -1], batch["next", "reward"].squeeze(-1).sum(-1))


def test_warmup_actions_are_uniform_over_the_torque_range_then_explore_takes_over():
    calls = []
    batches = list(_collector(explore=lambda obs, gen: calls.append(obs.shape) or torch.zeros(obs.shape[0], 1)))
    warm = torch.cat([b["action"].reshape(-1) for b in batches[:2]])
    assert warm.abs().max() <= 2.0 and warm.std() > 0.5 and len(calls) == 8 * 50
    assert torch.equal(torch.cat([b["action"] for b in batches[2:]]), torch.zeros(16, 50, 1))


def test_the_seed_decides_everything():
    def returns(seed):
        return torch.cat([b["next", "reward"] for b in _collector("noisy", seed=seed)])

    assert torch.equal(returns(3), returns(3)) and not torch.equal(returns(3), returns(4))


def test_ranged_parameters_are_drawn_again_for_each_episode():
    collector = _collector("randomized", episode_length=10, frames_per_batch=20)
    first = collector.params.m.clone()
    next(collector)
    assert not torch.equal(first, collector.params.m)
    assert ((collector.params.m >= 0.7) & (collector.params.m <= 1.3)).all()


def test_frames_per_batch_must_be_a_multiple_of_num_envs():
    with pytest.raises(ValueError, match="frames_per_batch"):
        _collector(num_envs=3)
