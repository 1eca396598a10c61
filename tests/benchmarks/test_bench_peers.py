"""Peers in other frameworks, at our shapes: gymnax (JAX) for simulation and BPTT, Stable-Baselines3 for DDPG.

They need the optional ``peers`` extra (``pip install -e ".[peers]"``: ``jax[cpu]``, ``gymnax``, ``six``,
``stable-baselines3``); without it every case here skips (``make test`` and CI do not install it). Each case records
the same ``extra_info`` as ours, so ``scripts/bench_report.py`` prints our speed-up over each peer in the same table:

- ``simulate`` / ``gymnax``: gymnax's ``Pendulum-v1`` (Gymnasium's physics) at B = 64 and 4096, H = 100, the
  3-64-64-1 tanh policy with our ``2 tanh`` squash and the same weights as our ``fused`` case, as gymnax is meant
  to be run: ``jax.jit`` of ``lax.scan`` over ``jax.vmap(env.step)`` (with its per-step keys and auto-reset);
- ``bptt`` / ``gymnax``: one BPTT iteration at B = 32 and 1024 on the 3-64-64-64-1 policy: ``vmap(env.reset)``,
  the rollout of H = 100 steps through ``env.with_transition_gradients()`` (gymnax otherwise stops the gradient at
  every transition), ``jax.value_and_grad`` of ``-mean(reward)`` and a plain SGD step (ours also clips and runs
  Adam: a few microseconds on 8.6k parameters), all in one ``jax.jit``;
- ``simulate-cartpole`` and ``simulate-acrobot`` / ``gymnax``: gymnax's ``CartPole-v1`` and ``Acrobot-v1``
  (Gymnasium's physics, discrete actions: a force of -10 or +10 N; an elbow torque of -1, 0 or +1) at B = 64 and
  4096, the systems' horizon (200 steps), as the pendulum peer: ``jax.jit`` of ``lax.scan`` over
  ``jax.vmap(env.step)`` (per-step keys, auto-reset) with the ``obs``-64-64-1 tanh policy in the loop, its squashed
  output in [-1, 1] picking the action; against ``test_bench_systems.py``'s cases of the same question;
- ``ddpg-update`` / ``sb3``: one ``DDPG.train(gradient_steps=1)`` of Stable-Baselines3 with rl-baselines3-zoo's
  Pendulum-v1 recipe ([400, 300], batch 256, lr 1e-3, gamma 0.98) on a replay buffer of random transitions;
- ``ddpg-run`` / ``research`` and ``sb3``: the whole zoo-recipe run, 20k env steps (10k random warm-up, then one
  update per step), ours through :func:`research.train.train` and SB3's ``DDPG.learn``; minutes each, so only with
  ``BENCH_FULL=1`` (``make test`` runs both on 300 steps). ``return_mean`` on our evaluator is recorded beside.

JAX's threads follow ``BENCH_THREADS``: with one thread ``XLA_FLAGS`` turns off XLA's multi-threaded Eigen (set
before jax is first imported, here), otherwise XLA uses every core as torch does. Timing blocks on JAX's result
(``block_until_ready``) inside the timed call.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pytest
import torch
from torch import nn

from research.envs import PendulumParams, sample_initial_state
from research.policies import make_policy
from research.rollout import simulate
from research.systems import SYSTEMS

from .conftest import BPTT_HIDDEN, SIM_HIDDEN, bench_threads

#: One XLA CPU thread (matches ``BENCH_THREADS=1``); the flags must be set before jax is imported.
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
SIM_BATCHES = [64, 4096]
BPTT_BATCHES = [32, 1024]
HORIZON = 100
#: Our systems' gymnax peers (``test_bench_systems.py`` measures ours), Gymnasium's discrete-action originals.
GYMNAX_SYSTEMS = {"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1"}
LR = 2e-3
FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
#: rl-baselines3-zoo hyperparams/ddpg.yml, Pendulum-v1 (docs/protocol.md).
ZOO_DDPG = dict(gamma=0.98, buffer_size=200_000, learning_starts=10_000, learning_rate=1e-3, train_freq=1,
                gradient_steps=1, batch_size=256, policy_kwargs=dict(net_arch=[400, 300]))
ZOO_STEPS = 20_000
ZOO_NOISE_STD = 0.1


def _configure_xla() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if bench_threads() == 1 and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()


_configure_xla()


def _versions(*packages: str) -> str:
    """``"gymnax 1.0.1, jax 0.10.2"``: what a peer case ran on (recorded as ``extra_info["peer"]``)."""
    out = []
    for name in packages:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (version unknown)")
    return ", ".join(out)


def _jax():
    jax = pytest.importorskip("jax", reason="the peers extra (pip install -e '.[peers]') is not installed")
    pytest.importorskip("six", reason="gymnax 1.0 imports six without declaring it (the peers extra installs it)")
    gymnax = pytest.importorskip("gymnax", reason="the peers extra (pip install -e '.[peers]') is not installed")
    return jax, gymnax


def _jax_weights(policy: nn.Module) -> list:
    """The ``SquashedMLP``'s layers as ``[(W [in, out], b [out]), ...]`` JAX arrays (the same numbers)."""
    import jax.numpy as jnp

    linears = [m for m in policy.net if isinstance(m, nn.Linear)]
    return [(jnp.asarray(m.weight.detach().cpu().numpy().T), jnp.asarray(m.bias.detach().cpu().numpy()))
            for m in linears]


