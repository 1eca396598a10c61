"""Tests of the stateless TorchRL environment :class:`research.envs.pendulum.PendulumEnv`.

Specs, batch shapes, seeding, Gymnasium parity through ``env.step``, gradients through ``env.rollout``, input
validation, domain randomisation, float64 and CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torch.func import functional_call
from torchrl.envs import Compose, DoubleToFloat, StepCounter, TransformedEnv, check_env_specs, step_mdp

from research.envs.pendulum import PendulumEnv
from research.envs.physics import DEFAULT_PARAMS, PendulumParams, angle_normalize, pendulum_step


class FixedActions:
    """A policy that plays a fixed action sequence ``[*B, T, 1]``, one step per call."""

    def __init__(self, actions: torch.Tensor) -> None:
        self.actions = actions
        self.t = 0

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        td.set("action", self.actions[..., self.t, :])
        self.t += 1
        return td


def random_actions(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Actions ``~ U[-3, 3]`` of shape ``[*shape, 1]``, so the torque clip at 2 is hit."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((*shape, 1), generator=gen, dtype=dtype) * 2.0 - 1.0) * 3.0


def assert_observation_consistent(td: TensorDictBase) -> None:
    expected = torch.stack((td["th"].cos(), td["th"].sin(), td["thdot"]), dim=-1)
    torch.testing.assert_close(td["observation"], expected)


# ---------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    "make_env",
    [
        pytest.param(lambda: PendulumEnv(seed=0), id="default"),
        pytest.param(lambda: PendulumEnv(seed=0, batch_size=[4, 3]), id="batch_4x3"),
        pytest.param(lambda: PendulumEnv(seed=0, dtype=torch.float64), id="float64"),
        pytest.param(lambda: PendulumEnv(seed=0, batch_size=[8], param_ranges={"g": (8.0, 12.0)}), id="randomised"),
        pytest.param(
            lambda: TransformedEnv(
                PendulumEnv(seed=0, dtype=torch.float64, batch_size=[5]), Compose(StepCounter(200), DoubleToFloat())
            ),
            id="step_counter_double_to_float",
        ),
    ],
)
def test_check_env_specs(make_env):
    env = make_env()
    check_env_specs(env, seed=0)
    rollout = env.rollout(3)
    assert rollout.batch_size == (*env.batch_size, 3)
    assert rollout["next", "reward"].shape == (*env.batch_size, 3, 1)
    assert_observation_consistent(rollout["next"].select("th", "thdot", "observation"))


def test_transformed_float64_env_emits_float32():
    env = TransformedEnv(PendulumEnv(seed=0, dtype=torch.float64), Compose(StepCounter(200), DoubleToFloat()))
    rollout = env.rollout(4)
    assert rollout["next", "observation"].dtype == torch.float32
    assert rollout["next", "reward"].dtype == torch.float32
    assert rollout["next", "step_count"].flatten().tolist() == [1, 2, 3, 4]


def test_step_counter_truncates_at_200_steps():
    env = TransformedEnv(PendulumEnv(seed=0, batch_size=[5]), StepCounter(200))
    rollout = env.rollout(250)  # stops at the first done
    assert rollout.batch_size == (5, 200)
    truncated = rollout["next", "truncated"].squeeze(-1)
    assert truncated[:, -1].all() and not truncated[:, :-1].any()
    assert rollout["next", "done"].squeeze(-1)[:, -1].all()
    assert not rollout["next", "terminated"].any()  # the pendulum never terminates by itself

    rollout = env.rollout(450, break_when_any_done=False)  # auto-resets after each truncation
    assert rollout["next", "truncated"].squeeze(-1)[0].nonzero().flatten().tolist() == [199, 399]
    assert rollout["step_count"][0, [0, 199, 200, 399, 400]].flatten().tolist() == [0, 199, 0, 199, 0]


# ---------------------------------------------------------------------------------------------- keys and shapes
@pytest.mark.parametrize("batch", [(), (7,), (4, 3), (2, 1, 3)])
def test_reset_step_rollout_any_batch_shape(batch):
    env = PendulumEnv(seed=0)
    td = env.reset(env.gen_params(batch_size=batch))
    assert td.batch_size == batch
    assert td["th"].shape == td["thdot"].shape == batch
    assert td["observation"].shape == (*batch, 3)
    for key in ("done", "terminated", "truncated"):
        assert td[key].shape == (*batch, 1) and td[key].dtype == torch.bool and not td[key].any()
    assert_observation_consistent(td)
    assert td["th"].abs().max() <= math.pi and td["thdot"].abs().max() <= 1.0  # Gymnasium's reset distribution

    td["action"] = random_actions(batch)
    out = env.step(td)["next"]
    assert out.batch_size == batch
    assert out["reward"].shape == (*batch, 1)
    for key in ("done", "terminated", "truncated"):
        assert out[key].shape == (*batch, 1) and not out[key].any()
    assert_observation_consistent(out)
    expected = pendulum_step(td["th"], td["thdot"], td["action"].squeeze(-1), PendulumParams.default())
    torch.testing.assert_close((out["th"], out["thdot"], out["reward"].squeeze(-1)), expected)

    rollout = env.rollout(6, tensordict=env.reset(env.gen_params(batch_size=batch)), auto_reset=False)
    assert rollout.batch_size == (*batch, 6)
    assert rollout["next", "reward"].shape == (*batch, 6, 1)
    assert_observation_consistent(rollout)
    assert_observation_consistent(rollout["next"])


def test_default_batch_size_and_reset_from_an_empty_tensordict():
    env = PendulumEnv(seed=0, batch_size=[4, 3])
    assert env.reset().batch_size == (4, 3)
    assert env.action_spec.shape == (4, 3, 1)
    env = PendulumEnv(seed=0)  # an env of batch_size [] accepts any batch shape
    td = env.reset(TensorDict({}, batch_size=[5]))  # a batch shape without params: defaults are generated
    assert td.batch_size == (5,) and td["params", "g"].shape == (5,)
    assert torch.all(td["params", "g"] == DEFAULT_PARAMS["g"])


def test_reset_keeps_given_params_and_draws_a_new_state():
    env = PendulumEnv(seed=0)
    td = env.reset(env.gen_params(batch_size=[6], g=9.81, m=0.7))
    assert torch.allclose(td["params", "g"], torch.tensor(9.81))
    assert torch.allclose(td["params", "m"], torch.tensor(0.7))
    again = env.reset(td.clone())
    assert torch.equal(again["params", "g"], td["params", "g"])
    assert not torch.equal(again["th"], td["th"])


def test_batched_rollout_equals_envs_stepped_one_at_a_time():
    env = PendulumEnv(seed=0, dtype=torch.float64)
    steps = 10
    td0 = env.reset(env.gen_params(batch_size=[4, 3]))
    actions = random_actions((4, 3, steps), dtype=torch.float64)
    batched = env.rollout(steps, FixedActions(actions), tensordict=td0.clone(), auto_reset=False)
    assert batched.batch_size == (4, 3, steps)

    for i in range(4):
        for j in range(3):
            single = env.rollout(steps, FixedActions(actions[i, j]), tensordict=td0[i, j].clone(), auto_reset=False)
            assert single.batch_size == (steps,)
            for key in (("next", "th"), ("next", "thdot"), ("next", "reward"), ("next", "observation"), "action"):
                torch.testing.assert_close(batched[i, j][key], single[key], rtol=1e-12, atol=1e-12)

    # The same trajectory by hand, through env.step and step_mdp.
    td = td0.clone()
    for t in range(steps):
        td["action"] = actions[:, :, t]
        td = env.step(td)
        torch.testing.assert_close(td["next", "reward"], batched[:, :, t]["next", "reward"], rtol=0, atol=0)
        td = step_mdp(td)
    torch.testing.assert_close(td["th"], batched[:, :, -1]["next", "th"], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- seeding
def test_same_seed_same_reset_different_seed_different_reset():
    first = PendulumEnv(seed=123, batch_size=[16]).reset()
    second = PendulumEnv(seed=123, batch_size=[16]).reset()
    other = PendulumEnv(seed=124, batch_size=[16]).reset()
    assert torch.equal(first["th"], second["th"]) and torch.equal(first["thdot"], second["thdot"])
    assert not torch.equal(first["th"], other["th"])

    env = PendulumEnv(seed=5, batch_size=[16])
    draws = [env.reset()["th"] for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])  # the generator advances between resets
    env.set_seed(5)
    assert torch.equal(env.reset()["th"], draws[0])  # reseeding replays the draws


def test_seeded_env_leaves_the_global_rng_alone():
    env = PendulumEnv(seed=0, batch_size=[8], param_ranges={"m": (0.5, 1.5)})
    state = torch.random.get_rng_state()
    env.reset()
    env.gen_params(batch_size=[8])
    env.set_seed(3)
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------- Gymnasium parity
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_env_step_matches_gymnasium(gymnasium_reference, dtype, tol):
    """All 256 x 200 Gymnasium transitions as a single [256, 200] batch through ``env.step``."""
    ref = {key: torch.as_tensor(value).to(dtype) for key, value in gymnasium_reference.items()}
    env = PendulumEnv(seed=0, dtype=dtype)
    td = env.gen_params(batch_size=[256, 200])
    td.update({"th": ref["th"][:, :-1], "thdot": ref["thdot"][:, :-1], "action": ref["action"].unsqueeze(-1)})
    out = env.step(td)["next"]
    assert out["reward"].shape == (256, 200, 1) and out["reward"].dtype == dtype
    assert angle_normalize(out["th"].double() - ref["th"][:, 1:].double()).abs().max() < tol
    assert (out["thdot"].double() - ref["thdot"][:, 1:].double()).abs().max() < tol
    assert (out["reward"].squeeze(-1).double() - ref["reward"].double()).abs().max() < tol
    obs = torch.stack((ref["th"][:, 1:].cos(), ref["th"][:, 1:].sin(), ref["thdot"][:, 1:]), dim=-1)
    assert (out["observation"].double() - obs.double()).abs().max() < tol


# ---------------------------------------------------------------------------------------------- gradients
def test_gradcheck_rollout_return_through_env_wrt_policy_parameters():
    torch.manual_seed(0)
    env = PendulumEnv(seed=0, dtype=torch.float64)
    policy = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    names = [name for name, _ in policy.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_() for p in policy.parameters())
    td0 = env.reset(env.gen_params(batch_size=[3]))

    def episode_return(*weights: torch.Tensor) -> torch.Tensor:
        def act(td: TensorDictBase) -> TensorDictBase:
            # 2 tanh(.) stays strictly inside the torque range, away from the clip's kink.
            return td.set(
                "action",
                2.0 * torch.tanh(functional_call(policy, dict(zip(names, weights, strict=True)), td["observation"])),
            )

        rollout = env.rollout(20, act, tensordict=td0.clone(), auto_reset=False)
        assert rollout["next", "thdot"].abs().max() < 7.5  # the speed clip stays inactive
        return rollout["next", "reward"].sum()

    assert torch.autograd.gradcheck(episode_return, weights)


def test_gradcheck_one_env_step_wrt_state_action_and_physical_params():
    env = PendulumEnv(seed=0, dtype=torch.float64)
    td0 = env.gen_params(batch_size=[4])

    def step(th, thdot, action, g, m, length):
        td = td0.clone()
        td.update({"th": th, "thdot": thdot, "action": action})
        td["params"].update({"g": g, "m": m, "l": length})
        out = env.step(td)["next"]
        return out["th"], out["thdot"], out["reward"], out["observation"]

    f64 = dict(dtype=torch.float64, requires_grad=True)
    inputs = (
        torch.tensor([0.3, -1.2, 2.5, 4.0], **f64),
        torch.tensor([1.0, -2.0, 0.5, 3.0], **f64),
        torch.tensor([[0.5], [-1.5], [1.9], [0.0]], **f64),
        torch.tensor([9.0, 10.0, 11.0, 12.0], **f64),
        torch.tensor([0.8, 1.0, 1.1, 1.2], **f64),
        torch.tensor([1.2, 1.0, 0.9, 0.8], **f64),
    )
    assert torch.autograd.gradcheck(step, inputs)


# ---------------------------------------------------------------------------------------------- validation
@pytest.fixture
def batch_td() -> TensorDict:
    env = PendulumEnv(seed=0)
    return env.reset(env.gen_params(batch_size=[4, 3]))


@pytest.mark.parametrize("shape", [(4, 3, 2), (4, 3), (4, 3, 3, 1), (4, 3, 1, 1)])
def test_step_rejects_action_of_wrong_shape(batch_td, shape):
    batch_td.set("action", torch.zeros(shape))
    with pytest.raises(ValueError, match="action"):
        PendulumEnv(seed=0).step(batch_td)


def test_step_rejects_action_batch_that_does_not_match_the_state():
    env = PendulumEnv(seed=0)
    state = env.reset(env.gen_params(batch_size=[4]))
    td = TensorDict({"th": state["th"], "thdot": state["thdot"], "params": state["params"]}, batch_size=[])
    td["action"] = torch.zeros(3, 1)  # 3 actions for 4 pendulums
    with pytest.raises(ValueError, match=r"action has batch shape \[3\]"):
        env.step(td)


@pytest.mark.parametrize("name", ["dt", "m", "l", "max_torque"])
@pytest.mark.parametrize("value", [0.0, -0.5])
def test_step_and_reset_reject_non_positive_params(batch_td, name, value):
    env = PendulumEnv(seed=0)
    batch_td["action"] = torch.zeros(4, 3, 1)
    batch_td["params", name][2, 1] = value
    with pytest.raises(ValueError, match=rf"params\.{name} must be > 0"):
        env.step(batch_td)
    with pytest.raises(ValueError, match=rf"params\.{name} must be > 0"):
        env.reset(batch_td.select("params"))
    with pytest.raises(ValueError, match=rf"params\.{name} must be > 0"):
        env.gen_params(batch_size=[2], **{name: value})


@pytest.mark.parametrize("name", list(DEFAULT_PARAMS))
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_step_rejects_non_finite_params(batch_td, name, value):
    batch_td["action"] = torch.zeros(4, 3, 1)
    batch_td["params", name][0, 0] = value
    if name == "wall_angle" and value == math.inf:
        PendulumEnv(seed=0).step(batch_td)  # +inf is the default: no wall
        return
    with pytest.raises(ValueError, match=rf"params\.{name} contains NaN or inf"):
        PendulumEnv(seed=0).step(batch_td)


def test_unknown_parameter_names_are_rejected():
    env = PendulumEnv(seed=0)
    with pytest.raises(ValueError, match="unknown physical parameter.*'gravity'"):
        env.gen_params(batch_size=[2], gravity=9.81)
    with pytest.raises(ValueError, match="unknown physical parameter.*'mass'"):
        PendulumEnv(seed=0, param_ranges={"mass": (0.5, 1.5)}).gen_params(batch_size=[2])


def test_unsupported_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        PendulumEnv(dtype=torch.float16)


def test_non_finite_actions_saturate_or_propagate(batch_td):
    """Documented behaviour: +-inf acts like +-max_torque; NaN flows into state, observation and reward."""
    env = PendulumEnv(seed=0)
    inf = batch_td.clone().set("action", torch.tensor([math.inf, -math.inf, 1.0]).expand(4, 3).unsqueeze(-1))
    sat = batch_td.clone().set("action", torch.tensor([2.0, -2.0, 1.0]).expand(4, 3).unsqueeze(-1))
    out_inf, out_sat = env.step(inf)["next"], env.step(sat)["next"]
    for key in ("th", "thdot", "reward", "observation"):
        assert torch.isfinite(out_inf[key]).all()
        assert torch.equal(out_inf[key], out_sat[key])

    nan = batch_td.clone().set("action", torch.full((4, 3, 1), math.nan))
    out_nan = env.step(nan)["next"]  # no error: checking actions would cost a host sync every step
    for key in ("th", "thdot", "reward"):
        assert torch.isnan(out_nan[key]).all()
    assert torch.isnan(out_nan["observation"]).all()


def test_validate_false_gives_the_same_transition(batch_td):
    batch_td["action"] = random_actions((4, 3))
    checked = PendulumEnv(seed=0).step(batch_td.clone())["next"]
    unchecked = PendulumEnv(seed=0, validate=False).step(batch_td.clone())["next"]
    assert (checked == unchecked).all()


# ---------------------------------------------------------------------------------------------- domain randomisation
def test_gen_params_domain_randomisation():
    env = PendulumEnv(seed=0, param_ranges={"g": (8.0, 12.0)})
    params = env.gen_params(batch_size=[64])["params"]
    g = params["g"]
    assert g.shape == (64,)
    assert g.min() >= 8.0 and g.max() <= 12.0
    assert g.std() > 0.5 and g.unique().numel() == 64
    for name in ("m", "l", "dt", "max_speed", "max_torque"):
        assert torch.all(params[name] == DEFAULT_PARAMS[name])
    assert torch.allclose(env.gen_params(batch_size=[64], g=9.81)["params", "g"], torch.tensor(9.81))
    assert not torch.equal(env.gen_params(batch_size=[64])["params", "g"], g)  # a fresh draw each call


def test_mixed_gravity_batch_steps_each_env_with_its_own_g():
    env = PendulumEnv(seed=0, dtype=torch.float64, param_ranges={"g": (8.0, 12.0)})
    td = env.reset(env.gen_params(batch_size=[16]))
    td["th"] = torch.linspace(0.3, 2.8, 16, dtype=torch.float64)  # sin(th) > 0.29: gravity matters in every env
    td["action"] = random_actions((16,), dtype=torch.float64)
    batched = env.step(td.clone())["next"]
    for i in range(16):
        single = env.step(td[i].clone())["next"]
        for key in ("th", "thdot", "reward"):
            torch.testing.assert_close(batched[key][i], single[key], rtol=1e-12, atol=1e-12)

    default_g = td.clone()
    default_g["params", "g"] = torch.full((16,), DEFAULT_PARAMS["g"], dtype=torch.float64)
    unclipped = batched["thdot"].abs() < DEFAULT_PARAMS["max_speed"]
    assert unclipped.any()
    assert (batched["thdot"] != env.step(default_g)["next", "thdot"])[unclipped].all()


# ---------------------------------------------------------------------------------------------- dtype and device
def test_float64_env_outputs_float64():
    env = PendulumEnv(seed=0, dtype=torch.float64, batch_size=[3])
    assert env.action_spec.dtype == torch.float64
    rollout = env.rollout(5)
    for key, value in rollout.items(include_nested=True, leaves_only=True):
        name = key if isinstance(key, str) else key[-1]
        expected = torch.bool if name in ("done", "terminated", "truncated") else torch.float64
        assert value.dtype == expected, key
    assert rollout.device == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cuda_rollout_matches_cpu(dtype, tol):
    steps = 20  # short enough that CPU and GPU rounding differences cannot grow chaotically
    cpu_env = PendulumEnv(seed=0, dtype=dtype, param_ranges={"g": (8.0, 12.0)})
    cuda_env = PendulumEnv(device="cuda", seed=0, dtype=dtype)
    td = cpu_env.reset(cpu_env.gen_params(batch_size=[64]))
    actions = random_actions((64, steps), dtype=dtype)
    on_cpu = cpu_env.rollout(steps, FixedActions(actions), tensordict=td.clone(), auto_reset=False)
    on_cuda = cuda_env.rollout(steps, FixedActions(actions.cuda()), tensordict=td.to("cuda"), auto_reset=False)
    assert on_cuda.device.type == "cuda" and on_cuda["next", "reward"].device.type == "cuda"
    assert on_cuda["next", "reward"].dtype == dtype
    for key in (("next", "th"), ("next", "thdot"), ("next", "reward")):
        torch.testing.assert_close(on_cuda[key].cpu(), on_cpu[key], rtol=tol, atol=tol)
    assert cuda_env.reset(cuda_env.gen_params(batch_size=[4]))["th"].device.type == "cuda"
