"""Gymnasium Pendulum-v1 physics as pure tensor functions.

Everything here is a function of its inputs only: no RNG, no in-place operations, any batch shape, any device and
dtype. The TorchRL environment (:mod:`research.envs.pendulum`) and the fused rollout (:mod:`research.rollout`) both
call :func:`pendulum_step`, so the physics is written exactly once.

One step, from state ``(th, thdot)`` and torque ``u`` (Gymnasium's ``pendulum.py``)::

    u       = clip(u, -max_torque, max_torque)
    cost    = angle_normalize(th)**2 + 0.1 * thdot**2 + 0.001 * u**2        # on the state before the update
    thdot'  = clip(thdot + (3 g / (2 l) sin(th) + 3 / (m l**2) u) dt, -max_speed, max_speed)
    th'     = th + thdot' dt                                                  # semi-implicit Euler, th is not wrapped
    reward  = -cost

Non-finite torques are not checked on this hot path (a check would force a host sync every step): ``+-inf`` is
clipped to ``+-max_torque`` and behaves like a saturated torque, ``NaN`` propagates into the next state and the
reward. The trainers catch the resulting non-finite loss or gradient before it reaches any parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
G = 10.0
M = 1.0
L = 1.0

#: Default physical parameters of Gymnasium Pendulum-v1.
DEFAULT_PARAMS: dict[str, float] = {
    "g": G,
    "m": M,
    "l": L,
    "dt": DT,
    "max_speed": MAX_SPEED,
    "max_torque": MAX_TORQUE,
}

#: Parameters that must be strictly positive (a zero or negative value makes the physics meaningless).
POSITIVE_PARAMS = ("m", "l", "dt", "max_torque")

#: Per-step reward bounds of the default pendulum: ``-(pi**2 + 0.1 * 8**2 + 0.001 * 2**2)`` and 0.
REWARD_MIN = -(math.pi**2 + 0.1 * MAX_SPEED**2 + 0.001 * MAX_TORQUE**2)


class PendulumParams(NamedTuple):
    """Physical parameters, one tensor each of the batch shape ``[*B]`` (or broadcastable to it).

    A ``NamedTuple`` is a pytree, so ``torch.compile`` and ``torch.func`` see through it.
    """

    g: Tensor
    m: Tensor
    l: Tensor  # noqa: E741  (the pendulum's length is called l in Gymnasium)
    dt: Tensor
    max_speed: Tensor
    max_torque: Tensor

    @classmethod
    def from_mapping(cls, params: Mapping[str, Tensor]) -> PendulumParams:
        """Builds the tuple from a mapping such as ``td["params"]`` (a ``TensorDict``)."""
        return cls(*(params[name] for name in cls._fields))

    @classmethod
    def default(
        cls,
        batch_shape: Sequence[int] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **overrides: float,
    ) -> PendulumParams:
        """Gymnasium's constants, expanded to ``batch_shape``; keyword arguments override single values."""
        unknown = set(overrides) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown physical parameter(s) {sorted(unknown)}; expected some of {cls._fields}")
        values = {**DEFAULT_PARAMS, **overrides}
        return cls(
            *(torch.full(tuple(batch_shape), float(values[name]), device=device, dtype=dtype) for name in cls._fields)
        )


def angle_normalize(x: Tensor) -> Tensor:
    """Wraps angles into ``[-pi, pi)`` exactly as Gymnasium does: ``((x + pi) % (2 pi)) - pi``."""
    return ((x + math.pi) % (2 * math.pi)) - math.pi


def observation(th: Tensor, thdot: Tensor) -> Tensor:
    """Gymnasium's observation ``[cos th, sin th, thdot]``: ``[*B]`` and ``[*B]`` -> ``[*B, 3]``."""
    return observe(th, thdot)[0]


class StepConstants(NamedTuple):
    """What one step needs from :class:`PendulumParams`, derived once per rollout (each ``[*B]`` or broadcastable).

    A fused loop calls :func:`step_constants` once and passes the result to every :func:`pendulum_step`, which saves
    the eager loop a handful of kernels (and their backward nodes) per step; gradients still reach ``g``, ``m``,
    ``l`` and ``dt`` through it.
    """

    gravity: Tensor  # 3 g / (2 l): angular acceleration per unit sin(th)
    inverse_inertia: Tensor  # 3 / (m l**2): angular acceleration per unit torque
    dt: Tensor
    max_speed: Tensor
    max_torque: Tensor


def step_constants(params: PendulumParams) -> StepConstants:
    """The :class:`StepConstants` of ``params`` (Gymnasium's expressions, evaluated in the same order)."""
    return StepConstants(
        gravity=3.0 * params.g / (2.0 * params.l),
        inverse_inertia=3.0 / (params.m * params.l**2),
        dt=params.dt,
        max_speed=params.max_speed,
        max_torque=params.max_torque,
    )


def observe(th: Tensor, thdot: Tensor) -> tuple[Tensor, Tensor]:
    """``(observation(th, thdot), sin(th))``: the observation and the ``sin(th)`` that :func:`pendulum_step` reuses."""
    sin_th = th.sin()
    return torch.stack((th.cos(), sin_th, thdot), dim=-1), sin_th