def _jax_policy(weights: list, obs, max_torque: float = 2.0):
    """Our ``SquashedMLP`` forward in JAX: tanh hidden layers, then ``max_torque * tanh``."""
    import jax.numpy as jnp

    h = obs
    for w, b in weights[:-1]:
        h = jnp.tanh(h @ w + b)
    w, b = weights[-1]
    return max_torque * jnp.tanh(h @ w + b)


# ---------------------------------------------------------------------------------------------------------- gymnax
@pytest.mark.parametrize("batch", SIM_BATCHES)
def test_gymnax_simulate(measure, smoke, benchmark, batch):
    jax, gymnax = _jax()
    import jax.numpy as jnp
    from gymnax.environments.classic_control.pendulum import EnvState

    horizon = 2 if smoke else HORIZON
    env, env_params = gymnax.make("Pendulum-v1")
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    torch.manual_seed(0)  # the fused case's policy and start states
    policy = make_policy(SIM_HIDDEN)
    th, thdot = sample_initial_state((batch,), torch.Generator().manual_seed(0))
    weights = _jax_weights(policy)
    start = EnvState(theta=jnp.asarray(th.numpy()), theta_dot=jnp.asarray(thdot.numpy()),
                     last_u=jnp.zeros(batch), time=jnp.zeros(batch, dtype=jnp.int32))

    @jax.jit
    def rollout(weights, state, key):
        def body(carry, key):
            state, obs = carry
            action = _jax_policy(weights, obs)
            obs, state, reward, *_ = step(jax.random.split(key, batch), state, action, env_params)
            return (state, obs), reward

        obs = jax.vmap(env.get_obs)(state)
        (state, _), rewards = jax.lax.scan(body, (state, obs), jax.random.split(key, horizon))
        return rewards.sum(0), state

    key = jax.random.PRNGKey(0)
    benchmark.extra_info["peer"] = _versions("gymnax", "jax")
    returns, _ = measure(lambda: jax.block_until_ready(rollout(weights, start, key)), question="simulate",
                         case="gymnax", batch=batch, horizon=horizon, device="cpu", env_steps=batch * horizon,
                         rounds=3 if batch * horizon >= 1_000_000 else 10)
    # the same physics and policy from the same states: the same returns as ours (float32 rounding only)
    ours = simulate(policy, torch.stack((th, thdot), -1), PendulumParams.default((batch,)), horizon).returns
    np.testing.assert_allclose(np.asarray(returns), ours.numpy(), rtol=1e-3, atol=1e-2 * horizon)


