"""Gymnasium Pendulum-v1 physics, with optional friction, torque noise and a wall, as pure tensor functions.

Everything here is a function of its inputs only: no RNG, no in-place operations, any batch shape, any device and
dtype. The TorchRL environment (:mod:`research.envs.pendulum`) and the fused rollout (:mod:`research.rollout`) both
call :func:`pendulum_step`, so the physics is written exactly once.

One step, from state ``(th, thdot)`` and commanded torque ``torque`` (Gymnasium's ``pendulum.py`` when every knob
is at its default)::

    u_cmd   = clip(torque, -max_torque, max_torque)
    u       = clip(torque + torque_noise * noise, -max_torque, max_torque)   # noise ~ N(0, 1), given by the caller
    cost    = angle_normalize(th)**2 + 0.1 * thdot**2 + 0.001 * u_cmd**2     # on the state before the update
    tau     = u - damping * thdot - friction * s(thdot)  [- the soft-wall penalty]
    thdot'  = clip(thdot + (3 g / (2 l) sin(th) + 3 / (m l**2) tau) dt, -max_speed, max_speed)
    th'     = th + thdot' dt                              [then the hard-wall reflection]
    reward  = -cost

with ``s(v) = sign(v)`` (``sign(0) = 0``) when ``friction_width == 0`` and ``tanh(v / friction_width)`` otherwise.

The wall (``wall_angle = phi`` finite, in ``(0, pi)``, beside upright) is a thin obstacle at the physical angle
``phi``; with a wall, ``th`` lives in ``[phi - 2 pi, phi]`` (:func:`to_wall_range` represents a fresh angle there), so
the two ends of the range are the two faces of the wall. ``wall_stiffness == 0`` is hard contact: after the Euler
step a crossing of ``phi`` is reflected, ``th' = phi - e (th' - phi)``, ``thdot' = -e thdot'`` (likewise at
``lo = phi - 2 pi``: ``th' = lo + e (lo - th')``), ``e = wall_restitution``. ``wall_stiffness = k > 0`` is soft
contact: a penalty torque ``-k (th - phi)`` while ``th > phi`` (``-k (th - lo)`` while ``th < lo``), from the state
before the step, and no reflection.

Every knob at its default (:data:`DEFAULT_PARAMS`) gives Gymnasium's step with the same operations, bit for bit:
which optional terms a step computes is static Python information, a :class:`PhysicsFeatures` derived once per
rollout (from a preset, or from the values with one host sync in :func:`step_constants`), never a per-step branch on
data. Computing a term whose knob is at its neutral value changes nothing (``0 * x`` terms, a wall at ``+inf``), so
features that cover more than the parameters need are always correct, only slower.

Non-finite torques are not checked on this hot path (a check would force a host sync every step): ``+-inf`` is
clipped to ``+-max_torque`` and behaves like a saturated torque, ``NaN`` propagates into the next state and the
reward. The trainers catch the resulting non-finite loss or gradient before it reaches any parameter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from research.systems.base import Param, System, params_tuple, validate_values

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
G = 10.0
M = 1.0
L = 1.0
TWO_PI = 2.0 * math.pi
#: The cost's weights on the speed and on the torque (Gymnasium's; :mod:`research.native` reads them from here).
COST_SPEED = 0.1
COST_TORQUE = 0.001

#: The pendulum's parameters, one row each: Gymnasium Pendulum-v1's constants, then the knobs at their neutral
#: values. Everything else (the parameter tuple, defaults, validation, configs) is built from this table.
PARAMS: tuple[Param, ...] = (
    Param("g", G, "gravity (m/s^2)", low=0.0),
    Param("m", M, "mass of the rod (kg)", low=0.0, low_open=True),
    Param("l", L, "length of the rod (m)", low=0.0, low_open=True),
    Param("dt", DT, "time step (s)", low=0.0, low_open=True),
    Param("max_speed", MAX_SPEED, "angular speed limit (rad/s), clipped after every step", low=0.0),
    Param("max_torque", MAX_TORQUE, "torque limit (N m): actions are clipped to +-max_torque", low=0.0,
          low_open=True),
    Param("damping", 0.0, "b: viscous joint friction, torque -b thdot", low=0.0, term="damping"),
    Param("friction", 0.0, "mu: dry (Coulomb) friction, torque -mu s(thdot)", low=0.0, term="friction"),
    Param("friction_width", 0.0, "eps: s = sign(thdot) when 0, tanh(thdot / eps) when > 0", low=0.0,
          term="friction"),
    Param("torque_noise", 0.0, "sigma: std of the Gaussian added to the commanded torque", low=0.0, term="noise"),
    Param("wall_angle", math.inf, "phi: a thin wall at this angle beside upright, +inf for none", low=0.0,
          high=math.pi, low_open=True, high_open=True, allow_inf=True, term="wall"),
    Param("wall_restitution", 0.0, "e: the hard wall's bounce (0 stops, 1 reflects the speed)", low=0.0, high=1.0,
          term="wall"),
    Param("wall_stiffness", 0.0, "k: 0 = hard contact, > 0 = penalty torque -k * penetration", low=0.0,
          term="wall"),
)

#: Default physical parameters: Gymnasium Pendulum-v1's constants, then the knobs at their neutral values.
DEFAULT_PARAMS: dict[str, float] = {p.name: p.default for p in PARAMS}

#: Gymnasium's own parameters (every mapping of parameters must hold these; the knobs may be left out).
GYMNASIUM_FIELDS = tuple(p.name for p in PARAMS if p.term is None)
#: The optional physics knobs; at their default values they leave Gymnasium's physics unchanged.
KNOB_FIELDS = tuple(p.name for p in PARAMS if p.term is not None)

#: Parameters that must be strictly positive (a zero or negative value makes the physics meaningless).
POSITIVE_PARAMS = tuple(p.name for p in PARAMS if p.low == 0.0 and p.low_open and not p.allow_inf)

#: Per-step reward bounds of the default pendulum: ``-(pi**2 + 0.1 * 8**2 + 0.001 * 2**2)`` and 0.
REWARD_MIN = -(math.pi**2 + COST_SPEED * MAX_SPEED**2 + COST_TORQUE * MAX_TORQUE**2)


class PendulumParams(params_tuple("_PendulumParams", PARAMS)):
    """Physical parameters, one tensor each of the batch shape ``[*B]`` (or broadcastable to it).

    Built from :data:`PARAMS` (one field per row, in its order). A ``NamedTuple`` is a pytree, so ``torch.compile``
    and ``torch.func`` see through it. The knobs after ``max_torque`` default to their neutral Python floats, so
    ``PendulumParams(g, m, l, dt, max_speed, max_torque)`` still builds Gymnasium's pendulum; :meth:`default` and
    :func:`sample_params` give tensors for every field.
    """

    __slots__ = ()

    @classmethod
    def from_mapping(cls, params: Mapping[str, Tensor]) -> PendulumParams:
        """Builds the tuple from a mapping such as ``td["params"]`` (a ``TensorDict``); absent knobs take defaults."""
        keys = set(params.keys())
        return cls(*(params[name] if name in keys or name in GYMNASIUM_FIELDS else DEFAULT_PARAMS[name]
                     for name in cls._fields))

    @classmethod
    def default(
        cls,
        batch_shape: Sequence[int] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **overrides: float,
    ) -> PendulumParams:
        """Gymnasium's constants, expanded to ``batch_shape``; keyword arguments override single values.

        ``PendulumParams.default((8,), damping=0.1)`` is a batch of 8 damped pendulums.
        """
        unknown = set(overrides) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown physical parameter(s) {sorted(unknown)}; expected some of {cls._fields}")
        values = {**DEFAULT_PARAMS, **overrides}
        return cls(
            *(torch.full(tuple(batch_shape), float(values[name]), device=device, dtype=dtype) for name in cls._fields)
        )


@dataclass(frozen=True)
class PhysicsFeatures:
    """Which optional terms a step computes: static Python flags, fixed for a whole rollout.

    All ``False`` (:data:`GYMNASIUM_FEATURES`) is Gymnasium's step, operation for operation. A flag that is set
    while its knob is neutral somewhere in the batch is harmless (the term adds exactly zero there), so the union
    ``a | b`` of two feature sets covers both. Build them with :func:`physics_features` (one host sync) or from a
    preset (:attr:`research.envs.presets.Physics.features`, no sync).
    """

    damping: bool = False
    """Some pendulum has ``damping > 0``."""
    friction_sign: bool = False
    """Some pendulum has ``friction > 0`` with ``friction_width == 0`` (exact sign)."""
    friction_smooth: bool = False
    """Some pendulum has ``friction > 0`` with ``friction_width > 0`` (tanh)."""
    noise: bool = False
    """Some pendulum has ``torque_noise > 0`` (the step then needs ``noise``)."""
    hard_wall: bool = False
    """Some pendulum has a finite ``wall_angle`` with ``wall_stiffness == 0``."""
    soft_wall: bool = False
    """Some pendulum has a finite ``wall_angle`` with ``wall_stiffness > 0``."""

    @property
    def friction(self) -> bool:
        return self.friction_sign or self.friction_smooth

    @property
    def wall(self) -> bool:
        return self.hard_wall or self.soft_wall

    def __contains__(self, term: str) -> bool:
        """``"noise" in features``: the generic spelling of :class:`research.systems.System` features."""
        return bool(getattr(self, term, False))

    def __or__(self, other: PhysicsFeatures) -> PhysicsFeatures:
        return PhysicsFeatures(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})


#: Gymnasium's physics: no optional term.
GYMNASIUM_FEATURES = PhysicsFeatures()


def _is_tensor(value: object) -> bool:
    return isinstance(value, Tensor)


def _isfinite(x: Tensor | float) -> Tensor | bool:
    return torch.isfinite(x) if isinstance(x, Tensor) else math.isfinite(x)


def feature_rules(p: PendulumParams) -> dict[str, Tensor | bool]:
    """``{flag of PhysicsFeatures: condition}`` on the values ``p`` (floats or tensors): which optional term of
    :func:`pendulum_step` each knob switches on. A new knob adds its row to :data:`PARAMS`, its rule here and its
    term in the step."""
    wall = _isfinite(p.wall_angle)
    return {
        "damping": p.damping > 0,
        "friction_sign": (p.friction > 0) & (p.friction_width == 0),
        "friction_smooth": (p.friction > 0) & (p.friction_width > 0),
        "noise": p.torque_noise > 0,
        "hard_wall": wall & (p.wall_stiffness == 0),
        "soft_wall": wall & (p.wall_stiffness > 0),
    }


def physics_features(params: PendulumParams | Mapping[str, Tensor]) -> PhysicsFeatures:
    """The :class:`PhysicsFeatures` that ``params`` need, read from the values: one host sync (none when every knob
    is a Python float, as in ``PendulumParams(g, m, l, dt, max_speed, max_torque)``). Call it once per rollout, not
    per step."""
    if not isinstance(params, PendulumParams):
        params = PendulumParams.from_mapping(params)
    if not any(_is_tensor(getattr(params, name)) for name in KNOB_FIELDS):
        return PhysicsFeatures(**{k: bool(v) for k, v in feature_rules(params).items()})
    knobs = params._replace(**{name: torch.as_tensor(getattr(params, name)) for name in KNOB_FIELDS})
    flags = torch.stack([torch.as_tensor(c).any() for c in feature_rules(knobs).values()]).tolist()
    return PhysicsFeatures(*flags)


def angle_normalize(x: Tensor) -> Tensor:
    """Wraps angles into ``[-pi, pi)`` exactly as Gymnasium does: ``((x + pi) % (2 pi)) - pi``."""
    return ((x + math.pi) % (2 * math.pi)) - math.pi


def wall_low(wall_angle: Tensor) -> Tensor:
    """The lower end of the wall's range, ``phi - 2 pi`` (``-inf`` where there is no wall): ``[*B]`` -> ``[*B]``."""
    return torch.where(torch.isfinite(wall_angle), wall_angle - TWO_PI, -math.inf)


