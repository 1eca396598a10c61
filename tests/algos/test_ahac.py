"""Contact-aware SHAC (research/algos/ahac.py) and the systems' contact test it reads (System.contact)."""

import math

import pytest
import torch

from research import harness
from research.algos.ahac import AHAC, AHACConfig, contact_cuts
from research.algos.shac import SHAC, SHACConfig
from research.config import ConfigError, EnvConfig, EvalConfig
from research.rollout import fused_rollout, initial_state
from research.systems import make
from research.systems.pendulum import get_physics

TINY = dict(num_envs=6, window=8, hidden_sizes=[8], critic_hidden_sizes=[8], critic_iterations=1,
            critic_minibatches=2, eval=EvalConfig(interval_env_steps=10_000, episodes=8))
PHI = math.pi / 4


def step_once(physics_name, th, thdot, torque):
    system = get_physics(physics_name)
    state = torch.tensor([[th, thdot]])
    return system.contact(state, torch.tensor([[torque]]), system.constants(like=state))


def test_pendulum_contact_on_hand_made_wall_states():
    # Hard wall at pi/4: 0.05 rad below it at 5 rad/s, the Euler step (thdot' ~ 5.4, th' ~ pi/4 + 0.22) crosses it;
    # the same state moving away, or far from the wall, does not.
    assert step_once("wall", PHI - 0.05, 5.0, 0.0).tolist() == [True]
    assert step_once("wall", PHI - 0.05, -5.0, 0.0).tolist() == [False]
    assert step_once("wall", 0.0, 1.0, 2.0).tolist() == [False]
    # The other face, phi - 2 pi, crossed downwards.
    assert step_once("wall", PHI - 2 * math.pi + 0.05, -5.0, 0.0).tolist() == [True]
    # Soft wall: contact while the angle penetrates it (the penalty torque acts in this step), not before.
    assert step_once("wall_soft", PHI + 0.1, 0.0, 0.0).tolist() == [True]
    assert step_once("wall_soft", PHI - 0.01, 5.0, 0.0).tolist() == [False]
    assert step_once("wall_soft", PHI - 2 * math.pi - 0.1, 0.0, 0.0).tolist() == [True]
    # No wall: never; the acrobot has no contact; the cart-pole's "contact" is the track limit's penalty.
    assert step_once("default", PHI - 0.05, 5.0, 0.0).tolist() == [False]
    acrobot = make("acrobot")
    assert not acrobot.contact(acrobot.initial_state((4,)), torch.zeros(4, 1)).any()
    cartpole = make("cartpole")
    states = torch.tensor([[0.0, 0, math.pi, 0], [2.5, 0, math.pi, 0], [-2.6, 1, 0, 0]])
    assert cartpole.contact(states, torch.zeros(3, 1)).tolist() == [False, True, True]


def test_hard_wall_contact_is_exactly_where_the_step_reflects():
    system = get_physics("wall")
    gen = torch.Generator().manual_seed(0)
    state = system.initial_state((4096,), generator=gen)
    state[:, 1] = torch.rand(4096, generator=gen) * 16 - 8
    action = torch.rand(4096, 1, generator=gen) * 4 - 2
    constants = system.constants(like=state)
    touched = system.contact(state, action, constants)
    reflected = system.step(state, action, constants)[0]
    free = get_physics("default").step(state, action)[0]
    assert 0 < touched.sum() < 4096
    assert torch.equal(touched, (reflected != free).any(-1))


def test_contact_cuts_end_the_piece_before_or_at_the_contact():
    contact = torch.tensor([[False, False, True, False], [True, False, False, True]])
    assert contact_cuts(contact, "after").tolist() == contact.tolist()
    assert contact_cuts(contact, "before").tolist() == [[False, True, False, False], [False, False, True, False]]


def run_context(config):
    return harness.prepare(config)


def one_update_gradient(cls, config):
    """The actor's loss and gradient of the first update (before any optimiser step) of ``cls``."""
    algo = cls(config, run_context(config))
    captured = {}
    clip = algo.actor_guard.clip

    def record(loss, parameters, max_norm):
        parameters = list(parameters)
        captured["grads"] = [p.grad.clone() for p in parameters]
        return clip(loss, parameters, max_norm)

    algo.actor_guard.clip = record
    metrics = algo.step(1)
    return metrics, captured["grads"]


