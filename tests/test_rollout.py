"""The fused rollout and TorchRL's env.rollout give the same rewards and the same policy gradients."""

import pytest
import torch

import research.native as native_module
from research.algos.bptt import env_rollout_rewards, horizon_loss
from research.envs import PendulumEnv, PendulumParams, sample_initial_state, sample_params
from research.policies import make_policy
from research.rollout import discounted_sum, fused_rollout, initial_state


@pytest.fixture(autouse=True)
def _torch_paths_only(monkeypatch):
    """These tests are about the torch paths; research.native's C loop has its own (tests/test_native.py)."""
    monkeypatch.setattr(native_module, "ENABLED", False)


def _grads(loss, policy):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_and_env_rollout_gradients_agree(dtype):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    policy = make_policy([32, 32], dtype=dtype)
    th, thdot = sample_initial_state((16,), gen, dtype=dtype)
    params = sample_params((16,), {"g": (8.0, 12.0), "m": (0.8, 1.2)}, generator=gen, dtype=dtype)
    env = PendulumEnv(dtype=dtype, seed=0)

    fused = fused_rollout(policy, initial_state(torch.stack((th, thdot), -1)), params, 50).rewards
    through_env = env_rollout_rewards(env, policy, torch.stack((th, thdot), -1), params, 50)
    assert fused.shape == through_env.shape == (16, 50)
    torch.testing.assert_close(fused, through_env, rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)

    g_fused = _grads(horizon_loss(fused, 0.95), policy)
    g_env = _grads(horizon_loss(through_env, 0.95), policy)
    assert g_fused.abs().max() > 0
    tol = 1e-5 * max(1.0, g_fused.abs().max().item())
    assert (g_fused - g_env).abs().max().item() < tol


def test_truncation_resets_and_counts_steps():
    gen = torch.Generator().manual_seed(0)
    policy = make_policy([8], dtype=torch.float64)
    th, thdot = sample_initial_state((4,), gen, dtype=torch.float64)
    start = initial_state(torch.stack((th, thdot), -1), torch.tensor([0, 5, 8, 9]))
    params = PendulumParams.default((4,), dtype=torch.float64)
    out = fused_rollout(policy, start, params, 3, episode_length=10, generator=gen, keep_trajectory=True)
    # env 3 ends its episode after its 1st step, env 2 after its 2nd; the others keep going
    assert out.truncated.tolist() == [[False] * 3, [False] * 3, [False, True, False], [True, False, False]]
    assert out.state.step_count.tolist() == [3, 8, 1, 2]
    assert out.observations.shape == (4, 3, 3) and out.actions.shape == (4, 3, 1)
    # after a reset, the next observation the policy sees is a fresh state, not the pre-reset next state
    assert not torch.allclose(out.observations[3, 1], out.next_observations[3, 0])
    torch.testing.assert_close(out.observations[0, 1], out.next_observations[0, 0])


def test_discounted_sum_matches_loop():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    assert discounted_sum(rewards, 0.5).item() == pytest.approx(1 + 2 * 0.5 + 3 * 0.25)

