"""The gradient study: first-order (BPTT) against zeroth-order (likelihood-ratio) policy gradients, on any system.

At a fixed policy ``mu_theta`` (a random initialisation and a trained one), on each task of ``config.physics`` and for
horizons ``H``, the gradient of the smoothed ``H``-step objective ``J_H(theta) = E[R_H]``, ``R_H = sum_{t<H} r_t``, is
estimated from many independent samples with two unbiased estimators of the same quantity. A task is what
``experiment.physics`` names (:func:`research.config.physics_entry`): a pendulum preset (``"default"``, ``"wall"``, ...
of :data:`research.systems.pendulum.PRESETS`; default physics unless told), a system at its default physics
(``"cartpole"``, ``"acrobot"``) or ``"system:preset"`` (``"cartpole:heavy_pole"``). Everything goes through its
:class:`~research.systems.System`: each sample draws (:func:`draw_samples`) an initial state from the system's reset
distribution (``system.initial_state``: on the pendulum Gymnasium's ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]``,
represented in a wall's range where there is one; on the cart-pole and the acrobot their starts hanging down, within
0.05 and 0.1 of rest) and Gaussian action noise ``[H, action_dim]``, added after the policy's tanh squash:
``a_t = mu_theta(s_t) + sigma * eps_t``, ``eps_t ~ N(0, I)`` (the physics clips the action). On a preset with
per-episode parameter ranges (the pendulum's and the cart-pole's ``randomized``) each sample also draws its own
parameters, and on one with noise in the step (the pendulum's ``noisy``, torque noise) ``noise_dim`` standard-normal
samples ``xi_t`` per step (``system.noise_block``). ``sigma`` is ``action_noise`` in the system's action units (N m
for the pendulum's and the acrobot's torque, N for the cart-pole's force), or that fraction of each task's
``max_action`` with ``action_noise_scale = "max_action"``. The rollouts call the system's step with the preset's
features, the step the trainers differentiate, so the gradients through walls, friction and the acrobot's chaotic
swings are the ones BPTT sees.
Both estimators are per-sample sums ``sum_t w_t . grad_theta mu_theta(s_t)`` (:func:`policy_gradient_terms`; ``w_t``
has one entry per action dimension) and differ only in the weights ``w_t``:

- first order (:func:`first_order_gradients`, what BPTT follows): ``grad_theta R_H`` with the noise reparameterised,
  through ``mu_theta`` and every step of the simulator; ``w_t = dR_H / da_t``, the total derivative (through the later
  states and the policy's feedback on them), from one backward pass through the rollout. The system's noise is
  reparameterised like the action noise: ``xi`` is a fixed input of the rollout and the gradient flows through the
  step that meets it (the pendulum's ``clip(a_t + torque_noise * xi_t)``);
- zeroth order (:func:`likelihood_ratio_gradients`, REINFORCE): ``sum_t grad_theta log N(a_t; mu_theta(s_t), sigma^2 I)
  * A_t``, i.e. ``w_t = A_t * eps_t / sigma`` (the score sums over the action's dimensions), states and actions held
  fixed. ``likelihood_ratio_baseline`` picks ``A_t``: ``"none"``, the whole return ``R_H`` (plain REINFORCE);
  ``"reward_to_go"``, ``G_t = sum_{t'>=t} r_t'`` (causality: ``a_t`` cannot change earlier rewards);
  ``"reward_to_go_baseline"`` (the default), ``G_t - G^0_t``, ``G^0_t`` the reward-to-go of the noise-free rollout
  ``a_t = mu_theta(s_t)`` from the same initial state (the per-step form of the zeroth-order batched gradient
  ``(V(theta, w) - V(theta, 0)) * score`` of Suh et al. 2022, "Do differentiable simulators give better policy
  gradients?"). ``G^0_t`` depends on ``s_0`` and ``theta`` only, so ``E[score_t * G^0_t] = 0`` and the estimator stays
  unbiased. It is preferred to a constant baseline (such as a leave-one-out mean of the other samples' ``G_t``)
  because the return depends mostly on the initial state (on the pendulum: hanging down or near upright), which a
  constant baseline leaves in ``A_t`` and this one cancels; ``tests/analysis/test_gradients.py`` checks that it cuts
  the variance at H = 10 by more than 30x against both other variants. The system's noise is environment noise, not
  part of the policy: it is not in the score (its density does not depend on ``theta``, so the estimator stays
  unbiased), the rollout simply meets it; the noise-free baseline rollout replays the same ``xi`` (noise-free in the
  action only), which keeps ``G^0_t`` independent of ``eps`` and cancels the part of ``G_t`` that the system's noise,
  not the action noise, explains.

Per-sample gradients are computed ``chunk`` samples at a time and streamed into :class:`GradientMoments` (running
mean and sum of squared deviations, per-sample norms, sums of 20 groups of samples), so no ``[N, P]`` tensor is held
and ``N`` can be 10^4 and more. For each (physics, policy, H, estimator) the study measures the norm of the mean
gradient, the mean and median norm of the per-sample gradients, their per-parameter variance (mean over parameters and
the total, the trace of the covariance) and the relative standard error of the mean; :func:`cosine_similarity`
compares the two estimators' mean gradients, with a delete-a-group jackknife standard error.

An experiment file with a ``[gradient_study]`` table (``experiments/gradient_study.toml``,
``experiments/system_gradients.toml``) is the measurement's config; ``python -m research.experiment`` hands it to
:func:`run_gradient_study`, which writes ``<results>/<name>/``: ``gradient_study.csv`` (tidy, one row per physics x
policy x horizon x estimator, :data:`CSV_COLUMNS`), ``config.json`` (the config, each task's system, preset, time
step, action bound and ``sigma``, the policies' sources and evaluations on each task, wall-clock, commit, versions,
machine) and, when the trained policy is trained by the study, its own run directory ``trained_policy/`` (reused while
its config is unchanged). The trained policy comes from ``trained.path``, where ``{physics}`` stands for each task's
directory name (the entry, ``:`` written ``-``, as the experiment runner names run directories: e.g.
``results/when_study/{physics}/bptt/seed_0/policy.pt``, one policy per task); without it one trained policy serves
every task (of one system). The random policy is one initialisation (the study's seed) per system, squashed to each
task's ``max_action``. Figures and ``REPORT.md`` are drawn from those two files by ``scripts/gradient_report.py``;
``make experiment EXP=gradient_study`` runs both.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from research.algos import ALGOS
from research.config import ConfigError, config_hash, from_dict, load_toml, physics_entry, to_dict
from research.evaluation import evaluate_policy
from research.harness import DTYPES, resolve_device
from research.policies import load_policy, make_policy
from research.runs import (
    atomic_write_json,
    atomic_write_text,
    device_description,
    git_commit,
    library_versions,
)
from research.systems import SYSTEMS, System, get_system
from research.systems.pendulum import PRESETS, Pendulum, observation, pendulum_step

log = logging.getLogger(__name__)

ESTIMATORS = ("first_order", "likelihood_ratio")
#: ``likelihood_ratio_baseline`` choices: what multiplies the score of ``a_t`` (see the module docstring).
LR_BASELINES = ("none", "reward_to_go", "reward_to_go_baseline")
POLICIES = ("random", "trained")
CSV_COLUMNS = ("physics", "policy", "horizon", "estimator", "lr_baseline", "grad_norm", "mean_sample_norm", "median_sample_norm",
               "variance_mean", "variance_total", "relative_se", "cosine", "cosine_se", "return_mean", "samples")
#: Groups of the delete-a-group jackknife behind the cosine's standard error.
JACKKNIFE_GROUPS = 20
#: In ``trained.path``: replaced by each task's directory name (one trained policy per task).
PHYSICS_PLACEHOLDER = "{physics}"
#: The trained policy's architecture and seed come from the study, so its own config must not set them.
STUDY_OWNED_KEYS = ("seed", "hidden_sizes", "activation", "device")


# ---------------------------------------------------------------------------------------------------- config
def study_system(entry: str) -> System:
    """The :class:`~research.systems.System` of a ``physics`` entry (:func:`research.config.physics_entry`): a
    pendulum preset (``"wall"``), a system at its default physics (``"cartpole"``) or ``"system:preset"``."""
    system, preset, _ = physics_entry(entry)
    return get_system(system, preset)


def _accepted_entries() -> str:
    """The ``physics`` entries a study accepts, in words (for its errors)."""
    presets = "; ".join(f"{name}: {list(cls.PRESETS)}" for name, cls in SYSTEMS.items() if name != "pendulum")
    others = [name for name in SYSTEMS if name != "pendulum"]
    return f"a pendulum preset {list(PRESETS)}, a system {others} or 'system:preset' ({presets})"


@dataclass
class TrainedPolicyConfig:
    """Where the trained policy comes from: a policy file, or a short training run inside the study."""

    path: str = ""
    """A policy.pt written by any trainer of this project; '{physics}' in it stands for each task's directory name
    (the entry, ':' written '-'; one policy per task, e.g. 'results/when_study/{physics}/bptt/seed_0/policy.pt'),
    without it one policy serves every task (all of one system); empty = train one with `algo` and `config` (on the
    system and physics of `config`, the default pendulum unless told)."""
    algo: str = "shac"
    """Trainer of the trained policy (one of research.algos.ALGOS)."""
    config: dict[str, Any] = field(default_factory=lambda: {"iterations": 300})
    """That trainer's config table (its budget and anything else); seed, hidden_sizes, activation and device come
    from the study."""


@dataclass
class GradientStudyConfig:
    """The ``[gradient_study]`` table."""

    description: str = "First-order (BPTT) against zeroth-order (likelihood-ratio) policy gradients."
    """One line on what the study asks."""
    physics: list[str] = field(default_factory=lambda: ["default"])
    """Tasks to measure on, each with its own rows, named as in experiment.physics: a pendulum preset ('default',
    'wall', ...: research/systems/pendulum.py), a system at its default physics ('cartpole', 'acrobot') or
    'system:preset' ('cartpole:heavy_pole'). Each brings its reset distribution (initial states), its per-episode
    parameter draws (one per sample) and the noise of its step (one draw per sample and step)."""
    horizons: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100, 200])
    """Horizons H (steps: 0.05 s on the pendulum, 0.02 s on the cart-pole, 0.2 s on the acrobot) of the return whose
    gradient is estimated."""
    samples: int = 10_000
    """Independent samples (initial state, action noise and the task's own draws) per physics, policy, horizon and
    estimator."""
    chunk: int = 500
    """Samples differentiated together and streamed into the statistics (bounds memory to about chunk x H x width
    floats; the results do not depend on it)."""
    likelihood_ratio_baseline: Literal["none", "reward_to_go", "reward_to_go_baseline"] = "reward_to_go_baseline"
    """What multiplies the score of a_t in the likelihood-ratio estimator: 'none' (the return R_H, plain REINFORCE),
    'reward_to_go' (G_t, causality) or 'reward_to_go_baseline' (G_t minus the noise-free rollout's G_t from the same
    initial state)."""
    action_noise: float = 0.3
    """sigma: std of the Gaussian noise added to the squashed action, in the system's action units (N m for the
    pendulum's and the acrobot's torque, N for the cart-pole's force) with action_noise_scale = 'absolute'; both
    estimators smooth with it."""
    action_noise_scale: Literal["absolute", "max_action"] = "absolute"
    """'absolute': sigma = action_noise on every task; 'max_action': sigma = action_noise x the task's max_action, the
    same smoothing relative to the action range on systems whose ranges differ (the cart-pole's 10 N against the
    pendulum's 2 N m)."""
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    """Policies at which the gradient is measured: 'random' (a fresh initialisation) and/or 'trained'."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the policy MLP's hidden layers (the random and the trained policy)."""
    activation: Literal["tanh", "relu", "elu", "silu"] = "tanh"
    """Hidden activation of the policy MLP."""
    seed: int = 0
    """Seed of the random initialisation, of the trained policy's run and of every sample."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'cuda:N' (overridden by --device)."""
    dtype: Literal["float32", "float64"] = "float64"
    """Floating-point type of the gradient estimates (long-horizon gradients span many orders of magnitude)."""
    trained: TrainedPolicyConfig = field(default_factory=TrainedPolicyConfig)
    """The trained policy."""

    def __post_init__(self) -> None:
        entries = []
        for entry in self.physics:
            try:
                entries.append(physics_entry(entry)[:2])
            except ConfigError:
                entries.append(None)
        if None in entries or not entries or len(set(entries)) != len(entries):
            raise ConfigError(f"physics must be distinct tasks, each {_accepted_entries()}; got {self.physics}")
        if not self.horizons or any(h <= 0 for h in self.horizons) or len(set(self.horizons)) != len(self.horizons):
            raise ConfigError(f"horizons must be distinct positive step counts, got {self.horizons}")
        self.horizons = sorted(self.horizons)
        if self.samples < 2 or self.chunk <= 0:
            raise ConfigError(f"samples must be >= 2 and chunk > 0, got {self.samples}, {self.chunk}")
        if not (self.action_noise > 0 and math.isfinite(self.action_noise)):
            raise ConfigError(f"action_noise must be > 0 (both estimators need the noise), got {self.action_noise}")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies or len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"policies must be distinct names from {list(POLICIES)}, got {self.policies}")
        if "trained" not in self.policies:
            return
        systems = sorted({system for system, _ in entries})
        if not self.trained.path:
            # a bad key in trained.config fails now, not after the random policy's study
            trains_on = self.training_config().env.system
            if systems != [trains_on]:
                raise ConfigError(f"trained.config trains one policy on the {trains_on}, but physics {self.physics} "
                                  f"measures it on {systems}; set trained.path ('{PHYSICS_PLACEHOLDER}' in it for "
                                  "several systems) or trained.config.env.system")
        elif PHYSICS_PLACEHOLDER not in self.trained.path and len(systems) > 1:
            raise ConfigError(f"trained.path must contain '{PHYSICS_PLACEHOLDER}' when physics spans several systems "
                              f"({systems}): one policy cannot act on all of them, got {self.trained.path!r}")

    def action_sigma(self, system: System) -> float:
        """``sigma`` on ``system``: ``action_noise``, times ``system.max_action`` with ``action_noise_scale =
        "max_action"``."""
        return self.action_noise * system.max_action if self.action_noise_scale == "max_action" else self.action_noise

    def trained_paths(self) -> dict[str, Path]:
        """``{entry: policy file}`` of the trained policy: ``trained.path`` with :data:`PHYSICS_PLACEHOLDER` replaced
        by each entry's directory name (:func:`research.config.physics_entry`; a pendulum preset's is its name), the
        same file for all when it has none; ``{}`` when the path is empty (the study trains the policy)."""
        if not self.trained.path:
            return {}
        return {name: Path(self.trained.path.replace(PHYSICS_PLACEHOLDER, physics_entry(name)[2]))
                for name in self.physics}

    def check_trained_paths(self) -> None:
        """Raises a one-line :class:`ConfigError` naming ``gradient_study.trained.path`` and every resolved path
        that is not a file (only when the ``trained`` policy is measured)."""
        if "trained" not in self.policies:
            return
        missing = list(dict.fromkeys(str(p) for p in self.trained_paths().values() if not p.is_file()))
        if missing:
            raise ConfigError(f"gradient_study.trained.path = {self.trained.path!r}: no policy file at "
                              f"{', '.join(missing)}")

    def training_config(self, device: str | None = None) -> Any:
        """The typed config of the run that trains the ``trained`` policy."""
        from research.train import resolve_config

        if self.trained.algo not in ALGOS:
            raise ConfigError(f"trained.algo must be one of {list(ALGOS)}, got {self.trained.algo!r}")
        owned = [k for k in STUDY_OWNED_KEYS if k in self.trained.config]
        if owned:
            raise ConfigError(f"trained.config must not set {owned}: the study sets them (seed, hidden_sizes, "
                              "activation, device)")
        table = {**self.trained.config, "hidden_sizes": list(self.hidden_sizes), "activation": self.activation,
                 "device": device or self.device}
        try:
            return resolve_config(self.trained.algo, table, self.seed)
        except ConfigError as err:
            raise ConfigError(f"trained.config: {err}") from None


def load_study_config(path: str | Path) -> GradientStudyConfig:
    """Parses the ``[gradient_study]`` table of an experiment file; other tables and unknown keys are errors."""
    data = load_toml(path)
    extra = [key for key in data if key != "gradient_study"]
    if extra:
        raise ConfigError(f"{path}: unknown table(s) {extra} in a gradient study; expected only [gradient_study]")
    return from_dict(GradientStudyConfig, data.get("gradient_study", {}), prefix="gradient_study.")


# ---------------------------------------------------------------------------------------------------- estimators
class PerSampleGradients(NamedTuple):
    """Per-sample gradients and returns of ``N`` samples; ``P`` is the number of policy parameters."""

    gradients: Tensor  # [N, P], parameters flattened in policy.named_parameters() order
    returns: Tensor  # [N] the H-step return of each sample


class _Dynamics(NamedTuple):
    """A system's step as the estimators' rollouts carry its state (:func:`_dynamics`): ``start`` turns states
    ``[N, state_dim]`` into the carried state, ``observe`` gives its observations ``[N, obs_dim]`` and
    ``step(carried, action [N, action_dim], noise [N, noise_dim] or None)`` the next carried state and the rewards
    ``[N]``."""

    start: Callable[[Tensor], Any]
    observe: Callable[[Any], Tensor]
    step: Callable[[Any, Tensor, Tensor | None], tuple[Any, Tensor]]


def _dynamics(system: System, constants: Any) -> _Dynamics:
    """The :class:`_Dynamics` of ``system`` with its ``constants`` (from ``system.constants``).

    Any system carries its state tensor through ``system.observe`` and ``system.step``. The pendulum carries its
    columns ``(th, thdot)`` through :func:`~research.systems.pendulum.observation` and
    :func:`~research.systems.pendulum.pendulum_step`, the functions behind ``Pendulum.observe`` and ``Pendulum.step``:
    the same values, but a stacked state would route the gradient of ``th`` through separate column views and add its
    parts in another order, changing the last bits of the first-order gradients; carried this way, the pendulum's
    committed studies (``results/gradient_study``, ``results/when_gradients``) stay reproducible bit for bit. For the
    same reason the step does not reuse the observation's ``sin th`` (``observe_for_step``'s ``aux``).
    """
    if isinstance(system, Pendulum):
        def pendulum(state: tuple[Tensor, Tensor], action: Tensor, noise: Tensor | None
                     ) -> tuple[tuple[Tensor, Tensor], Tensor]:
            th, thdot, reward = pendulum_step(*state, action[..., 0], constants,
                                              noise=None if noise is None else noise[..., 0])
            return (th, thdot), reward

        return _Dynamics(lambda state: state.unbind(-1), lambda state: observation(*state), pendulum)
    return _Dynamics(lambda state: state, system.observe,
                    lambda state, action, noise: system.step(state, action, constants, noise))


def _check_inputs(system: System, state: Tensor, horizon: int, noise: Tensor, sigma: float,
                  env_noise: Tensor | None) -> Tensor | None:
    """Raises ``ValueError`` on mis-shaped inputs; returns ``env_noise`` as ``[N, H, noise_dim]`` (``None`` when the
    system's step needs no noise)."""
    if state.dim() != 2 or state.shape[1] != system.state_dim:
        raise ValueError(f"state must be [N, state_dim] = [N, {system.state_dim}], got {list(state.shape)}")
    expected = (state.shape[0], horizon, system.action_dim)
    if horizon <= 0 or tuple(noise.shape) != expected:
        raise ValueError(f"noise must be [N, H, action_dim] = {list(expected)} with H > 0, got {list(noise.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if system.needs_noise and env_noise is None:
        raise ValueError(f"env_noise (standard normal, [N, H, noise_dim]) is needed: {system.system} physics "
                         f"{system.name!r} has noise ({system.noise_param} > 0)")
    return system.noise_block((state.shape[0],), horizon, None, state, noise=env_noise)


def policy_gradient_terms(policy: nn.Module, observations: Tensor, weights: Tensor) -> Tensor:
    """Per-sample ``sum_t weights[i, t] . grad_theta mu_theta(observations[i, t])``, the form of both estimators.

    Each sample gets its own copy of the parameters (expanded views, ``torch.func.vmap`` over ``functional_call``),
    so one backward pass of the weighted sum gives the stack of per-sample gradients.

    Args:
        policy: ``observation [..., obs_dim] -> mean action [..., action_dim]``.
        observations: ``[N, T, obs_dim]``, held fixed.
        weights: ``[N, T, action_dim]``, held fixed.

    Returns:
        ``[N, P]``, parameters flattened in ``policy.named_parameters()`` order.
    """
    n = observations.shape[0]
    copies = {name: p.detach().expand(n, *p.shape).requires_grad_(True) for name, p in policy.named_parameters()}
    with torch.enable_grad():
        mean = vmap(lambda params, obs: functional_call(policy, params, (obs,)))(copies, observations.detach())
        gradients = torch.autograd.grad((weights.detach() * mean).sum(), list(copies.values()))
    return torch.cat([g.reshape(n, -1) for g in gradients], dim=1)


def first_order_gradients(policy: nn.Module, system: System, state: Tensor, params: Any, horizon: int, noise: Tensor,
                          sigma: float, *, env_noise: Tensor | None = None) -> PerSampleGradients:
    """Per-sample first-order (reparameterised, through the simulator) gradients of the ``H``-step return.

    Sample ``i`` rolls ``a_t = mu_theta(s_t) + sigma * noise[i, t]`` for ``horizon`` steps of ``system`` from
    ``state[i]`` (the step meeting ``env_noise[i, t]`` when the system has noise); its gradient is ``grad_theta
    sum_t r_t`` through the policy and the physics, both noises held fixed (reparameterised), computed as
    ``sum_t dR/da_t . grad_theta mu_theta(s_t)``: ``dR/da_t`` (through the later states and the policy's feedback)
    is the gradient with respect to a zero perturbation of ``a_t``, one backward pass for all samples since they are
    independent.

    Args:
        policy: ``observation [..., obs_dim] -> mean action [..., action_dim]`` (e.g. a
            :class:`~research.policies.SquashedMLP`).
        system: the task (a :class:`~research.systems.System`); its features decide the step's optional terms.
        state: initial states ``[N, state_dim]`` (``system.initial_state``: a pendulum's angle in a wall's range).
        params: the system's physical parameters (``system.params``), each ``[N]`` or broadcastable to it;
            ``None``: its fixed values.
        horizon: number of steps ``H``.
        noise: standard-normal action-noise draws ``eps`` ``[N, H, action_dim]``.
        sigma: std of the action noise.
        env_noise: standard-normal draws ``xi`` of the system's own noise ``[N, H, noise_dim]`` (``[N, H]`` when
            ``noise_dim == 1``); needed when ``system.needs_noise`` (the pendulum's ``torque_noise > 0``), ignored
            otherwise.

    Returns:
        :class:`PerSampleGradients`: ``gradients [N, P]``, ``returns [N]``.
    """
    env_noise = _check_inputs(system, state, horizon, noise, sigma, env_noise)
    sim = _dynamics(system, system.constants(params, like=state))
    perturbations = torch.zeros_like(noise).requires_grad_(True)  # [N, H, action_dim]
    observations = []
    returns = state.new_zeros(state.shape[0])
    x = sim.start(state)
    with torch.enable_grad():
        for t in range(horizon):
            obs = sim.observe(x)
            action = policy(obs) + sigma * noise[:, t] + perturbations[:, t]
            x, reward = sim.step(x, action, None if env_noise is None else env_noise[:, t])
            observations.append(obs.detach())
            returns = returns + reward
        (adjoints,) = torch.autograd.grad(returns.sum(), [perturbations])  # [N, H, action_dim], dR_i / da_t[i]
    return PerSampleGradients(policy_gradient_terms(policy, torch.stack(observations, dim=1), adjoints),
                              returns.detach())


def _rollout(policy: nn.Module, sim: _Dynamics, state: Tensor, noise: Tensor, sigma: float,
             env_noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """Observations ``[N, H, obs_dim]`` and rewards ``[N, H]`` of ``a_t = mu_theta(s_t) + sigma * noise[:, t]``
    (``noise [N, H, action_dim]``; the system's noise ``env_noise [N, H, noise_dim]`` when it has one)."""
    observations, rewards = [], []
    x = sim.start(state)
    with torch.no_grad():
        for t in range(noise.shape[1]):
            obs = sim.observe(x)
            x, reward = sim.step(x, policy(obs) + sigma * noise[:, t], None if env_noise is None else env_noise[:, t])
            observations.append(obs)
            rewards.append(reward)
    return torch.stack(observations, dim=1), torch.stack(rewards, dim=1)


def reward_to_go(rewards: Tensor) -> Tensor:
    """``G[..., t] = sum_{t' >= t} rewards[..., t']`` for rewards ``[..., H]``."""
    return rewards.flip(-1).cumsum(-1).flip(-1)


def likelihood_ratio_gradients(policy: nn.Module, system: System, state: Tensor, params: Any, horizon: int,
                               noise: Tensor, sigma: float, baseline: str = "reward_to_go_baseline", *,
                               env_noise: Tensor | None = None) -> PerSampleGradients:
    """Per-sample zeroth-order (likelihood-ratio, REINFORCE) gradients of the ``H``-step return.

    Sample ``i`` rolls the same noisy policy as :func:`first_order_gradients`, without gradients; its gradient is
    ``sum_t A_t * grad_theta log N(a_t; mu_theta(s_t), sigma^2 I) = sum_t A_t * eps_t / sigma . grad_theta
    mu_theta(s_t)`` with the states and actions held fixed (a sum over the action's dimensions), where ``A_t`` is, by
    ``baseline`` (see the module docstring): ``"none"``, the return ``R_H``; ``"reward_to_go"``, ``G_t = sum_{t'>=t}
    r_t'``; ``"reward_to_go_baseline"``, ``G_t`` minus the reward-to-go of the noise-free rollout from the same
    initial state. All three have the same expectation. The system's noise ``env_noise`` is environment noise: the
    rollout meets it, the score (of the action noise only) does not contain it, and the noise-free baseline rollout
    replays the same draws (it is noise-free in the action only, so it still does not depend on ``eps``).

    Args and returns as :func:`first_order_gradients`: ``gradients [N, P]``, ``returns [N]``; ``baseline`` is one of
    :data:`LR_BASELINES`.
    """
    env_noise = _check_inputs(system, state, horizon, noise, sigma, env_noise)
    if baseline not in LR_BASELINES:
        raise ValueError(f"baseline must be one of {list(LR_BASELINES)}, got {baseline!r}")
    sim = _dynamics(system, system.constants(params, like=state))
    observations, rewards = _rollout(policy, sim, state, noise, sigma, env_noise)
    returns = rewards.sum(-1)
    if baseline == "none":
        advantages = returns[:, None].expand_as(rewards)
    else:
        advantages = reward_to_go(rewards)
        if baseline == "reward_to_go_baseline":
            _, noise_free_rewards = _rollout(policy, sim, state, torch.zeros_like(noise), sigma, env_noise)
            advantages = advantages - reward_to_go(noise_free_rewards)
    return PerSampleGradients(policy_gradient_terms(policy, observations, advantages[..., None] * noise / sigma),
                              returns)


ESTIMATOR_FUNCTIONS = {"first_order": first_order_gradients, "likelihood_ratio": likelihood_ratio_gradients}


# ---------------------------------------------------------------------------------------------------- statistics
class GradientMoments:
    """Summary of ``samples`` per-sample gradients ``[n, P]`` fed a chunk at a time: no ``[N, P]`` tensor is held.

    Keeps the running mean and sum of squared deviations ``[P]`` (chunks merged by Chan et al.'s pairwise update,
    accurate even where the mean is large against the spread), the per-sample norms ``[N]``, the sum of the returns
    and the sums of ``groups`` contiguous groups of samples ``[groups, P]`` for the jackknife of
    :func:`cosine_similarity`. Sample ``i`` (in the order fed) belongs to group ``i * groups // samples``, so nothing
    depends on how the samples are chunked.
    """

    def __init__(self, samples: int, groups: int = JACKKNIFE_GROUPS) -> None:
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        self.samples = samples
        self.groups = max(2, min(groups, samples))
        self.count = 0
        self.return_sum, self.return_count = 0.0, 0
        self._mean: Tensor | None = None  # [P]
        self._m2: Tensor | None = None  # [P]
        self._group_sums: Tensor | None = None  # [groups, P]
        self._norms: list[Tensor] = []

    @classmethod
    def from_gradients(cls, gradients: Tensor, chunk: int | None = None, groups: int = JACKKNIFE_GROUPS
                       ) -> GradientMoments:
        """The moments of all of ``gradients [N, P]``, fed ``chunk`` rows at a time (all at once by default)."""
        moments = cls(gradients.shape[0], groups)
        for part in gradients.split(chunk or gradients.shape[0]):
            moments.add(part)
        return moments

    def add(self, gradients: Tensor, returns: Tensor | None = None) -> None:
        """Feeds the next ``n`` samples: ``gradients [n, P]`` and optionally their returns ``[n]``."""
        g = gradients.detach().double()
        n = g.shape[0]
        if self.count + n > self.samples:
            raise ValueError(f"{self.count} + {n} samples fed, more than the {self.samples} announced")
        if n == 0:
            return
        chunk_mean = g.mean(0)
        chunk_m2 = ((g - chunk_mean) ** 2).sum(0)
        if self._mean is None:
            self._mean, self._m2 = chunk_mean, chunk_m2
            self._group_sums = g.new_zeros(self.groups, g.shape[1])
        else:
            total = self.count + n
            delta = chunk_mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + chunk_m2 + delta**2 * (self.count * n / total)
        group = torch.arange(self.count, self.count + n, device=g.device) * self.groups // self.samples
        self._group_sums = self._group_sums.index_add(0, group, g)
        self._norms.append(g.norm(dim=1))
        if returns is not None:
            self.return_sum += returns.double().sum().item()
            self.return_count += returns.numel()
        self.count += n

    @property
    def mean(self) -> Tensor:
        """The mean gradient ``[P]``."""
        if self._mean is None:
            raise ValueError("no samples fed yet")
        return self._mean

    def leave_one_group_out_means(self) -> Tensor:
        """``[groups, P]``: row ``k`` is the mean gradient without group ``k`` (all ``samples`` must be fed)."""
        if self.count != self.samples:
            raise ValueError(f"only {self.count} of {self.samples} samples fed")
        sizes = torch.bincount(torch.arange(self.samples) * self.groups // self.samples, minlength=self.groups)
        sizes = sizes.to(device=self._group_sums.device, dtype=self._group_sums.dtype)
        return (self._group_sums.sum(0) - self._group_sums) / (self.samples - sizes)[:, None]

    def statistics(self) -> dict[str, float]:
        """``grad_norm`` (norm of the mean gradient), ``mean_sample_norm`` and ``median_sample_norm`` (mean and median
        of the per-sample norms: far apart when a few samples carry huge gradients), ``variance_mean`` and
        ``variance_total`` (per-parameter variance across samples, unbiased, averaged over and summed over the ``P``
        parameters: the latter is the trace of the covariance), ``relative_se`` (standard error of the mean gradient
        relative to its norm: ``sqrt(variance_total / N) / grad_norm``), ``return_mean`` (NaN when no returns were
        fed) and ``samples`` (``N``, at least 2)."""
        n = self.count
        if n < 2:
            raise ValueError(f"statistics need at least 2 samples, got {n}")
        grad_norm = self.mean.norm().item()
        variance = self._m2 / (n - 1)
        total = variance.sum().item()
        norms = torch.cat(self._norms)
        return {
            "grad_norm": grad_norm,
            "mean_sample_norm": norms.mean().item(),
            "median_sample_norm": norms.quantile(0.5).item(),
            "variance_mean": variance.mean().item(),
            "variance_total": total,
            "relative_se": math.sqrt(total / n) / grad_norm if grad_norm > 0 else math.inf,
            "return_mean": self.return_sum / self.return_count if self.return_count else math.nan,
            "samples": n,
        }


def cosine_similarity(first: GradientMoments, second: GradientMoments) -> tuple[float, float]:
    """Cosine between the mean gradients of two independent sets of samples, and its standard error.

    Returns ``(cosine, standard_error)``; the error is a delete-a-group jackknife, group ``k`` of both sets left out
    together (the sets need the same number of groups and all their samples fed).
    """
    if first.groups != second.groups:
        raise ValueError(f"both sets need the same number of jackknife groups, got {first.groups}, {second.groups}")
    cosine = torch.nn.functional.cosine_similarity(first.mean, second.mean, dim=0).item()
    replicates = torch.nn.functional.cosine_similarity(first.leave_one_group_out_means(),
                                                       second.leave_one_group_out_means(), dim=1)
    groups = first.groups
    se = math.sqrt((groups - 1) / groups * ((replicates - replicates.mean()) ** 2).sum().item())
    return cosine, se


# ---------------------------------------------------------------------------------------------------- the study
class StudyPolicy(NamedTuple):
    """A policy the gradient is measured at, with where it came from and its protocol evaluation (on one task)."""

    policy: nn.Module
    source: str
    evaluation: dict[str, float]
    training: dict[str, Any] | None = None  # the trained policy's run summary


def sample_generator(seed: int, policy: str, horizon: int, estimator: str) -> torch.Generator:
    """A CPU generator, distinct and reproducible for every (policy, horizon, estimator): independent samples.

    It draws the initial states and the action noise; it does not depend on the task, so every preset of a system
    meets the same draws (common random numbers: comparisons between presets are paired)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{policy}/{horizon}/{estimator}".encode()))


def physics_generator(seed: int, physics: str, policy: str, horizon: int, estimator: str) -> torch.Generator:
    """A CPU generator for the task's own randomness (per-sample parameters, the noise of its step) of one (physics,
    policy, horizon, estimator), independent of :func:`sample_generator`'s."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{physics}/{policy}/{horizon}/{estimator}".encode()))


class StudySamples(NamedTuple):
    """The randomness of ``N`` samples of an ``H``-step rollout on one task, float64 on the CPU."""

    state: Tensor  # [N, state_dim] initial states (the system's reset; a pendulum's angle in a wall's range)
    noise: Tensor  # [N, H, action_dim] standard-normal action noise eps
    params: Any  # the system's Params: each [N] when the preset draws parameters per episode, else 0-d (shared)
    env_noise: Tensor | None  # [N, H, noise_dim] standard-normal noise xi of the system's step; None without

    def chunk(self, rows: slice, device: torch.device, dtype: torch.dtype) -> StudySamples:
        """Rows ``rows`` of every per-sample tensor (0-d parameters are shared), cast to ``device`` and ``dtype``."""
        def cast(x: Tensor) -> Tensor:
            return (x[rows] if x.dim() else x).to(device=device, dtype=dtype)

        return StudySamples(cast(self.state), cast(self.noise), type(self.params)(*map(cast, self.params)),
                            None if self.env_noise is None else cast(self.env_noise))


def draw_samples(system: System, samples: int, horizon: int, generator: torch.Generator,
                 physics_generator: torch.Generator | None = None) -> StudySamples:
    """``samples`` independent samples of an ``horizon``-step rollout on ``system``, all drawn at once (float64, CPU).

    ``generator`` draws the initial states (``system.initial_state``: the system's reset; on the pendulum
    Gymnasium's, represented in the wall's range when there is one) and then the action noise ``[N, H, action_dim]``,
    exactly as on the system's default physics; ``physics_generator`` (default: ``generator`` itself) draws the
    preset's own randomness: first its per-episode parameters (one draw per sample, only for presets with ranges),
    then the noise of its step ``[N, H, noise_dim]`` (``system.noise_block``, only when it has noise). So a preset
    without either draws nothing more than default physics.
    """
    extra = generator if physics_generator is None else physics_generator
    params = system.params((samples,) if system.ranges else (), extra, dtype=torch.float64)
    state = system.initial_state((samples,), generator, dtype=torch.float64, params=params)
    noise = torch.randn((samples, horizon, system.action_dim), generator=generator, dtype=torch.float64)
    return StudySamples(state, noise, params, system.noise_block((samples,), horizon, extra, state))


def estimate_gradients(estimator: str, policy: nn.Module, config: GradientStudyConfig, horizon: int,
                       generator: torch.Generator, device: torch.device, dtype: torch.dtype,
                       system: System | None = None,
                       physics_generator: torch.Generator | None = None) -> GradientMoments:
    """The moments of ``config.samples`` per-sample gradients of one estimator, ``config.chunk`` samples at a time.

    States, parameters and noise (:func:`draw_samples`: ``[N, ...]`` and ``[N, H, ...]``, small beside ``[N, P]``)
    are drawn at once on the CPU in float64 and cast chunk by chunk, so every chunk size, device and dtype sees the
    same samples. ``system`` defaults to the pendulum's default physics; ``physics_generator`` draws its own
    randomness (see :func:`draw_samples`); the action noise's std is ``config.action_sigma(system)``.
    """
    system = PRESETS["default"] if system is None else system
    drawn = draw_samples(system, config.samples, horizon, generator, physics_generator)
    options: dict[str, Any] = {}
    if estimator == "likelihood_ratio":
        options["baseline"] = config.likelihood_ratio_baseline
    sigma = config.action_sigma(system)
    moments = GradientMoments(config.samples)
    for lo in range(0, config.samples, config.chunk):
        part_samples = drawn.chunk(slice(lo, lo + config.chunk), device, dtype)
        part = ESTIMATOR_FUNCTIONS[estimator](policy, system, part_samples.state, part_samples.params, horizon,
                                              part_samples.noise, sigma, env_noise=part_samples.env_noise, **options)
        if not bool(torch.isfinite(part.gradients).all()):
            log.warning("%s, %s physics %s, H=%d: non-finite per-sample gradients in samples %d..", estimator,
                        system.system, system.name, horizon, lo)
        moments.add(part.gradients, part.returns)
    return moments


def random_policy(config: GradientStudyConfig, system: System, device: torch.device, dtype: torch.dtype
                  ) -> nn.Module:
    """The study's fresh initialisation (seed ``config.seed``) for ``system``'s observation and action, squashed to
    ``system.max_action``: the same weights on every preset of a system."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_policy(config.hidden_sizes, config.activation, system.max_action, device=device, dtype=dtype,
                           obs_dim=system.obs_dim, act_dim=system.action_dim)


def _check_fits(policy: nn.Module, system: System, entry: str, path: Path) -> None:
    """Raises a one-line :class:`ConfigError` when the loaded policy's observation and action sizes are not
    ``system``'s."""
    sizes = (policy.spec["obs_dim"], policy.spec["act_dim"])
    if sizes != (system.obs_dim, system.action_dim):
        raise ConfigError(f"gradient_study.trained.path: {path} maps observations of size {sizes[0]} to actions of "
                          f"size {sizes[1]}, but physics entry {entry!r} ({system.system}) has {system.obs_dim} and "
                          f"{system.action_dim}")


def study_policies(config: GradientStudyConfig, directory: Path, device: torch.device, dtype: torch.dtype,
                   quiet: bool) -> dict[str, dict[str, StudyPolicy]]:
    """``{entry: {policy: StudyPolicy}}`` for ``config.physics`` x ``config.policies``, each evaluated on its task.

    The trained policy is loaded from ``trained.path`` (per task when it holds ``{physics}``; a missing file is a
    :class:`ConfigError` before anything runs, a policy whose observation or action size is not its task's one
    before anything is measured) or trained once into ``directory / "trained_policy"`` (reused when that run finished
    with the same config) and then measured on every task.
    """
    config.check_trained_paths()
    trained: dict[Path, tuple[nn.Module, str, dict | None]] = {}  # one load (or training) per policy file
    if "trained" in config.policies and not config.trained.path:
        path, summary = _train_policy(config, directory / "trained_policy", str(device), quiet)
        source = (f"{config.trained.algo}, {summary.get('iterations', '?')} iterations, "
                  f"{summary['env_steps']:,} env steps, {summary['wall_time_s']:.0f} s, seed {config.seed}")
        trained[path] = (load_policy(path).to(device=device, dtype=dtype), source, summary)
    paths = config.trained_paths()
    out: dict[str, dict[str, StudyPolicy]] = {}
    for name in config.physics:
        system = study_system(name)
        policies = {}
        if "random" in config.policies:
            policy = random_policy(config, system, device, dtype)
            bound = system.max_action
            squash = ("" if bound == system.default_values()[system.action_bound]
                      else f", squashed to {system.action_bound} {bound:g}")
            policies["random"] = StudyPolicy(policy, f"fresh initialisation, seed {config.seed}{squash}",
                                             evaluate_policy(policy, device=device, dtype=dtype, physics=system))
        if "trained" in config.policies:
            path = paths[name] if paths else next(iter(trained))  # from trained.path, or the one trained here
            if path not in trained:
                trained[path] = (load_policy(path).to(device=device, dtype=dtype), f"loaded from {path}", None)
            policy, source, summary = trained[path]
            _check_fits(policy, system, name, path)
            policies["trained"] = StudyPolicy(policy, source,
                                              evaluate_policy(policy, device=device, dtype=dtype, physics=system),
                                              summary)
        out[name] = policies
    return out


def _train_policy(config: GradientStudyConfig, run_directory: Path, device: str, quiet: bool) -> tuple[Path, dict]:
    from research.train import train

    training = config.training_config(device)
    summary_path = run_directory / "summary.json"
    if summary_path.is_file() and (run_directory / "policy.pt").is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("config_hash") == config_hash(training):
            log.info("reusing the trained policy of %s (same config)", run_directory)
            return run_directory / "policy.pt", summary
    if run_directory.exists():
        shutil.rmtree(run_directory)
    log.info("training the 'trained' policy: %s, %s", config.trained.algo, config.trained.config)
    summary = train(training, config.trained.algo, run_directory, "gradient_study", quiet=quiet)
    log.info("trained policy: eval return %.1f after %.0f s", summary["eval"]["return_mean"], summary["wall_time_s"])
    return run_directory / "policy.pt", summary


def measure(config: GradientStudyConfig, policies: Mapping[str, Mapping[str, StudyPolicy]], device: torch.device,
            dtype: torch.dtype, quiet: bool = False) -> list[dict[str, Any]]:
    """Every (physics, policy, horizon, estimator) of ``policies`` (``{entry: {policy: StudyPolicy}}``, as
    :func:`study_policies` gives them): the rows of ``gradient_study.csv`` (see :data:`CSV_COLUMNS`), in that order."""
    rows = []
    total = sum(len(by_policy) for by_policy in policies.values()) * len(config.horizons) * len(ESTIMATORS)
    bar = tqdm(total=total, disable=quiet, unit="estimate", desc="gradients", dynamic_ncols=True, leave=False)
    for physics_name, by_policy in policies.items():
        system = study_system(physics_name)
        for name, study_policy in by_policy.items():
            for horizon in config.horizons:
                estimates = {}
                for estimator in ESTIMATORS:
                    bar.set_postfix(physics=physics_name, policy=name, H=horizon, estimator=estimator)
                    estimates[estimator] = estimate_gradients(
                        estimator, study_policy.policy, config, horizon,
                        sample_generator(config.seed, name, horizon, estimator), device, dtype, system,
                        physics_generator(config.seed, physics_name, name, horizon, estimator))
                    bar.update(1)
                cosine, cosine_se = cosine_similarity(*(estimates[e] for e in ESTIMATORS))
                for estimator in ESTIMATORS:
                    rows.append({"physics": physics_name, "policy": name, "horizon": horizon, "estimator": estimator,
                                 "lr_baseline": config.likelihood_ratio_baseline, **estimates[estimator].statistics(),
                                 "cosine": cosine, "cosine_se": cosine_se})
    bar.close()
    return [{key: row[key] for key in CSV_COLUMNS} for row in rows]


def run_gradient_study(path: str | Path, results: str | Path = "results", device: str | None = None,
                       quiet: bool = False) -> dict[str, Any]:
    """Runs the ``[gradient_study]`` of the experiment file ``path``: ``<results>/<file stem>/gradient_study.csv``,
    ``config.json`` and, when the study trains its policy, ``trained_policy/`` (``scripts/gradient_report.py`` draws
    the figures and the report).

    ``config.json`` holds ``physics`` (each entry's description, fixed values and ranges, its ``system`` and
    ``preset``, ``time_step`` (seconds per step), ``max_action`` and ``sigma``, the std of the action noise there),
    ``physics_policies`` (``{entry: {policy: {source, parameters, eval, training_eval}}}``, ``eval`` on that task)
    and, for a study on one task, ``policies`` (that task's entry, the layout of single-preset studies).

    Args:
        path: the TOML file.
        results: root of the results; outputs go to ``<results>/<path.stem>/``.
        device: overrides the file's device (``"cpu"``, ``"cuda"``); ``None`` keeps it.
        quiet: no progress bars.

    Returns:
        ``{"directory", "rows", "physics_policies", "wall_time_s"}`` (and ``"policies"`` on one preset): the CSV rows
        and each policy's source and evaluation.

    Raises:
        ConfigError: a bad config, or a ``trained.path`` that resolves to a missing file or to a policy of another
            system (before anything is measured).
    """
    start = time.perf_counter()
    path = Path(path)
    config = load_study_config(path)
    if device is not None:
        config.device = device
    config.check_trained_paths()
    torch_device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    directory = Path(results) / path.stem
    directory.mkdir(parents=True, exist_ok=True)

    policies = study_policies(config, directory, torch_device, dtype, quiet)
    rows = measure(config, policies, torch_device, dtype, quiet)
    wall_time_s = time.perf_counter() - start
    physics_policies = {
        physics: {name: {"source": p.source, "parameters": sum(x.numel() for x in p.policy.parameters()),
                         "eval": p.evaluation, "training_eval": (p.training or {}).get("eval")}
                  for name, p in by_policy.items()}
        for physics, by_policy in policies.items()
    }
    single = {"policies": physics_policies[config.physics[0]]} if len(config.physics) == 1 else {}
    presets = {}
    for name in config.physics:
        system = study_system(name)
        values = system.defaults()  # the step length is the pendulum's and the acrobot's dt, the cart-pole's tau
        presets[name] = {"description": system.description, "fixed": system.fixed,
                         "ranges": {k: list(v) for k, v in system.ranges.items()}, "system": system.system,
                         "preset": system.name, "time_step": values.get("dt", values.get("tau")),
                         "max_action": system.max_action, "sigma": config.action_sigma(system)}
    atomic_write_text(directory / "gradient_study.csv", rows_to_csv(rows))
    atomic_write_json(directory / "config.json", {
        "experiment": path.stem,
        "source": str(path),
        "config": to_dict(config),
        "physics": presets,
        **single,
        "physics_policies": physics_policies,
        "jackknife_groups": JACKKNIFE_GROUPS,
        "wall_time_s": wall_time_s,
        "git_commit": git_commit(),
        "versions": library_versions(),
        "device": device_description(torch_device),
    })
    log.info("gradient study measured into %s (%.0f s); figures and REPORT.md: python scripts/gradient_report.py %s",
             directory, wall_time_s, directory)
    return {"directory": str(directory), "rows": rows, **single, "physics_policies": physics_policies,
            "wall_time_s": wall_time_s}


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``gradient_study.csv``: a header of :data:`CSV_COLUMNS`, then one line per row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
