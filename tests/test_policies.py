import pytest
import torch
from tensordict import TensorDict

import research
from research.policies import make_actor, make_policy, save_policy


def test_policy_output_is_squashed_into_torque_range():
    policy = make_policy([16, 16])
    obs = torch.randn(100, 3) * 100
    action = policy(obs)
    assert action.shape == (100, 1)
    assert action.abs().max() <= 2.0


def test_actor_shares_the_network():
    policy = make_policy([8])
    actor = make_actor(policy)
    td = actor(TensorDict({"observation": torch.randn(5, 3)}, batch_size=[5]))
    torch.testing.assert_close(td["action"], policy(td["observation"]))


def test_load_policy_roundtrip(tmp_path):
    policy = make_policy([8, 8], activation="relu", dtype=torch.float64)
    save_policy(policy, tmp_path / "policy.pt")
    loaded = research.load_policy(tmp_path / "policy.pt")
    assert isinstance(loaded, torch.nn.Module) and not loaded.training
    obs = torch.randn(7, 3)
    torch.testing.assert_close(loaded(obs), policy(obs.double()).float(), atol=1e-6, rtol=1e-6)
    assert loaded(torch.tensor([1.0, 0.0, 0.0])).shape == (1,)


def test_load_policy_rejects_foreign_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a policy file"):
        research.load_policy(tmp_path / "other.pt")


def test_bad_policy_arguments():
    with pytest.raises(ValueError, match="activation"):
        make_policy([8], activation="sigmoid")
    with pytest.raises(ValueError, match="hidden_sizes"):
        make_policy([])
