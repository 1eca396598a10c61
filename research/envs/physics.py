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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

MAX_SPEED = 8.0
MAX_TORQUE = 2.0
DT = 0.05
G = 10.0
M = 1.0
L = 1.0
TWO_PI = 2.0 * math.pi

#: Default physical parameters: Gymnasium Pendulum-v1's constants, then the knobs at their neutral values.
DEFAULT_PARAMS: dict[str, float] = {
    "g": G,
    "m": M,
    "l": L,
    "dt": DT,
    "max_speed": MAX_SPEED,
    "max_torque": MAX_TORQUE,
    "damping": 0.0,
    "friction": 0.0,
    "friction_width": 0.0,
    "torque_noise": 0.0,
    "wall_angle": math.inf,
    "wall_restitution": 0.0,
    "wall_stiffness": 0.0,
}

#: Gymnasium's own parameters (every mapping of parameters must hold these; the knobs may be left out).
GYMNASIUM_FIELDS = ("g", "m", "l", "dt", "max_speed", "max_torque")
#: The optional physics knobs; at their default values they leave Gymnasium's physics unchanged.
KNOB_FIELDS = (
    "damping", "friction", "friction_width", "torque_noise", "wall_angle", "wall_restitution", "wall_stiffness"
)

#: Parameters that must be strictly positive (a zero or negative value makes the physics meaningless).
POSITIVE_PARAMS = ("m", "l", "dt", "max_torque")

#: Per-step reward bounds of the default pendulum: ``-(pi**2 + 0.1 * 8**2 + 0.001 * 2**2)`` and 0.
REWARD_MIN = -(math.pi**2 + 0.1 * MAX_SPEED**2 + 0.001 * MAX_TORQUE**2)


class PendulumParams(NamedTuple):
    """Physical parameters, one tensor each of the batch shape ``[*B]`` (or broadcastable to it).

    A ``NamedTuple`` is a pytree, so ``torch.compile`` and ``torch.func`` see through it. The knobs after
    ``max_torque`` default to their neutral Python floats, so ``PendulumParams(g, m, l, dt, max_speed, max_torque)``
    still builds Gymnasium's pendulum; :meth:`default` and :func:`sample_params` give tensors for every field.
    """

    g: Tensor
    m: Tensor
    l: Tensor  # noqa: E741  (the pendulum's length is called l in Gymnasium)
    dt: Tensor
    max_speed: Tensor
    max_torque: Tensor
    damping: Tensor | float = 0.0  # b >= 0: viscous joint friction, torque -b thdot
    friction: Tensor | float = 0.0  # mu >= 0: dry (Coulomb) friction, torque -mu s(thdot)
    friction_width: Tensor | float = 0.0  # eps >= 0: s = sign when 0, tanh(thdot / eps) when > 0
    torque_noise: Tensor | float = 0.0  # sigma >= 0: std of the Gaussian added to the commanded torque
    wall_angle: Tensor | float = math.inf  # phi in (0, pi), or +inf for no wall
    wall_restitution: Tensor | float = 0.0  # e in [0, 1]: hard contact's bounce
    wall_stiffness: Tensor | float = 0.0  # k >= 0: 0 = hard contact, > 0 = penalty torque k * penetration

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

    def __or__(self, other: PhysicsFeatures) -> PhysicsFeatures:
        return PhysicsFeatures(**{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})


#: Gymnasium's physics: no optional term.
GYMNASIUM_FEATURES = PhysicsFeatures()


def _is_tensor(value: object) -> bool:
    return isinstance(value, Tensor)


def physics_features(params: PendulumParams | Mapping[str, Tensor]) -> PhysicsFeatures:
    """The :class:`PhysicsFeatures` that ``params`` need, read from the values: one host sync (none when every knob
    is a Python float, as in ``PendulumParams(g, m, l, dt, max_speed, max_torque)``). Call it once per rollout, not
    per step."""
    if not isinstance(params, PendulumParams):
        params = PendulumParams.from_mapping(params)
    knobs = [getattr(params, name) for name in KNOB_FIELDS]
    if not any(_is_tensor(k) for k in knobs):
        b, mu, eps, sigma, phi, _, k = (float(v) for v in knobs)
        wall = math.isfinite(phi)
        return PhysicsFeatures(
            damping=b > 0, friction_sign=mu > 0 and eps == 0, friction_smooth=mu > 0 and eps > 0, noise=sigma > 0,
            hard_wall=wall and k == 0, soft_wall=wall and k > 0,
        )
    b, mu, eps, sigma, phi, _, k = (torch.as_tensor(v) for v in knobs)
    wall = torch.isfinite(phi)
    flags = torch.stack([
        (b > 0).any(),
        ((mu > 0) & (eps == 0)).any(),
        ((mu > 0) & (eps > 0)).any(),
        (sigma > 0).any(),
        (wall & (k == 0)).any(),
        (wall & (k > 0)).any(),
    ]).tolist()
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
    missing = [name for name in GYMNASIUM_FIELDS if name not in mapping.keys()]
    if missing:
        raise ValueError(f"params is missing {missing}; expected the keys {list(PendulumParams._fields)}")
    values = {name: torch.as_tensor(mapping[name] if name in mapping.keys() else DEFAULT_PARAMS[name])
              for name in PendulumParams._fields}
    if batch_shape is not None:
        for name, value in values.items():
            try:
                torch.broadcast_shapes(value.shape, tuple(batch_shape))
            except RuntimeError:
                raise ValueError(
                    f"params.{name} has shape {list(value.shape)}, which does not match the batch shape "
                    f"{list(batch_shape)}"
                ) from None
    bad = torch.stack([_invalid(name, v).any() for name, v in values.items()])
    if not bool(bad.any()):
        return
    for name, value in values.items():
        if name == "wall_angle":
            if bool((torch.isnan(value) | (value == -math.inf)).any()):
                raise ValueError("params.wall_angle contains NaN or inf other than +inf (no wall); expected an angle "
                                 "in (0, pi) or +inf")
            if bool(_invalid(name, value).any()):
                got = value[_invalid(name, value)][0].item()
                raise ValueError(f"params.wall_angle must be in (0, pi) or +inf (no wall), got {got:g}")
            continue
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"params.{name} contains NaN or inf; expected finite values")
        if name in POSITIVE_PARAMS and bool((value <= 0).any()):
            raise ValueError(f"params.{name} must be > 0, got min {value.min().item():g}")
        if bool((value < 0).any()):
            raise ValueError(f"params.{name} must be >= 0, got min {value.min().item():g}")
        if name == "wall_restitution" and bool((value > 1).any()):
            raise ValueError(f"params.wall_restitution must be <= 1, got max {value.max().item():g}")


def _invalid(name: str, value: Tensor) -> Tensor:
    """Where ``value`` lies outside the domain of parameter ``name`` (bool, same shape)."""
    if name == "wall_angle":
        return ~(((value > 0) & (value < math.pi)) | (value == math.inf))
    bad = ~torch.isfinite(value) | ((value <= 0) if name in POSITIVE_PARAMS else (value < 0))
    return bad | (value > 1) if name == "wall_restitution" else bad


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
