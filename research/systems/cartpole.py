"""The cart-pole swing-up: Gymnasium CartPole-v1's physics with a continuous force, started hanging down.

Everything here is a function of its inputs only: no RNG in the step, no in-place operations, any batch shape,
device and dtype, differentiable. State ``[x, x_dot, theta, theta_dot]`` in Gymnasium's order (``theta = 0`` is
upright, positive ``theta`` leans towards ``+x``; ``theta`` is never wrapped), action ``[force]`` in newtons.

One step, from state ``(x, x_dot, theta, theta_dot)`` and commanded force ``f`` (Gymnasium's
``classic_control/cartpole.py`` with ``kinematics_integrator = "euler"``, the force continuous instead of
``+-force_mag``; operation for operation, so float64 agrees with Gymnasium to rounding)::

    u        = clip(f, -force_max, force_max)
    cost     = angle_normalize(theta)**2 + 0.1 theta_dot**2 + 0.05 x**2 + 0.1 x_dot**2 + 0.001 u**2
               + track_penalty * relu(|x| - track_limit)**2                      # on the state before the update
    total    = masspole + masscart,  pml = masspole * length                   # length: half the pole
    temp     = (u + pml * theta_dot**2 * sin(theta)) / total
    thetaacc = (gravity * sin(theta) - cos(theta) * temp) / (length * (4/3 - masspole * cos(theta)**2 / total))
    xacc     = temp - pml * thetaacc * cos(theta) / total
    x'         = x + tau * x_dot                                              # explicit Euler, Gymnasium's order:
    x_dot'     = x_dot + tau * xacc                                           # positions from the old velocities
    theta'     = theta + tau * theta_dot
    theta_dot' = theta_dot + tau * thetaacc
    reward   = -cost

The cost weights are SHAC's CartPole Swing Up (Xu et al., ICLR 2022; NVlabs/DiffRL ``envs/cartpole_swing_up.py``:
pole angle 1, pole speed 0.1, cart position 0.05, cart speed 0.1), with a small force weight 0.001 per N^2 in place
of SHAC's 0 (as Pendulum-v1 charges its torque). Like Pendulum-v1 (and unlike SHAC) the cost is charged on the state
before the update, so the upright rest state at ``x = 0`` with no force costs exactly 0.

**Track limit (a soft penalty, not a hard stop).** The physics has no wall: the cart may leave Gymnasium's track
``|x| <= x_threshold = 2.4``, and the cost charges ``track_penalty * (|x| - track_limit)**2`` beyond it (10 per m^2
by default), so the gradient keeps pointing back onto the track; there is no termination. A hard stop would zero
the cart's velocity (and its gradient) on contact. :meth:`CartPole.is_success` counts an episode only if it ends
on the track. ``track_limit = +inf`` removes the penalty.

**Reset.** Gymnasium's reset (each of the four coordinates uniform in ``(-0.05, 0.05)``, one draw of shape
``[*B, 4]`` in state order) with the pole turned to hanging down, ``theta += pi``: DeepMind Control Suite's
cartpole swingup (Tassa et al. 2018) starts the same way, hanging down plus small noise (there ``0.01 N(0, 1)``
on the cart position, the angle and both velocities).

**Horizon.** 200 steps of ``tau = 0.02`` s (4 s; SHAC's 240 steps of 1/60 s are 4 s too). The energy-based swing-up
with an LQR catch (:func:`reference_controller`) first comes within 0.2 rad of upright after 88-104 steps (about
1.8 s) with ``force_max = 10`` and ``|x| <= 1.5``, so the task is feasible within the horizon: mean return -576
(min -689) over the 1000 evaluation states, every episode ending held upright (-576 over 100 reset states too).
Most of that cost is the swing itself (``pi**2`` per step hanging, up to ``0.1 * 3 g / length`` per step for
the pole's speed through the bottom). It bounds the optimum from below; it is not the optimum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from research.systems.base import Param, System, params_tuple
from research.systems.pendulum import angle_normalize

#: The cost's weights (SHAC's CartPole Swing Up, plus a small force weight).
COST_ANGLE = 1.0
COST_ANGULAR_VELOCITY = 0.1
COST_POSITION = 0.05
COST_VELOCITY = 0.1
COST_FORCE = 0.001
#: Half-width of Gymnasium's reset box around (0, 0, pi, 0).
RESET_HALF_WIDTH = 0.05

#: The cart-pole's parameters, one row each: Gymnasium CartPole-v1's constants (``force_max`` is its ``force_mag``,
#: here the bound of a continuous force), then the soft track limit.
PARAMS: tuple[Param, ...] = (
    Param("gravity", 9.8, "gravity (m/s^2)", low=0.0),
    Param("masscart", 1.0, "mass of the cart (kg)", low=0.0, low_open=True),
    Param("masspole", 0.1, "mass of the pole (kg)", low=0.0, low_open=True),
    Param("length", 0.5, "half the pole's length (m): pivot to centre of mass", low=0.0, low_open=True),
    Param("force_max", 10.0, "force limit (N): actions are clipped to +-force_max", low=0.0, low_open=True),
    Param("tau", 0.02, "time step (s)", low=0.0, low_open=True),
    Param("track_limit", 2.4, "|x| beyond which the track penalty applies (m), +inf for none", low=0.0,
          low_open=True, allow_inf=True),
    Param("track_penalty", 10.0, "weight of the cost (|x| - track_limit)^2 beyond the track (1/m^2)", low=0.0),
)

#: Default physical parameters: Gymnasium CartPole-v1's constants and the track at its ``x_threshold``.
DEFAULT_PARAMS: dict[str, float] = {p.name: p.default for p in PARAMS}


class CartPoleParams(params_tuple("_CartPoleParams", PARAMS)):
    """Physical parameters, one tensor each of the batch shape ``[*B]`` (or a float), built from :data:`PARAMS`."""

    __slots__ = ()


class StepConstants(NamedTuple):
    """What one step needs from :class:`CartPoleParams`, derived once per rollout (Gymnasium's ``__init__``)."""

    gravity: Tensor
    masspole: Tensor
    total_mass: Tensor  # masspole + masscart
    length: Tensor
    polemass_length: Tensor  # masspole * length
    force_max: Tensor
    tau: Tensor
    track_limit: Tensor
    track_penalty: Tensor


def step_constants(params: CartPoleParams) -> StepConstants:
    """The :class:`StepConstants` of ``params`` (Gymnasium's expressions, in its order)."""
    return StepConstants(
        gravity=params.gravity,
        masspole=params.masspole,
        total_mass=params.masspole + params.masscart,
        length=params.length,
        polemass_length=params.masspole * params.length,
        force_max=params.force_max,
        tau=params.tau,
        track_limit=params.track_limit,
        track_penalty=params.track_penalty,
    )


def observe(state: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``(observation [*B, 5], (cos theta, sin theta))``: ``[x, x_dot, cos theta, sin theta, theta_dot]`` and the
    cosine and sine that :func:`cartpole_step` reuses."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    cos, sin = theta.cos(), theta.sin()
    return torch.stack((x, x_dot, cos, sin, theta_dot), dim=-1), (cos, sin)


def cartpole_step(state: Tensor, force: Tensor, c: StepConstants,
                  trig: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One transition (the module docstring): ``state [*B, 4]``, commanded ``force [*B]`` -> ``(next [*B, 4],
    reward [*B])``. ``trig`` is ``(cos theta, sin theta)`` when the caller has them (:func:`observe`)."""
    x, x_dot, theta, theta_dot = state.unbind(-1)
    costheta, sintheta = (theta.cos(), theta.sin()) if trig is None else trig
    u = torch.clamp(force, -c.force_max, c.force_max)
    wrapped = angle_normalize(theta)
    over = torch.relu(x.abs() - c.track_limit)  # 0 on the track (and everywhere when track_limit = +inf)
    cost = (COST_ANGLE * wrapped * wrapped + COST_ANGULAR_VELOCITY * theta_dot * theta_dot
            + COST_POSITION * x * x + COST_VELOCITY * x_dot * x_dot + COST_FORCE * u * u
            + c.track_penalty * over * over)
    temp = (u + c.polemass_length * (theta_dot * theta_dot) * sintheta) / c.total_mass
    thetaacc = (c.gravity * sintheta - costheta * temp) / (
        c.length * (4.0 / 3.0 - c.masspole * (costheta * costheta) / c.total_mass))
    xacc = temp - c.polemass_length * thetaacc * costheta / c.total_mass
    next_state = torch.stack((x + c.tau * x_dot, x_dot + c.tau * xacc,
                              theta + c.tau * theta_dot, theta_dot + c.tau * thetaacc), dim=-1)
    return next_state, -cost


@dataclass(frozen=True)
class CartPole(System):
    """The cart-pole swing-up (the module docstring): one physics variant of it.

    State ``[*B, 4] = [x, x_dot, theta, theta_dot]`` (Gymnasium's order; ``theta = 0`` upright), observation
    ``[*B, 5] = [x, x_dot, cos theta, sin theta, theta_dot]``, action ``[*B, 1]`` (the force on the cart, N),
    reward ``-cost``. Presets: :data:`PRESETS`.
    """

    system: ClassVar[str] = "cartpole"
    PARAMS: ClassVar[tuple[Param, ...]] = PARAMS
    Params: ClassVar[type] = CartPoleParams
    state_names: ClassVar[tuple[str, ...]] = ("x", "x_dot", "theta", "theta_dot")
    observation_names: ClassVar[tuple[str, ...]] = ("x", "x_dot", "cos_theta", "sin_theta", "theta_dot")
    action_names: ClassVar[tuple[str, ...]] = ("force",)
    horizon: ClassVar[int] = 200
    action_bound: ClassVar[str] = "force_max"
    noise_dim: ClassVar[int] = 0
    #: :meth:`is_success`: within this angle of upright (rad) and slower than this speed (rad/s) at the end, with
    #: the cart on the track.
    success_angle: ClassVar[float] = 0.5
    success_speed: ClassVar[float] = 1.0

    def constants(self, params: Any = None, features: frozenset[str] | None = None,
                  like: Tensor | None = None) -> StepConstants:
        params = self.default_params(like if like is not None else torch.zeros(())) if params is None else params
        return step_constants(params)

    def initial_state(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                      params: Any = None) -> Tensor:
        """``[*batch_shape, 4]``: Gymnasium's ``U(-0.05, 0.05)`` on each coordinate, plus ``pi`` on ``theta``."""
        u = torch.rand((*batch_shape, 4), generator=generator, device=device, dtype=dtype)
        offset = torch.tensor([0.0, 0.0, math.pi, 0.0], device=device, dtype=dtype)
        return (u * 2.0 - 1.0) * RESET_HALF_WIDTH + offset

    def observe(self, state: Tensor) -> Tensor:
        return observe(state)[0]

    def observe_for_step(self, state: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return observe(state)

    def step(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None,
             aux: Any = None) -> tuple[Tensor, Tensor]:
        """:func:`cartpole_step` on states ``[*B, 4]`` and actions ``[*B, 1]``; ``constants`` a
        :class:`CartPoleParams` (tensors ``[*B]``), their :class:`StepConstants`, or ``None`` (fixed values)."""
        if constants is None:
            constants = self.constants(like=state)
        elif isinstance(constants, CartPoleParams):
            constants = step_constants(constants)
        return cartpole_step(state, action[..., 0], constants, aux)

    @torch.no_grad()
    def contact(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None) -> Tensor:
        """``[*B]`` bool: the cart is beyond the track limit before the step (``|x| > track_limit``), where the
        cost's track penalty acts (the cart-pole's only contact-like regime; never with ``track_limit = +inf``)."""
        if constants is None:
            constants = self.constants(like=state)
        elif isinstance(constants, CartPoleParams):
            constants = step_constants(constants)
        return state[..., 0].abs() > constants.track_limit

    def goal_error(self, state: Tensor) -> Tensor:
        """``|angle_normalize(theta)|``: radians from upright."""
        return angle_normalize(state[..., 2]).abs()

    def is_success(self, state: Tensor) -> Tensor:
        """Pole within ``success_angle`` of upright, slower than ``success_speed``, cart within the track limit
        (this variant's fixed value; its default when drawn per episode)."""
        limit = self.defaults()["track_limit"]
        return ((self.goal_error(state) < self.success_angle) & (state[..., 3].abs() < self.success_speed)
                & (state[..., 0].abs() <= limit))

    def draw(self, state: Tensor, action: Tensor | None = None, size: int = 256) -> Any:
        """The cart and pole of one state ``[4]`` as a ``size x size`` RGB PIL image (:func:`draw_cartpole`)."""
        values = self.defaults()
        force = None if action is None else float(torch.as_tensor(action).reshape(-1)[0])
        x, _, theta, _ = (float(v) for v in torch.as_tensor(state).reshape(-1)[:4])
        return draw_cartpole(x, theta, force, size, length=values["length"], force_max=values["force_max"],
                             track_limit=values["track_limit"])


# ---------------------------------------------------------------------------------------------------- picture
#: Gymnasium's colours: the pole, the axle; the cart is black.
POLE_COLOR = (202, 152, 101)
AXLE_COLOR = (129, 132, 203)
SUPERSAMPLE = 3


def draw_cartpole(x: float, theta: float, force: float | None = None, size: int = 256, length: float = 0.5,
                  force_max: float = 10.0, track_limit: float = 2.4, extent: float = 6.0) -> Any:
    """The cart-pole as a ``size x size`` RGB PIL image, in the style of :func:`research.render.draw_pendulum`.

    A window ``extent`` metres wide centred on ``x = 0`` (the cart scrolls off it beyond ``+-extent / 2``): the
    track with ticks at ``+-track_limit``, the cart, the pole of length ``2 * length`` (``theta = 0`` upright,
    positive towards ``+x``), a tick above the pivot at upright height (the goal) and, if ``force`` is given, an
    arrow on the cart whose length is proportional to ``force / force_max``. Drawn ``SUPERSAMPLE`` times larger.
    """
    from PIL import Image, ImageDraw

    s = size * SUPERSAMPLE
    scale = s / extent
    image = Image.new("RGB", (s, s), "white")
    draw = ImageDraw.Draw(image)
    ground = 0.62 * s
    gray = (170, 170, 170)
    draw.line((0, ground, s, ground), fill=(0, 0, 0), width=max(1, SUPERSAMPLE))
    if math.isfinite(track_limit):
        for side in (-1.0, 1.0):
            px = s / 2 + side * track_limit * scale
            draw.line((px, ground - 0.12 * scale, px, ground + 0.12 * scale), fill=gray, width=2 * SUPERSAMPLE)
    cart_w, cart_h = 0.5 * scale, 0.3 * scale
    cx = s / 2 + x * scale
    cy = ground - cart_h / 2
    draw.rectangle((cx - cart_w / 2, cy - cart_h / 2, cx + cart_w / 2, cy + cart_h / 2), fill=(0, 0, 0))
    pole = 2.0 * length * scale
    pivot = (cx, cy - cart_h / 4)
    goal_y = pivot[1] - pole
    draw.line((cx, goal_y - 0.1 * scale, cx, goal_y + 0.1 * scale), fill=gray, width=max(1, SUPERSAMPLE))
    if force is not None and math.isfinite(force) and abs(force) > 1e-3 * force_max:
        fraction = max(-1.0, min(1.0, force / force_max))
        ay = cy + cart_h / 2 + 0.18 * scale
        tip = cx + fraction * 0.8 * scale
        head = 0.12 * scale * (1.0 if fraction > 0 else -1.0)
        arrow = (90, 90, 90)
        draw.line((cx, ay, tip, ay), fill=arrow, width=2 * SUPERSAMPLE)
        draw.polygon([(tip + head, ay), (tip, ay - abs(head) * 0.6), (tip, ay + abs(head) * 0.6)], fill=arrow)
    end = (pivot[0] + pole * math.sin(theta), pivot[1] - pole * math.cos(theta))
    width = 0.1 * scale
    draw.line((*pivot, *end), fill=POLE_COLOR, width=int(round(width)))
    draw.ellipse((end[0] - width / 2, end[1] - width / 2, end[0] + width / 2, end[1] + width / 2), fill=POLE_COLOR)
    axle = 0.05 * scale
    draw.ellipse((pivot[0] - axle, pivot[1] - axle, pivot[0] + axle, pivot[1] + axle), fill=AXLE_COLOR)
    return image.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------------- reference
@functools.lru_cache(maxsize=32)
def lqr_gain(values: tuple[float, ...]) -> tuple[float, ...]:
    """The discrete-time LQR gain ``K`` (``u = -K s``, ``s = [x, x_dot, theta, theta_dot]`` near upright) of the
    Euler step linearised at the upright rest state, for the parameter values ``values`` (in :data:`PARAMS`
    order), with the task's own cost weights ``Q = diag(0.05, 0.1, 1, 0.1)``, ``R = 0.001``. Riccati iteration in
    float64; cached per parameter tuple."""
    c = step_constants(CartPoleParams(*(torch.tensor(v, dtype=torch.float64) for v in values)))
    zero = torch.zeros(4, dtype=torch.float64)

    def dynamics(s: Tensor, u: Tensor) -> Tensor:
        return cartpole_step(s, u[0], c)[0]

    a, b = torch.autograd.functional.jacobian(dynamics, (zero, torch.zeros(1, dtype=torch.float64)))
    q = torch.diag(torch.tensor([COST_POSITION, COST_VELOCITY, COST_ANGLE, COST_ANGULAR_VELOCITY],
                                dtype=torch.float64))
    r = torch.tensor([[COST_FORCE]], dtype=torch.float64)
    p = q.clone()
    for _ in range(5000):
        gain = torch.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ gain)
        if torch.allclose(p_next, p, rtol=1e-12, atol=1e-12):
            p = p_next
            break
        p = p_next
    gain = torch.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
    return tuple(gain[0].tolist())


def reference_controller(system: CartPole, state: Tensor, params: CartPoleParams | None = None,
                         catch_angle: float = 0.6, pump_gain: float = 30.0,
                         centering: tuple[float, float] = (10.0, 10.0)) -> Tensor:
    """A hand-made swing-up: states ``[*B, 4]`` -> forces ``[*B, 1]`` (clipped to ``force_max``), for sanity
    checks and as a warm start of trajectory optimisation.

    Far from upright, energy pumping (Astrom & Furuta 2000): with the pole's energy about the pivot ``E = 2/3 m l^2
    theta_dot^2 + m g l (cos theta - 1)`` (0 upright at rest), a cart acceleration ``a`` changes it at
    ``dE/dt = -m l cos(theta) theta_dot a``, so the force ``pump_gain * E * theta_dot cos(theta)`` drives ``E`` to 0,
    minus a weak PD ``centering`` term on the cart. Within ``catch_angle`` of upright, the LQR of the task's
    quadratic cost (:func:`lqr_gain`). The energy uses ``params`` (per-episode tensors ``[*B]``) when given, the
    variant's fixed values otherwise; the LQR gain and the force limit always use the fixed values (the defaults
    for drawn parameters).
    """
    values = system.defaults()
    source = values if params is None else params._asdict()
    m, g, half = source["masspole"], source["gravity"], source["length"]
    x, x_dot, theta, theta_dot = state.unbind(-1)
    wrapped = angle_normalize(theta)
    cos = theta.cos()
    energy = (2.0 / 3.0) * m * half * half * theta_dot * theta_dot + m * g * half * (cos - 1.0)
    pump = pump_gain * energy * theta_dot * cos - centering[0] * x - centering[1] * x_dot
    k = torch.tensor(lqr_gain(tuple(values[p.name] for p in PARAMS)), dtype=state.dtype, device=state.device)
    near = torch.stack((x, x_dot, wrapped, theta_dot), dim=-1)
    catch = -(near * k).sum(-1)
    force = torch.where(wrapped.abs() < catch_angle, catch, pump)
    limit = source["force_max"]
    return torch.clamp(force, -limit, limit).unsqueeze(-1)


# Why each magnitude: the comment above each preset.
PRESETS: dict[str, CartPole] = {
    p.name: p
    for p in (
        CartPole("default", description="Gymnasium CartPole-v1's physics, continuous force in [-10, 10] N, "
                                        "started hanging down; SHAC's quadratic cost, soft track limit at 2.4 m."),
        # A pole five times heavier (masspole 0.5: the pole is a third of the total mass instead of an eleventh), so
        # the pole's reaction on the cart matters and the swing-up needs more of the track.
        CartPole("heavy_pole", {"masspole": 0.5}, description="masspole 0.5: strong coupling between cart and pole."),
        # masspole and length drawn per episode within +-30%: one policy for poles of different inertia and period.
        CartPole("randomized", ranges={"masspole": (0.07, 0.13), "length": (0.35, 0.65)},
                 description="masspole uniform in [0.07, 0.13] and length in [0.35, 0.65] per episode."),
    )
}

CartPole.PRESETS = PRESETS
