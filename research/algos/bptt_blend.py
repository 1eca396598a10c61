"""BPTT with a blend of first- and zeroth-order gradients: the alpha-order estimator of Suh et al. (ICML 2022).

Full-horizon BPTT (:mod:`research.algos.bptt`) whose rollouts carry Gaussian action noise ``eps_t ~ N(0, 1)`` of std
``sigma = action_noise``, added before the tanh squash (``noise_placement = "pre_squash"``, as SHAC and BPTT's
randomised smoothing: ``a_t = m * tanh(net(o_t) + sigma * eps_t)``) or to the squashed action (``"action"``, as
:mod:`research.analysis.gradients`: ``a_t = m * tanh(net(o_t)) + sigma * eps_t``, the physics clipping the torque).
Call ``mu_theta(o_t)`` the Gaussian's mean (``net`` or the squashed policy). From the same ``N = num_envs *
noise_samples`` noisy rollouts of ``H`` steps, both unbiased estimators of the gradient of BPTT's loss (minus the
discount-weighted mean reward, ``J_i = sum_t w_t r_t``, ``w_t`` the normalised discount weights) are formed per
sample, each ``sum_t c_t * grad_theta mu_theta(o_t)`` with the observations held fixed:

- first order (``alpha = 1``; what BPTT through the noise follows): ``c_t = -dJ_i / du_t``, the adjoint of a zero
  perturbation ``u_t`` of the noise input, from one backward pass through the rollout (the rows are independent);
- zeroth order (``alpha = 0``; likelihood ratio, REINFORCE): ``c_t = -(G_t - G^0_t) * eps_t / sigma``, ``G_t =
  sum_{t' >= t} w_t' r_t'`` the weighted reward-to-go and ``G^0_t`` that of the noise-free rollout from the same
  start state, parameters and torque noise (the baseline of :mod:`research.analysis.gradients`; one more rollout,
  without a graph).

The per-sample gradients ``[N, P]`` come from one ``torch.func.vmap`` over the policy's forward per estimator (the
policy is tiny, ``P`` about 4.4k: an ``[N, P]`` tensor costs far less than the rollout), averaged over each start
state's ``noise_samples`` rows, so the ``B = num_envs`` samples are independent. With ``g1``, ``g0`` their means and
``v1``, ``v0`` the traces of their per-sample covariances, the blend is ``g = alpha g1 + (1 - alpha) g0`` with
``alpha``, each iteration:

1. inverse-variance weighting (the variance-minimising mix of two independent unbiased estimates, as in PIPPS,
   Parmas et al. 2018): ``alpha_v = v0 / (v0 + v1)``;
2. Suh et al.'s robustness test: the zeroth-order mean lies within ``r = ci_z * sqrt(v0 / B)`` of the true gradient
   (a confidence radius); the blend may move away from it by at most ``epsilon - r``: ``alpha = alpha_v`` if
   ``alpha_v * |g1 - g0| <= epsilon - r``, else ``alpha = max(epsilon - r, 0) / |g1 - g0|``. A first-order estimate
   that is biased (a discontinuity: Coulomb friction, a wall) or exploding (non-finite, or a variance so large that
   ``alpha_v`` is small) pushes alpha toward 0.

``alpha`` in ``[0, 1]`` fixes it instead. The blend is clipped and applied by Adam like BPTT's gradient; alpha, both
variances, the gap ``|g1 - g0|`` and ``r`` are logged as ``train/`` metrics.

Defaults (sigma 0.3 before the squash, ``epsilon`` 10, ``ci_z`` 2): at ``epsilon`` = 1 the zeroth-order radius ``r``
(about 4-6 at a random policy, B = 128) exceeds the tolerance and alpha is 0 at every iteration (plain likelihood
ratio); at 10 the test cuts alpha in about 10% of iterations. On coulomb seed 0 (1 thread) alpha's median is 0.015
over the first 100 iterations (the first-order variance is huge there), 0.05 up to 300 and 0.98 after (the policy
has converged and the first-order variance collapsed); the run ends at -178.1, plain BPTT's at -176.7 on the same host.

Only full-horizon fused rollouts (``window = 0``, ``rollout = "fused"``, no compile). Each iteration costs about three
of plain BPTT's (the noisy rollout without :mod:`research.native`'s C loop, its backward, the baseline rollout, the
per-sample gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from research import harness
from research.algos.bptt import BPTT, BPTTConfig, discount_weights, repeat_rows
from research.analysis.gradients import reward_to_go
from research.config import ConfigError
from research.harness import Writer
from research.policies import SquashedMLP
from research.rollout import fused_rollout, initial_state
from research.systems import System


@dataclass
class BPTTBlendConfig(BPTTConfig):
    """BPTT with the alpha-order blend of first- and zeroth-order gradients of noisy rollouts."""

    action_noise: float = 0.3
    """sigma: std of the Gaussian action noise both estimators smooth with (> 0; where: noise_placement)."""
    noise_placement: Literal["pre_squash", "action"] = "pre_squash"
    """'pre_squash': added to the MLP's output before the tanh (as SHAC and BPTT's action_noise); 'action': added
    to the squashed action, the physics clipping it (as research/analysis/gradients.py)."""
    alpha: float = -1.0
    """Weight of the first-order estimate: in [0, 1] fixed; negative: chosen each iteration (module docstring)."""
    epsilon: float = 10.0
    """Suh et al.'s tolerance: how far (gradient norm) the blend may lie from the zeroth-order mean, counted from
    the edge of that mean's confidence radius (inf: plain inverse-variance weighting)."""
    ci_z: float = 2.0
    """Confidence radius of the zeroth-order mean, in standard errors: r = ci_z * sqrt(v0 / num_envs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window or self.rollout != "fused" or self.compile:
            raise ConfigError(f"bptt_blend needs full-horizon fused rollouts: window = 0, rollout = 'fused', "
                              f"compile = false, got window={self.window}, rollout={self.rollout!r}, "
                              f"compile={self.compile}")
        if not self.action_noise > 0:
            raise ConfigError(f"action_noise must be > 0 (both estimators smooth with it), got {self.action_noise}")
        if self.num_envs < 2:
            raise ConfigError(f"num_envs must be >= 2 (the variances need two samples), got {self.num_envs}")
        if math.isnan(self.alpha) or self.alpha > 1:
            raise ConfigError(f"alpha must be in [0, 1] (fixed) or negative (adaptive), got {self.alpha}")
        if not self.epsilon >= 0 or not 0 <= self.ci_z < math.inf:
            raise ConfigError(f"epsilon must be >= 0 (inf allowed) and ci_z finite >= 0, got {self.epsilon}, "
                              f"{self.ci_z}")


class BlendEstimates(NamedTuple):
    """Both per-sample estimates of the gradient of the loss, from the same ``N`` noisy rollouts of ``H`` steps."""

    first_order: Tensor  # [N, P] reparameterised, parameters flattened in policy.named_parameters() order
    zeroth_order: Tensor  # [N, P] likelihood ratio with the noise-free reward-to-go baseline
    loss: Tensor  # [] BPTT's loss of the noisy rollouts (minus the weighted mean reward), detached
    rewards: Tensor  # [N, H] detached


class Alpha(NamedTuple):
    """The blend's weight and what chose it (floats)."""

    alpha: float  # weight of the first-order mean, in [0, 1]
    var_first_order: float  # v1: trace of the per-sample covariance of the first-order estimates
    var_zeroth_order: float  # v0: the same of the zeroth-order ones
    gap: float  # |g1 - g0|
    radius: float  # r: confidence radius of the zeroth-order mean