def to_wall_range(th: Tensor, wall_angle: Tensor | float) -> Tensor:
    """The same physical angles represented in the wall's range ``[phi - 2 pi, phi]``: ``[*B]`` -> ``[*B]``.

    Angles already in the range are returned unchanged (bit for bit), others are shifted by a multiple of ``2 pi``;
    where ``wall_angle`` is ``+inf`` (no wall) nothing changes. For fresh states (a reset): a state carried from a
    previous step is already in the range (or, with a soft wall, penetrating it on purpose) and must not be moved.
    """
    phi = torch.as_tensor(wall_angle, dtype=th.dtype, device=th.device)
    above = torch.clamp(torch.ceil((th - phi) / TWO_PI), min=0.0)
    below = torch.clamp(torch.floor((th - wall_low(phi)) / TWO_PI), max=0.0)
    return th - TWO_PI * (above + below)


def observation(th: Tensor, thdot: Tensor) -> Tensor:
    """Gymnasium's observation ``[cos th, sin th, thdot]``: ``[*B]`` and ``[*B]`` -> ``[*B, 3]``."""
    return observe(th, thdot)[0]


class StepConstants(NamedTuple):
    """What one step needs from :class:`PendulumParams`, derived once per rollout (each ``[*B]`` or broadcastable).

    A fused loop calls :func:`step_constants` once and passes the result to every :func:`pendulum_step`, which saves
    the eager loop a handful of kernels (and their backward nodes) per step; gradients still reach every parameter
    through it. The knob constants are ``None`` unless ``features`` asks for their term.
    """

    gravity: Tensor  # 3 g / (2 l): angular acceleration per unit sin(th)
    inverse_inertia: Tensor  # 3 / (m l**2): angular acceleration per unit torque
    dt: Tensor
    max_speed: Tensor
    max_torque: Tensor
    damping: Tensor | None = None  # b
    friction: Tensor | None = None  # mu
    friction_width: Tensor | None = None  # eps where eps > 0, else 1 (so thdot / width is finite everywhere)
    friction_smooth: Tensor | None = None  # bool: eps > 0 (only when sign and tanh friction are mixed)
    torque_noise: Tensor | None = None  # sigma
    wall_angle: Tensor | None = None  # phi (+inf: no wall), for representing reset states
    wall_high: Tensor | None = None  # hard walls: phi (+inf where none)
    wall_low: Tensor | None = None  # hard walls: phi - 2 pi (-inf where none)
    wall_restitution: Tensor | None = None  # e
    wall_rebound: Tensor | None = None  # 1 + e
    soft_high: Tensor | None = None  # soft walls: phi (+inf where none)
    soft_low: Tensor | None = None  # soft walls: phi - 2 pi (-inf where none)
    wall_stiffness: Tensor | None = None  # k
    features: PhysicsFeatures = GYMNASIUM_FEATURES