@pytest.mark.parametrize("cut", ["before", "after"])
def test_without_contact_ahac_is_shac(cut):
    # Default physics: no contact anywhere, so the loss and the actor's gradient are SHAC's.
    shac_metrics, shac_grads = one_update_gradient(SHAC, SHACConfig(**TINY))
    ahac_metrics, ahac_grads = one_update_gradient(AHAC, AHACConfig(cut=cut, **TINY))
    assert ahac_metrics["train/contact_fraction"] == 0 and ahac_metrics["train/cut_fraction"] == 0
    torch.testing.assert_close(ahac_metrics["train/actor_loss"], shac_metrics["train/actor_loss"], rtol=0, atol=0)
    for a, b in zip(ahac_grads, shac_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cut", ["before", "after"])
def test_no_gradient_path_crosses_a_contact(cut):
    # One pendulum rushing into the hard wall: its third step (t = 2) touches it. Gradients of later states reach no
    # action before the contact; before it, everything is connected as usual.
    system = get_physics("wall")
    actions = torch.zeros(6, 1, requires_grad=True)
    calls = iter(range(6))

    def policy(obs):
        return actions[next(calls)].expand(obs.shape[0], 1)

    start = initial_state(torch.tensor([[PHI - 0.75, 6.0]]))
    rollout = fused_rollout(policy, start, system.params((1,)), 6, system=system, keep_trajectory=True,
                            cut_at_contact=cut)
    first = int(rollout.contact[0].nonzero()[0])
    assert first == 2
    # states after the contact step ("after" keeps the one state the contact step reaches differentiable)
    after = rollout.next_observations[0, first + (cut == "after"):].sum()
    grads = torch.autograd.grad(after, actions, allow_unused=True, retain_graph=True)[0]
    assert grads is None or torch.all(grads[:first] == 0)
    before = rollout.next_observations[0, first - 1].sum()  # s_t, reached through smooth steps
    assert torch.all(torch.autograd.grad(before, actions, retain_graph=True)[0][:first] != 0)
    contact_obs = rollout.next_observations[0, first].sum()  # s_{t+1}: through the contact step, only with "after"
    grad_t = torch.autograd.grad(contact_obs, actions, allow_unused=True)[0]
    if cut == "before":
        assert grad_t is None or torch.all(grad_t == 0)
    else:
        assert torch.all(grad_t[: first + 1] != 0)


def test_ahac_on_the_wall_cuts_and_logs_it():
    config = AHACConfig(env=EnvConfig(physics="wall"), **{**TINY, "num_envs": 32, "window": 16})
    algo = AHAC(config, run_context(config))
    metrics = [algo.step(i) for i in range(1, 4)]
    assert any(m["train/contact_fraction"] > 0 for m in metrics)
    for m in metrics:
        assert float(m["train/cut_fraction"]) <= float(m["train/contact_fraction"]) + 1e-9
        assert 1 <= float(m["train/effective_horizon"]) <= 16 and 0 <= float(m["train/saturated"]) <= 1
        assert math.isfinite(float(m["train/actor_loss"]))
    assert any(m["train/effective_horizon"] < 16 for m in metrics)


def test_ahac_resumes_exactly(tmp_path):
    from tests.test_checkpoint import EVERY_ITERATION, check_resume_is_exact

    config = AHACConfig(iterations=4, num_envs=8, window=6, hidden_sizes=[8], critic_hidden_sizes=[8],
                        critic_iterations=2, critic_minibatches=2, env=EnvConfig(episode_length=20, physics="wall"),
                        checkpoint_every_s=EVERY_ITERATION, eval=EvalConfig(interval_env_steps=1000, episodes=8))
    check_resume_is_exact(tmp_path, AHAC, config, "ahac", kills=[3])


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^cut must be 'before' or 'after', got 'middle'$"):
        AHACConfig(cut="middle")
    with pytest.raises(ValueError, match="cut_at_contact must be None, 'before' or 'after'"):
        fused_rollout(lambda o: o[..., :1], initial_state(torch.zeros(1, 2)), get_physics("wall").params((1,)), 2,
                      keep_trajectory=True, cut_at_contact="sideways")
    with pytest.raises(ValueError, match="cut_at_contact needs keep_trajectory=True"):
        fused_rollout(lambda o: o[..., :1], initial_state(torch.zeros(1, 2)), get_physics("wall").params((1,)), 2,
                      cut_at_contact="before")