@pytest.mark.parametrize("batch", BPTT_BATCHES)
def test_gymnax_bptt(measure, smoke, benchmark, batch):
    jax, gymnax = _jax()
    import jax.numpy as jnp

    horizon = 3 if smoke else HORIZON
    env, env_params = gymnax.make("Pendulum-v1")
    env = env.with_transition_gradients()  # gymnax 1.0: without it every transition stops the gradient
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    torch.manual_seed(0)
    state = {"weights": _jax_weights(make_policy(BPTT_HIDDEN)), "key": jax.random.PRNGKey(0)}

    def loss(weights, key):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = reset(jax.random.split(key_reset, batch), env_params)

        def body(carry, key):
            obs, env_state = carry
            obs, env_state, reward, *_ = step(jax.random.split(key, batch), env_state, _jax_policy(weights, obs),
                                              env_params)
            return (obs, env_state), reward

        _, rewards = jax.lax.scan(body, (obs, env_state), jax.random.split(key_steps, horizon))
        return -rewards.mean()

    @jax.jit
    def iteration(weights, key):
        key, sub = jax.random.split(key)
        value, grads = jax.value_and_grad(loss)(weights, sub)
        weights = jax.tree_util.tree_map(lambda p, g: p - LR * g, weights, grads)
        return weights, key, value, grads

    def run():
        state["weights"], state["key"], value, grads = jax.block_until_ready(iteration(state["weights"], state["key"]))
        return value, grads

    benchmark.extra_info["peer"] = _versions("gymnax", "jax")
    value, grads = measure(run, question="bptt", case="gymnax", batch=batch, horizon=horizon, device="cpu",
                           env_steps=batch * horizon, rounds=10 if batch <= 32 else 5)
    assert np.isfinite(float(value))
    norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads))))
    assert np.isfinite(norm) and norm > 0  # the gradient passes the transitions


@pytest.mark.parametrize("batch", SIM_BATCHES)
@pytest.mark.parametrize("name", list(GYMNAX_SYSTEMS))
def test_gymnax_system_simulate(measure, smoke, benchmark, name, batch):
    jax, gymnax = _jax()
    import jax.numpy as jnp

    horizon = 2 if smoke else SYSTEMS[name].horizon if name in SYSTEMS else 200
    env, env_params = gymnax.make(GYMNAX_SYSTEMS[name])
    actions = env.num_actions  # CartPole: 0 -> -10 N, 1 -> +10 N; Acrobot: 0, 1, 2 -> torque -1, 0, +1
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    torch.manual_seed(0)
    weights = _jax_weights(make_policy(SIM_HIDDEN, max_torque=1.0, obs_dim=env.obs_shape[0], act_dim=1))
    obs, start = reset(jax.random.split(jax.random.PRNGKey(0), batch), env_params)

    @jax.jit
    def rollout(weights, state, obs, key):
        def body(carry, key):
            state, obs = carry
            u = _jax_policy(weights, obs, 1.0)[:, 0]  # in [-1, 1]: the policy's output picks the discrete action
            action = jnp.clip(jnp.floor((u + 1.0) * 0.5 * actions), 0, actions - 1).astype(jnp.int32)
            obs, state, reward, *_ = step(jax.random.split(key, batch), state, action, env_params)
            return (state, obs), reward

        (state, _), rewards = jax.lax.scan(body, (state, obs), jax.random.split(key, horizon))
        return rewards.sum(0), state

    key = jax.random.PRNGKey(1)
    benchmark.extra_info["peer"] = _versions("gymnax", "jax")
    returns, _ = measure(lambda: jax.block_until_ready(rollout(weights, start, obs, key)), question=f"simulate-{name}",
                         case="gymnax", batch=batch, horizon=horizon, device="cpu", env_steps=batch * horizon,
                         rounds=3 if batch * horizon >= 1_000_000 else 10)
    assert returns.shape == (batch,) and np.isfinite(np.asarray(returns)).all()