def step_constants(params: PendulumParams, features: PhysicsFeatures | None = None) -> StepConstants:
    """The :class:`StepConstants` of ``params`` (Gymnasium's expressions, evaluated in the same order).

    Args:
        params: physical parameters, each ``[*B]`` or broadcastable to it.
        features: which optional terms to prepare; ``None`` reads them from ``params`` (:func:`physics_features`,
            one host sync). Pass them (e.g. from a preset) inside compiled code and to avoid the sync.
    """
    f = physics_features(params) if features is None else features
    like = params.g

    def knob(name: str) -> Tensor:
        value = getattr(params, name)
        return value if _is_tensor(value) else torch.tensor(float(value), dtype=like.dtype, device=like.device)

    extra: dict[str, Tensor] = {}
    if f.damping:
        extra["damping"] = knob("damping")
    if f.friction:
        extra["friction"] = knob("friction")
        if f.friction_smooth:
            eps = knob("friction_width")
            smooth = eps > 0
            extra["friction_width"] = torch.where(smooth, eps, torch.ones_like(eps))
            if f.friction_sign:
                extra["friction_smooth"] = smooth
    if f.noise:
        extra["torque_noise"] = knob("torque_noise")
    if f.wall:
        phi, k = knob("wall_angle"), knob("wall_stiffness")
        finite = torch.isfinite(phi)
        low = wall_low(phi)
        extra["wall_angle"] = phi
        if f.hard_wall:
            hard = finite & (k == 0)
            e = knob("wall_restitution")
            extra.update(wall_high=torch.where(hard, phi, math.inf), wall_low=torch.where(hard, low, -math.inf),
                         wall_restitution=e, wall_rebound=1.0 + e)
        if f.soft_wall:
            soft = finite & (k > 0)
            extra.update(soft_high=torch.where(soft, phi, math.inf), soft_low=torch.where(soft, low, -math.inf),
                         wall_stiffness=k)
    return StepConstants(
        gravity=3.0 * params.g / (2.0 * params.l),
        inverse_inertia=3.0 / (params.m * params.l**2),
        dt=params.dt,
        max_speed=params.max_speed,
        max_torque=params.max_torque,
        features=f,
        **extra,
    )