def pendulum_step(
    th: Tensor,
    thdot: Tensor,
    torque: Tensor,
    params: PendulumParams | StepConstants,
    sin_th: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Pendulum-v1 transition.

    Args:
        th: angle ``[*B]`` (0 is upright; not wrapped).
        thdot: angular velocity ``[*B]``.
        torque: applied torque ``[*B]`` (the action without its trailing dimension); clipped to ``max_torque``.
        params: physical parameters, each ``[*B]`` or broadcastable to it, or their :func:`step_constants`.
        sin_th: ``sin(th)`` if the caller already has it (see :func:`observe`); computed otherwise.

    Returns:
        ``(next_th, next_thdot, reward)``, each ``[*B]``. The reward is computed on the state before the update.
    """
    c = step_constants(params) if isinstance(params, PendulumParams) else params
    sin_th = torch.sin(th) if sin_th is None else sin_th
    u = torch.clamp(torque, -c.max_torque, c.max_torque)
    wrapped = angle_normalize(th)
    # cost = wrapped**2 + 0.1 thdot**2 + 0.001 u**2, as two fused multiply-adds
    cost = torch.addcmul(torch.addcmul(wrapped * wrapped, thdot, thdot, value=0.1), u, u, value=0.001)
    accel = torch.addcmul(c.gravity * sin_th, c.inverse_inertia, u)
    next_thdot = torch.clamp(torch.addcmul(thdot, accel, c.dt), -c.max_speed, c.max_speed)
    next_th = torch.addcmul(th, next_thdot, c.dt)
    return next_th, next_thdot, -cost


def is_upright(th: Tensor, thdot: Tensor, angle_tol: float = 0.1, speed_tol: float = 1.0) -> Tensor:
    """``True`` where the pendulum stands upright: ``|angle_normalize(th)| < angle_tol`` and ``|thdot| < speed_tol``."""
    return (angle_normalize(th).abs() < angle_tol) & (thdot.abs() < speed_tol)


def validate_params(params: Mapping[str, Tensor] | PendulumParams, batch_shape: Sequence[int] | None = None) -> None:
    """Raises ``ValueError`` naming the field when a physical parameter is non-finite, non-positive or mis-shaped.

    ``dt``, ``m``, ``l`` and ``max_torque`` must be > 0, ``max_speed`` >= 0, every value finite; when
    ``batch_shape`` is given every parameter must broadcast to it. Costs one host sync (a single reduction).
    """
    mapping = params._asdict() if isinstance(params, PendulumParams) else params
    missing = [name for name in PendulumParams._fields if name not in mapping.keys()]
    if missing:
        raise ValueError(f"params is missing {missing}; expected the keys {list(PendulumParams._fields)}")
    values = {name: torch.as_tensor(mapping[name]) for name in PendulumParams._fields}
    if batch_shape is not None:
        for name, value in values.items():
            try:
                torch.broadcast_shapes(value.shape, tuple(batch_shape))
            except RuntimeError:
                raise ValueError(
                    f"params.{name} has shape {list(value.shape)}, which does not match the batch shape "
                    f"{list(batch_shape)}"
                ) from None
    bad = torch.stack(
        [
            (~torch.isfinite(v)).any() | ((v <= 0).any() if name in POSITIVE_PARAMS else (v < 0).any())
            for name, v in values.items()
        ]
    )
    if not bool(bad.any()):
        return
    for name, value in values.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"params.{name} contains NaN or inf; expected finite values")
        if name in POSITIVE_PARAMS and bool((value <= 0).any()):
            raise ValueError(f"params.{name} must be > 0, got min {value.min().item():g}")
        if bool((value < 0).any()):
            raise ValueError(f"params.{name} must be >= 0, got min {value.min().item():g}")


def sample_params(
    batch_shape: Sequence[int],
    ranges: Mapping[str, tuple[float, float]] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PendulumParams:
    """Domain randomisation: draws each parameter named in ``ranges`` uniformly from ``[low, high]``.

    Parameters not named keep Gymnasium's default. ``ranges={"g": (8.0, 12.0), "m": (0.8, 1.2)}`` gives a batch
    of pendulums with mixed gravities and masses. Each tensor has shape ``batch_shape``.
    """
    ranges = dict(ranges or {})
    unknown = set(ranges) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(
            f"unknown physical parameter(s) {sorted(unknown)} in ranges; expected some of {list(DEFAULT_PARAMS)}"
        )
    out = {}
    for name in PendulumParams._fields:
        if name in ranges:
            low, high = (float(x) for x in ranges[name])
            if not (math.isfinite(low) and math.isfinite(high)) or high < low:
                raise ValueError(f"ranges[{name!r}] must be finite [low, high] with low <= high, got {ranges[name]}")
            u = torch.rand(tuple(batch_shape), generator=generator, device=device, dtype=dtype)
            out[name] = low + (high - low) * u
        else:
            out[name] = torch.full(tuple(batch_shape), DEFAULT_PARAMS[name], device=device, dtype=dtype)
    params = PendulumParams(**out)
    validate_params(params)
    return params


def sample_initial_state(
    batch_shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Gymnasium's reset distribution: ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]``, each of shape ``batch_shape``."""
    shape = tuple(batch_shape)
    th = (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0) * math.pi
    thdot = torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0
    return th, thdot