def gaussian_mean(policy: SquashedMLP, placement: str) -> tuple[nn.Module, str]:
    """The module whose output is the noise's mean (``policy.net`` before the squash, else the policy) and the
    prefix its parameters carry in ``policy.named_parameters()``."""
    return (policy.net, "net.") if placement == "pre_squash" else (policy, "")


def per_sample_terms(policy: SquashedMLP, placement: str, observations: Tensor, weights: Tensor) -> Tensor:
    """Per-sample ``sum_t weights[i, t] . grad_theta mu_theta(observations[i, t])``, ``[N, P]``.

    ``observations [N, H, obs_dim]`` and ``weights [N, H, act_dim]`` are held fixed; each sample gets its own
    (expanded) copy of the parameters under ``torch.func.vmap``, so one backward pass gives all ``N`` rows.
    """
    module, prefix = gaussian_mean(policy, placement)
    n = observations.shape[0]
    names = [name for name, _ in policy.named_parameters()]
    copies = {name: p.detach().expand(n, *p.shape).requires_grad_(True) for name, p in policy.named_parameters()}
    with torch.enable_grad():
        local = {name.removeprefix(prefix): copy for name, copy in copies.items()}
        mean = vmap(lambda params, obs: functional_call(module, params, (obs,)))(local, observations.detach())
        grads = torch.autograd.grad((weights.detach() * mean).sum(), [copies[name] for name in names])
    return torch.cat([g.reshape(n, -1) for g in grads], dim=1)