def observe(th: Tensor, thdot: Tensor) -> tuple[Tensor, Tensor]:
    """``(observation(th, thdot), sin(th))``: the observation and the ``sin(th)`` that :func:`pendulum_step` reuses."""
    sin_th = th.sin()
    return torch.stack((th.cos(), sin_th, thdot), dim=-1), sin_th


def _friction_direction(thdot: Tensor, c: StepConstants) -> Tensor:
    """``s(thdot)``: ``sign`` where ``friction_width == 0``, ``tanh(thdot / friction_width)`` where it is > 0."""
    if not c.features.friction_smooth:
        return torch.sign(thdot)
    smooth = torch.tanh(thdot / c.friction_width)
    if not c.features.friction_sign:
        return smooth
    return torch.where(c.friction_smooth, smooth, torch.sign(thdot))


def pendulum_step(
    th: Tensor,
    thdot: Tensor,
    torque: Tensor,
    params: PendulumParams | StepConstants,
    sin_th: Tensor | None = None,
    *,
    noise: Tensor | None = None,
    features: PhysicsFeatures | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Pendulum-v1 transition (with the knobs of :class:`PendulumParams`; see the module docstring).

    Args:
        th: angle ``[*B]`` (0 is upright; not wrapped; with a wall, in ``[phi - 2 pi, phi]``).
        thdot: angular velocity ``[*B]``.
        torque: commanded torque ``[*B]`` (the action without its trailing dimension); clipped to ``max_torque``.
        params: physical parameters, each ``[*B]`` or broadcastable to it, or their :func:`step_constants` (do
            that once per rollout: with raw parameters and no ``features`` every call costs a host sync).
        sin_th: ``sin(th)`` if the caller already has it (see :func:`observe`); computed otherwise.
        noise: standard-normal sample ``[*B]`` scaled by ``torque_noise``; needed only when the features include
            noise (``torque_noise > 0`` somewhere), ignored otherwise.
        features: which optional terms to compute when ``params`` are raw parameters (default: read from them);
            :class:`StepConstants` carry their own.

    Returns:
        ``(next_th, next_thdot, reward)``, each ``[*B]``. The reward is computed on the state before the update and
        charges the commanded (noise-free) torque.
    """
    c = step_constants(params, features) if isinstance(params, PendulumParams) else params
    f = c.features
    sin_th = torch.sin(th) if sin_th is None else sin_th
    u = u_cmd = torch.clamp(torque, -c.max_torque, c.max_torque)
    if f.noise:
        if noise is None:
            raise ValueError("noise must be a standard-normal sample of shape [*B] when torque_noise > 0, got None")
        u = torch.clamp(torch.addcmul(torque, c.torque_noise, noise), -c.max_torque, c.max_torque)
    wrapped = angle_normalize(th)
    # cost = wrapped**2 + 0.1 thdot**2 + 0.001 u**2, as two fused multiply-adds
    cost = torch.addcmul(torch.addcmul(wrapped * wrapped, thdot, thdot, value=0.1), u_cmd, u_cmd, value=0.001)
    tau = u
    if f.damping:
        tau = torch.addcmul(tau, c.damping, thdot, value=-1.0)
    if f.friction:
        tau = torch.addcmul(tau, c.friction, _friction_direction(thdot, c), value=-1.0)
    if f.soft_wall:
        # relu(-inf) = 0 where there is no soft wall: no NaN, no gradient
        tau = torch.addcmul(tau, c.wall_stiffness, torch.relu(c.soft_low - th) - torch.relu(th - c.soft_high))
    accel = torch.addcmul(c.gravity * sin_th, c.inverse_inertia, tau)
    next_thdot = torch.clamp(torch.addcmul(thdot, accel, c.dt), -c.max_speed, c.max_speed)
    next_th = torch.addcmul(th, next_thdot, c.dt)
    if f.hard_wall:
        over = torch.relu(next_th - c.wall_high)  # how far the step crossed phi (0 if not)
        under = torch.relu(c.wall_low - next_th)  # how far it crossed phi - 2 pi
        # th' - (1 + e) (th' - phi) = phi - e (th' - phi), and lo + e (lo - th') at the other face
        next_th = torch.addcmul(next_th, c.wall_rebound, under - over)
        next_thdot = torch.where(over + under > 0, -c.wall_restitution * next_thdot, next_thdot)
    return next_th, next_thdot, -cost


def is_upright(th: Tensor, thdot: Tensor, angle_tol: float = 0.1, speed_tol: float = 1.0) -> Tensor:
    """``True`` where the pendulum stands upright: ``|angle_normalize(th)| < angle_tol`` and ``|thdot| < speed_tol``."""
    return (angle_normalize(th).abs() < angle_tol) & (thdot.abs() < speed_tol)


def validate_params(params: Mapping[str, Tensor] | PendulumParams, batch_shape: Sequence[int] | None = None) -> None:
    """Raises ``ValueError`` naming the field when a physical parameter is out of its domain or mis-shaped.

    ``dt``, ``m``, ``l`` and ``max_torque`` must be > 0, every other parameter >= 0 and ``wall_restitution`` <= 1,
    every value finite except ``wall_angle``, which is ``+inf`` (no wall) or in ``(0, pi)``. Mappings may leave the
    knobs out (they take their defaults). When ``batch_shape`` is given every parameter must broadcast to it. Costs
    one host sync (a single reduction).
    """
    mapping = params._asdict() if isinstance(params, PendulumParams) else params
    validate_values(PARAMS, mapping, required=GYMNASIUM_FIELDS, batch_shape=batch_shape)


def sample_params(
    batch_shape: Sequence[int],
    ranges: Mapping[str, tuple[float, float]] | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    fixed: Mapping[str, float] | None = None,
) -> PendulumParams:
    """Domain randomisation: draws each parameter named in ``ranges`` uniformly from ``[low, high]``.

    Parameters not named keep their value in ``fixed``, else Gymnasium's default (:data:`DEFAULT_PARAMS`).
    ``ranges={"g": (8.0, 12.0), "m": (0.8, 1.2)}`` gives a batch of pendulums with mixed gravities and masses. The
    draws follow the field order of :class:`PendulumParams`, one ``torch.rand`` per ranged field. Each tensor has
    shape ``batch_shape``.
    """
    ranges = dict(ranges or {})
    fixed = dict(fixed or {})
    for what, names in (("ranges", ranges), ("fixed", fixed)):
        unknown = set(names) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(
                f"unknown physical parameter(s) {sorted(unknown)} in {what}; expected some of {list(DEFAULT_PARAMS)}"
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
            value = float(fixed.get(name, DEFAULT_PARAMS[name]))
            out[name] = torch.full(tuple(batch_shape), value, device=device, dtype=dtype)
    params = PendulumParams(**out)
    validate_params(params)
    return params


def sample_initial_state(
    batch_shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Gymnasium's reset distribution: ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]``, each of shape ``batch_shape``.

    With a wall, represent ``th`` in its range with :func:`to_wall_range` (or use
    :meth:`research.envs.presets.Physics.initial_state`).
    """
    shape = tuple(batch_shape)
    th = (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0) * math.pi
    thdot = torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2.0 - 1.0
    return th, thdot


@dataclass(frozen=True)
class Pendulum(System):
    """Gymnasium Pendulum-v1 (with the optional knobs of :data:`PARAMS`): one physics variant of it.

    State ``[*B, 2] = [th, thdot]`` (0 is upright; with a wall, ``th`` in ``[phi - 2 pi, phi]``), observation
    ``[*B, 3] = [cos th, sin th, thdot]``, action ``[*B, 1]`` (the torque), reward ``-cost`` (the module docstring).
    Presets: :data:`PRESETS`, e.g. ``Pendulum.PRESETS["wall"]`` or ``get_physics("wall")``::

        physics = get_physics("wall", overrides={"wall_restitution": 0.5}, ranges={"g": (9.0, 11.0)})
        params = physics.params((256,), generator=gen)        # PendulumParams, each [256]
        state = physics.initial_state((256,), generator=gen)   # [256, 2]: Gymnasium's reset, in the wall's range
    """

    system: ClassVar[str] = "pendulum"
    PARAMS: ClassVar[tuple[Param, ...]] = PARAMS
    Params: ClassVar[type] = PendulumParams
    state_names: ClassVar[tuple[str, ...]] = ("th", "thdot")
    observation_names: ClassVar[tuple[str, ...]] = ("cos_th", "sin_th", "thdot")
    action_names: ClassVar[tuple[str, ...]] = ("torque",)
    horizon: ClassVar[int] = 200
    action_bound: ClassVar[str] = "max_torque"
    noise_dim: ClassVar[int] = 1
    noise_param: ClassVar[str] = "torque_noise"
    native: ClassVar[bool] = True
    #: :meth:`is_success`: within this angle of upright (rad) and slower than this speed (rad/s) at the end.
    success_angle: ClassVar[float] = 0.5
    success_speed: ClassVar[float] = 1.0

    feature_rules = staticmethod(feature_rules)

    @functools.cached_property
    def features(self) -> PhysicsFeatures:
        """Which optional physics terms this variant needs (static, no host sync, computed once): pass to the
        rollouts."""
        return PhysicsFeatures(**{f.name: f.name in self._terms for f in fields(PhysicsFeatures)})

    def features_of(self, params: Any) -> PhysicsFeatures:
        return physics_features(params)

    @property
    def needs_noise(self) -> bool:
        return self.features.noise

    @property
    def max_torque(self) -> float:
        """The largest torque any pendulum of this variant accepts (what a policy should squash its output to)."""
        return self.max_action

    def params(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> PendulumParams:
        """Parameters for a batch of episodes, each ``[*batch_shape]``: ``ranges`` drawn from ``generator`` (in the
        field order of :class:`PendulumParams`), ``fixed`` values and defaults otherwise."""
        return sample_params(batch_shape, self.ranges, generator=generator, device=device, dtype=dtype,
                             fixed=self.fixed)

    def constants(self, params: Any = None, features: PhysicsFeatures | None = None,
                  like: Tensor | None = None) -> StepConstants:
        params = self.default_params(like if like is not None else torch.zeros(())) if params is None else params
        return step_constants(params, self.features if features is None else features)

    def initial_angles(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                       params: PendulumParams | None = None) -> tuple[Tensor, Tensor]:
        """Gymnasium's reset ``(th, thdot)``, each ``[*batch_shape]``: ``th ~ U[-pi, pi]``, ``thdot ~ U[-1, 1]``,
        with ``th`` represented in the wall's range ``[phi - 2 pi, phi]`` when there is a wall (the same physical
        angles, the same draws as without). ``params`` gives the wall angle when it is drawn per episode."""
        th, thdot = sample_initial_state(batch_shape, generator, device, dtype)
        if "wall_angle" in self.ranges:
            if params is None:
                raise ValueError(f"physics {self.name!r} draws wall_angle per episode: pass params= to initial_state")
            return to_wall_range(th, params.wall_angle), thdot
        if self.features.wall:
            th = to_wall_range(th, self.value("wall_angle"))
        return th, thdot

    def initial_state(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                      params: PendulumParams | None = None) -> Tensor:
        """Gymnasium's reset as states ``[*batch_shape, 2]`` (see :meth:`initial_angles`)."""
        return torch.stack(self.initial_angles(batch_shape, generator, device, dtype, params), dim=-1)

    def reset_state(self, batch_shape: Sequence[int], generator: torch.Generator | None, like: Tensor,
                    constants: StepConstants | None = None, features: PhysicsFeatures | None = None) -> Tensor:
        """Gymnasium's reset inside a rollout: with a wall (in ``features``), the angle in the wall's range of each
        pendulum (``constants.wall_angle``)."""
        features = self.features if features is None else features
        th, thdot = sample_initial_state(batch_shape, generator, like.device, like.dtype)
        if features.wall:
            th = to_wall_range(th, constants.wall_angle if constants is not None else self.value("wall_angle"))
        return torch.stack((th, thdot), dim=-1)

    def represent(self, state: Tensor, params: PendulumParams | None = None) -> Tensor:
        """Fresh states ``[*B, 2]`` with their angles represented in the wall's range (unchanged without a wall)."""
        if not self.features.wall:
            return state
        wall_angle = params.wall_angle if params is not None else self.value("wall_angle")
        th, thdot = state.unbind(-1)
        return torch.stack((to_wall_range(th, wall_angle), thdot), dim=-1)

    def observe(self, state: Tensor) -> Tensor:
        return observation(state[..., 0], state[..., 1])

    def observe_for_step(self, state: Tensor) -> tuple[Tensor, Tensor]:
        return observe(state[..., 0], state[..., 1])

    def step(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None,
             aux: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:func:`pendulum_step` on states ``[*B, 2]`` and actions ``[*B, 1]`` (``noise [*B, 1]``)."""
        if constants is None:
            constants = self.constants(like=state)
        elif isinstance(constants, PendulumParams):
            constants = step_constants(constants, self.features)
        th, thdot, reward = pendulum_step(state[..., 0], state[..., 1], action[..., 0], constants, aux,
                                          noise=None if noise is None else noise[..., 0])
        return torch.stack((th, thdot), dim=-1), reward

    @torch.no_grad()
    def contact(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None) -> Tensor:
        """``[*B]`` bool: the step touches the wall. Hard wall: the Euler step crosses ``phi`` (or ``phi - 2 pi``)
        and is reflected, recomputed here without the reflection (the same operations as :func:`pendulum_step`);
        soft wall: the angle before the step penetrates the wall, so the penalty torque ``-k * penetration`` acts.
        No wall in the features: all ``False``."""
        if constants is None:
            constants = self.constants(like=state)
        elif isinstance(constants, PendulumParams):
            constants = step_constants(constants, self.features)
        f = constants.features
        th = state[..., 0]
        touched = torch.zeros(th.shape, dtype=torch.bool, device=th.device)
        if f.soft_wall:
            touched = (th > constants.soft_high) | (th < constants.soft_low)
        if f.hard_wall:
            free = constants._replace(features=PhysicsFeatures(**{**{g.name: getattr(f, g.name) for g in fields(f)},
                                                                  "hard_wall": False}))
            next_th, _, _ = pendulum_step(th, state[..., 1], action[..., 0], free,
                                          noise=None if noise is None else noise[..., 0])
            touched = touched | (next_th > constants.wall_high) | (next_th < constants.wall_low)
        return touched

    def goal_error(self, state: Tensor) -> Tensor:
        """``|angle_normalize(th)|``: radians from upright."""
        return angle_normalize(state[..., 0]).abs()

    def is_success(self, state: Tensor) -> Tensor:
        return is_upright(state[..., 0], state[..., 1], self.success_angle, self.success_speed)

    def draw(self, state: Tensor, action: Tensor | None = None, size: int = 256) -> Any:
        from research.render import pendulum_frame

        return pendulum_frame(state[..., 0], action, size)


# Why each magnitude: the comment above each preset. As a check that each one matters, the best mean 200-step
# return of a heuristic controller (bang-bang energy pumping, then u = -k1 angle - k2 thdot near upright; 300 gain
# settings tried per preset) from the evaluator's 1000 states: default -149.7, weak -250.3, damped -163.3,
# coulomb -177.0, coulomb_smooth -184.1, wall -195.3, wall_soft -194.7, noisy -159.4 (fixed noise seed),
# randomized -149.3 (mean unchanged: pumping adapts to m and l, but the worst episode falls from -372 to -511).
# These are lower bounds on each optimum, not the optimum (the dynamic-programming yardstick measures that).
PRESETS: dict[str, Pendulum] = {
    p.name: p
    for p in (
        Pendulum("default", description="Gymnasium Pendulum-v1, unchanged."),
        # Half the torque: gravity (15 sin th rad/s^2) beats the motor (3 rad/s^2) everywhere beyond 0.2 rad of
        # upright, so a swing-up needs several pumps and the credit for the final hold lies far back in time.
        Pendulum("weak", {"max_torque": 1.0}, description="max_torque 1: more pumps, longer credit assignment."),
        # b = 0.1: the damping torque reaches 0.8 (40% of max_torque) at the speed limit, enough to cost energy
        # every swing and lengthen the swing-up, small enough that the default swing-up still works.
        Pendulum("damped", {"damping": 0.1}, description="viscous joint friction b = 0.1."),
        # mu = 0.5 (a quarter of max_torque) with the exact sign: a discontinuous torque at thdot = 0 whose
        # gradient is zero (first-order gradients are biased there, Suh et al. 2022).
        Pendulum("coulomb", {"friction": 0.5}, description="dry friction mu = 0.5, exact sign(thdot)."),
        # The same friction through tanh(thdot / 0.1): smooth, and close to the sign beyond 0.2 rad/s, so it is
        # the differentiable surrogate of "coulomb" (a steep slope mu / eps = 5 near rest).
        Pendulum("coulomb_smooth", {"friction": 0.5, "friction_width": 0.1},
                description="dry friction mu = 0.5 through tanh(thdot / 0.1)."),
        # A thin wall 45 degrees past upright on the positive side. Angles beyond it must swing the long way round;
        # overshooting upright hits it, and at pi/4 gravity (10.6 rad/s^2) beats the motor (6 rad/s^2), so a slow
        # hit leaves the pendulum resting on the wall. e = 0.5 lets gradients pass through a contact (scaled by -e)
        # and lets a fast hit bounce free.
        Pendulum("wall", {"wall_angle": math.pi / 4, "wall_restitution": 0.5},
                description="hard wall at pi/4, restitution 0.5 (reflected after the Euler step)."),
        # The same wall as a penalty spring k = 100: contact frequency sqrt(3 k) = 17 rad/s, resolved over ~4 steps
        # of dt = 0.05 (semi-implicit Euler is stable below 2 / dt = 40 rad/s), penetration ~0.46 rad at the speed
        # limit. Smooth but stiff: large, high-variance gradients instead of a discontinuity.
        Pendulum("wall_soft", {"wall_angle": math.pi / 4, "wall_stiffness": 100.0},
                description="soft wall at pi/4, penalty torque -100 * penetration."),
        # sigma = 0.5 (a quarter of max_torque) per step, added before the torque clip; the cost charges the
        # commanded torque. The evaluator draws the noise from a fixed seed, so every method meets the same noise.
        Pendulum("noisy", {"torque_noise": 0.5}, description="Gaussian torque noise, std 0.5 per step."),
        # m and l drawn per episode within +-30%: inertia m l^2 / 3 spans 0.16-0.56 and gravity 3 g / (2 l) spans
        # 11.5-21.4 rad/s^2, so one policy must swing up pendulums that need from one to several pumps.
        Pendulum("randomized", ranges={"m": (0.7, 1.3), "l": (0.7, 1.3)},
                description="m and l uniform in [0.7, 1.3] per episode."),
    )
}


#: The axes the presets vary along, each against default physics: ``(axis, presets, reference, what varies)``. The
#: study (``scripts/study.py``) reads its axes from here, so a new preset joins an axis where it is defined.
AXES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("smoothness", ("coulomb", "coulomb_smooth"), "default",
     "dry friction with an exact sign (zero gradient at rest, a jump in the force) against its tanh surrogate"),
    ("contact", ("wall", "wall_soft"), "default",
     "a hard wall with restitution (a reflection) against a stiff penalty spring"),
    ("noise", ("noisy",), "default", "Gaussian torque noise, std 0.5 per step"),
    ("horizon", ("weak", "damped"), "default",
     "half the torque (several pumps, credit far back in time) and viscous damping (energy lost every swing)"),
    ("model mismatch", ("randomized",), "default", "m and l drawn per episode within +-30%"),
)

Pendulum.PRESETS = PRESETS


def get_physics(
    name: str,
    overrides: Mapping[str, float] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> Pendulum:
    """The pendulum preset ``name`` with per-field ``overrides`` (fixed values) and ``ranges`` (per-episode draws)
    on top.

    An override pins a parameter that the preset draws, and a range draws one that it fixes; giving the same
    parameter in both raises. Unknown preset names and parameters raise ``ValueError`` listing the valid ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown physics {name!r}; expected one of {list(PRESETS)}")
    return PRESETS[name].override(overrides, ranges)