# ---------------------------------------------------------------------------------------------- Stable-Baselines3
def _sb3_ddpg(learning_starts: int, seed: int = 0):
    """SB3's DDPG with the zoo recipe on Gymnasium's Pendulum-v1 (CPU, Gaussian action noise 0.1)."""
    sb3 = pytest.importorskip("stable_baselines3",
                              reason="the peers extra (pip install -e '.[peers]') is not installed")
    gymnasium = pytest.importorskip("gymnasium")
    from stable_baselines3.common.noise import NormalActionNoise

    noise = NormalActionNoise(mean=np.zeros(1), sigma=ZOO_NOISE_STD * np.ones(1))
    recipe = {**ZOO_DDPG, "learning_starts": learning_starts}
    model = sb3.DDPG("MlpPolicy", gymnasium.make("Pendulum-v1"), action_noise=noise, seed=seed, device="cpu",
                     verbose=0, **recipe)
    return model


def _sb3_policy(model):
    """SB3's deterministic actor as ``observation -> torque`` (its tanh output scaled to [-2, 2])."""
    high = float(model.action_space.high[0])

    def act(obs: torch.Tensor) -> torch.Tensor:
        return high * model.actor(obs)

    return act


def test_sb3_ddpg_update(measure, smoke, benchmark):
    model = _sb3_ddpg(learning_starts=10_000)
    model.learn(total_timesteps=300 if smoke else 2_000)  # random warm-up transitions only: no update yet
    assert model.replay_buffer.size() >= model.batch_size

    def step():
        model.train(gradient_steps=1, batch_size=model.batch_size)

    benchmark.extra_info["peer"] = _versions("stable-baselines3")
    measure(step, question="ddpg-update", case="sb3", batch=model.batch_size, horizon=1, device="cpu", updates=1,
            rounds=3 if smoke else 200, warmup_rounds=1 if smoke else 20)
    assert all(torch.isfinite(p).all() for p in model.actor.parameters())


@pytest.mark.parametrize("impl", ["research", "sb3"])
def test_ddpg_run(measure, smoke, benchmark, impl):
    if not smoke and not FULL:
        pytest.skip("the whole 20k-step DDPG run takes minutes: set BENCH_FULL=1")
    from research.evaluation import evaluate_policy

    steps, warmup = (300, 200) if smoke else (ZOO_STEPS, ZOO_DDPG["learning_starts"])
    if impl == "research":
        from research.algos.ddpg import DDPGConfig
        from research.algos.off_policy import OffPolicyEvalConfig
        from research.train import train

        # The zoo recipe is DDPG's default config; evaluated at the start and the end only.
        config = DDPGConfig(seed=0, total_env_steps=steps, warmup_env_steps=warmup, num_threads=bench_threads(),
                            eval=OffPolicyEvalConfig(interval_env_steps=steps))
        summary = measure(lambda: train(config, "ddpg"), question="ddpg-run", case="research", batch=1,
                          horizon=steps, device="cpu", env_steps=steps, rounds=1, warmup_rounds=0)
        return_mean = summary["eval"]["return_mean"]
        benchmark.extra_info["train_wall_time_s"] = summary["wall_time_s"]  # less the evaluator's seconds
    else:
        model = _sb3_ddpg(learning_starts=warmup)
        benchmark.extra_info["peer"] = _versions("stable-baselines3")
        measure(lambda: model.learn(total_timesteps=steps), question="ddpg-run", case="sb3", batch=1, horizon=steps,
                device="cpu", env_steps=steps, rounds=1, warmup_rounds=0)
        with torch.no_grad():
            return_mean = evaluate_policy(_sb3_policy(model))["return_mean"]
    benchmark.extra_info["return_mean"] = return_mean
    assert np.isfinite(return_mean)