def noisy_behaviour(policy: SquashedMLP, placement: str, sigma: float, eps: Tensor, perturbation: Tensor
                    ) -> Callable[[Tensor], Tensor]:
    """The rollout's policy: at its ``t``-th call, ``m * tanh(net(o) + sigma * eps[:, t] + perturbation[:, t])``
    (``pre_squash``) or ``m * tanh(net(o)) + sigma * eps[:, t] + perturbation[:, t]`` (``action``); ``eps`` and
    ``perturbation`` are ``[N, H, act_dim]``."""
    step = iter(range(eps.shape[1]))

    def act(observation: Tensor) -> Tensor:
        t = next(step)
        shift = sigma * eps[:, t] + perturbation[:, t]
        if placement == "pre_squash":
            return policy.max_torque * torch.tanh(policy.net(observation) + shift)
        return policy(observation) + shift

    return act


def blend_estimates(policy: SquashedMLP, system: System, state: Tensor, params: Any, horizon: int, discount: float,
                    sigma: float, placement: str, eps: Tensor, torque_noise: Tensor | None = None) -> BlendEstimates:
    """Both per-sample gradient estimates of BPTT's loss from ``N`` noisy rollouts (see the module docstring).

    Args:
        policy: the squashed MLP.
        system: the :class:`~research.systems.System`.
        state: start states ``[N, state_dim]``.
        params: the system's parameters, each ``[N]``.
        horizon: ``H``.
        discount: the loss's discount (weights normalised as in BPTT's ``horizon_loss``).
        sigma: the action noise's std.
        placement: ``"pre_squash"`` or ``"action"``.
        eps: standard-normal action noise ``[N, H, act_dim]``.
        torque_noise: the system's own noise block ``[N, H, noise_dim]`` (``system.noise_block``), replayed by the
            noise-free baseline rollout; ``None`` when the system has none.

    Returns:
        :class:`BlendEstimates`: ``first_order`` and ``zeroth_order`` ``[N, P]``, the loss and the rewards.
    """
    perturbation = torch.zeros_like(eps, requires_grad=True)
    rollout = fused_rollout(noisy_behaviour(policy, placement, sigma, eps, perturbation), initial_state(state),
                            params, horizon, system=system, noise=torque_noise, keep_trajectory=True, native=False)
    weights = discount_weights(horizon, discount, rollout.rewards)  # [H]
    objective = (rollout.rewards * weights).sum(-1)  # [N]: J_i
    (adjoints,) = torch.autograd.grad(objective.sum(), [perturbation])  # [N, H, A]: dJ_i / du_t
    with torch.no_grad():
        baseline = fused_rollout(policy, initial_state(state), params, horizon, system=system,
                                 noise=torque_noise).rewards
        rewards = rollout.rewards.detach()
        advantages = reward_to_go(rewards * weights) - reward_to_go(baseline * weights)  # [N, H]
    observations = rollout.observations.detach()
    first = per_sample_terms(policy, placement, observations, -adjoints)
    zeroth = per_sample_terms(policy, placement, observations, -advantages.unsqueeze(-1) * eps / sigma)
    return BlendEstimates(first, zeroth, -objective.detach().mean(), rewards)


def choose_alpha(first_order: Tensor, zeroth_order: Tensor, epsilon: float, ci_z: float,
                 fixed: float | None = None) -> Alpha:
    """The blend's weight from per-sample estimates ``[B, P]`` of both (independent rows; see the module
    docstring); ``fixed`` (in ``[0, 1]``) is returned as it is, with the statistics."""
    samples = first_order.shape[0]
    g1, g0 = first_order.mean(0), zeroth_order.mean(0)
    v1, v0 = (first_order.var(0).sum().item(), zeroth_order.var(0).sum().item())
    gap = (g1 - g0).norm().item()
    radius = ci_z * math.sqrt(v0 / samples) if math.isfinite(v0) else math.inf
    if fixed is not None:
        return Alpha(fixed, v1, v0, gap, radius)
    if not (math.isfinite(v1) and math.isfinite(gap)):
        return Alpha(0.0, v1, v0, gap, radius)  # an exploding first-order estimate: the zeroth order alone
    alpha = v0 / (v0 + v1) if v0 + v1 > 0 else 1.0
    budget = epsilon - radius  # how far the blend may move from the zeroth-order mean
    if alpha * gap > budget:
        alpha = budget / gap if budget > 0 else 0.0
    return Alpha(min(max(alpha, 0.0), 1.0), v1, v0, gap, radius)


def blend(first_order: Tensor, zeroth_order: Tensor, alpha: float) -> Tensor:
    """``alpha * mean(first_order) + (1 - alpha) * mean(zeroth_order)``, ``[P]``; the mean left out at weight 0
    (so a non-finite estimate at weight 0 does not poison the blend)."""
    if alpha == 0.0:
        return zeroth_order.mean(0)
    if alpha == 1.0:
        return first_order.mean(0)
    return alpha * first_order.mean(0) + (1.0 - alpha) * zeroth_order.mean(0)


class BPTTBlend(BPTT):
    """:class:`research.algos.bptt.BPTT` whose gradient is the alpha-order blend (its state is BPTT's)."""

    config: BPTTBlendConfig

    def step(self, iteration: int) -> dict[str, Tensor | float]:
        config, run, system = self.config, self.run, self.system
        if system.ranges:
            self.params = system.params(self.batch, run.generator, run.device, run.dtype)
        state = system.initial_state(self.batch, run.generator, run.device, run.dtype, params=self.params)
        samples = config.noise_samples
        state, params = repeat_rows(state, samples), repeat_rows(self.params, samples)
        rows = state.shape[0]
        eps = torch.randn((rows, self.horizon, system.action_dim), generator=run.generator, device=run.device,
                          dtype=run.dtype)
        torque_noise = system.noise_block((rows,), self.horizon, run.generator, state)
        estimates = blend_estimates(self.policy, system, state, params, self.horizon, self.discount,
                                    config.action_noise, config.noise_placement, eps, torque_noise)
        run.budget.add_steps(2 * estimates.rewards.numel())  # the noisy rollouts and their noise-free baselines
        first, zeroth = (x.reshape(config.num_envs, samples, -1).mean(1)
                         for x in (estimates.first_order, estimates.zeroth_order))
        chosen = choose_alpha(first, zeroth, config.epsilon, config.ci_z,
                              config.alpha if config.alpha >= 0 else None)
        gradient = blend(first, zeroth, chosen.alpha)
        self.optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in self.policy.parameters():
            p.grad = gradient[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        grad_norm = self.guard.clip(estimates.loss, self.policy.parameters(), config.grad_clip)
        if grad_norm is not None:
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        rewards = estimates.rewards
        return {"train/return": rewards.sum(-1).mean(), "train/reward_mean": rewards.mean(),
                "train/loss": estimates.loss, "train/grad_norm": math.nan if grad_norm is None else grad_norm,
                "train/lr": lr, "train/alpha": chosen.alpha, "train/var_first_order": chosen.var_first_order,
                "train/var_zeroth_order": chosen.var_zeroth_order, "train/gap": chosen.gap,
                "train/ci_radius": chosen.radius}


def train_bptt_blend(config: BPTTBlendConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy by BPTT with the alpha-order gradient blend; returns the summary."""
    return harness.train(config, BPTTBlend, writer, quiet, name="bptt_blend")
