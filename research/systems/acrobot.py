"""The acrobot swing-up: Gymnasium Acrobot-v1's "book" dynamics with a continuous elbow torque, as pure torch.

Two links hang from a fixed pivot; only the joint between them (the elbow) is actuated. State ``[*B, 4] =
[theta1, theta2, dtheta1, dtheta2]`` in Gymnasium's order: ``theta1`` is link 1's angle from hanging straight down
(counter-clockwise positive), ``theta2`` link 2's angle *relative to link 1* (0: the links are aligned). The goal is
the upright ``theta1 = pi, theta2 = 0`` (mod 2 pi), at rest.

Dynamics (``gymnasium/envs/classic_control/acrobot.py``, ``AcrobotEnv._dsdt`` with ``book_or_nips = "book"``, i.e.
Sutton & Barto's equations; the same expressions in the same order: in float64 one step from Gymnasium's states
agrees to 2e-15, and 50-step trajectories agree modulo ``2 pi`` to 6e-11, or 6e-9 from starts beyond both speed
limits, where the chaos amplifies ulp-level differences; ``tests/systems/test_acrobot.py``)::

    d1     = m1 lc1^2 + m2 (l1^2 + lc2^2 + 2 l1 lc2 cos theta2) + I1 + I2
    d2     = m2 (lc2^2 + l1 lc2 cos theta2) + I2
    phi2   = m2 lc2 g cos(theta1 + theta2 - pi/2)
    phi1   = -m2 l1 lc2 dtheta2^2 sin theta2 - 2 m2 l1 lc2 dtheta2 dtheta1 sin theta2
             + (m1 lc1 + m2 l1) g cos(theta1 - pi/2) + phi2
    ddtheta2 = (u + d2/d1 phi1 - m2 l1 lc2 dtheta1^2 sin theta2 - phi2) / (m2 lc2^2 + I2 - d2^2/d1)
    ddtheta1 = -(d2 ddtheta2 + phi1) / d1

One step with action ``a`` (the torque on joint 2)::

    u      = clip(a, -max_torque, max_torque)                      # held constant over the step
    cost   = (l1 (1 + cos theta1) + l2 (1 + cos(theta1 + theta2))) / (2 (l1 + l2))   # 1 - normalised tip height
             + cost_velocity (dtheta1^2 + dtheta2^2) + cost_torque u^2               # on the state before the step
    s'     = one RK4 step of (dtheta1, dtheta2, ddtheta1, ddtheta2) over [0, dt]: Gymnasium's rk4(_dsdt, [s, u], [0, dt])
    dtheta1' = clip(dtheta1', -max_vel_1, max_vel_1),  dtheta2' = clip(dtheta2', -max_vel_2, max_vel_2)
    reward = -cost

**Angles are not wrapped.** Gymnasium wraps ``theta1`` and ``theta2`` into ``[-pi, pi]`` after every step; the
wrap is a discontinuity in the state (finite differences and ``gradcheck`` across it fail, and a trajectory's
winding is lost), while the dynamics, the observation and the cost are all ``2 pi``-periodic in both angles. So the
state keeps the unwrapped angles, like the pendulum's ``th``; every state agrees with Gymnasium's modulo ``2 pi``
(the ulp-level difference of ``cos(x + 2 pi k)`` against ``cos(x)`` is the only departure), and
:func:`wrap_state` gives Gymnasium's representation.

**Torque.** Gymnasium's actions are the torques ``{-1, 0, 1}``; here the torque is continuous in
``[-max_torque, max_torque]`` with ``max_torque = 2`` by default. With 1 (the ``weak`` preset) the reference
controller (:func:`reference_controller`) first reaches the top after a median of 111 steps (22 s) and ends the
200-step episode held up from only 65 of 100 starts; with 2 the energy reaches the upright's in about 45 steps, the
top is reached after a median of 76 steps and held at the end from 98 of 100 starts (``docs/protocol.md``). So 2
leaves a swing-up of several pumps (the motor is weak against gravity: link 2 alone weighs ``m2 lc2 g = 4.9 N m``)
with time to balance inside the horizon.

**Cost.** ``1 - `` the tip's normalised height (0 upright, 1 hanging), as in Gymnasium's goal (the tip's height)
and close to DeepMind Control's acrobot swingup (the tip's distance to the target); smooth and periodic, so no
wrapped angle enters it, minimal only at the upright (its Hessian there is positive definite, unlike the squared tip
distance's), plus small velocity and torque terms so the minimum is the upright *at rest*. It is a stage cost
``l(s_t, u_t)`` on the state before the step, like the pendulum's and the cart-pole's (Gymnasium's Acrobot-v1 and
DeepMind Control score the state after it instead). Per step it lies in
``[0, 1 + cost_velocity (max_vel_1^2 + max_vel_2^2) + cost_torque max_torque^2]`` (``[0, 1.9614]`` by default) within
the speed limits.

The reset is Gymnasium's: each of the four entries uniform in ``[-0.1, 0.1]`` (hanging, nearly at rest). No
termination; an episode is :attr:`Acrobot.horizon` = 200 steps (40 s). The dynamics are chaotic, and the upright
is doubly unstable (its linearised step has the eigenvalues 1.76 and 1.46, i.e. 2.8/s and 1.9/s): gradients through
long rollouts grow exponentially (from high-energy starts by about 3000-fold between 10 and 100 steps), as they
should.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from research.systems.base import Param, System, params_tuple
from research.systems.pendulum import angle_normalize

#: Gymnasium Acrobot-v1's constants.
LINK_LENGTH_1 = 1.0
LINK_LENGTH_2 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_POS_1 = 0.5
LINK_COM_POS_2 = 0.5
LINK_MOI = 1.0
G = 9.8
DT = 0.2
MAX_VEL_1 = 4 * math.pi
MAX_VEL_2 = 9 * math.pi
#: Our choice (Gymnasium's discrete torques are -1, 0, 1): see the module docstring.
MAX_TORQUE = 2.0
COST_VELOCITY = 1e-3
COST_TORQUE = 1e-3
#: Gymnasium's reset: each state entry uniform in [RESET_LOW, RESET_HIGH].
RESET_LOW, RESET_HIGH = -0.1, 0.1

PARAMS: tuple[Param, ...] = (
    Param("link_length_1", LINK_LENGTH_1, "l1: length of link 1 (m)", low=0.0, low_open=True),
    Param("link_length_2", LINK_LENGTH_2, "l2: length of link 2 (m); only the tip (cost, goal, picture) uses it",
          low=0.0, low_open=True),
    Param("link_mass_1", LINK_MASS_1, "m1: mass of link 1 (kg)", low=0.0, low_open=True),
    Param("link_mass_2", LINK_MASS_2, "m2: mass of link 2 (kg)", low=0.0, low_open=True),
    Param("link_com_pos_1", LINK_COM_POS_1, "lc1: distance from the pivot to link 1's centre of mass (m)", low=0.0),
    Param("link_com_pos_2", LINK_COM_POS_2, "lc2: distance from the elbow to link 2's centre of mass (m)", low=0.0),
    Param("link_moi_1", LINK_MOI, "I1: link 1's moment of inertia about its centre of mass (kg m^2)", low=0.0,
          low_open=True),
    Param("link_moi_2", LINK_MOI, "I2: link 2's moment of inertia about its centre of mass (kg m^2)", low=0.0,
          low_open=True),
    Param("g", G, "gravity (m/s^2)", low=0.0),
    Param("dt", DT, "time step (s): one RK4 step per control step, the torque held constant", low=0.0,
          low_open=True),
    Param("max_vel_1", MAX_VEL_1, "joint 1 speed limit (rad/s), clipped after every step", low=0.0),
    Param("max_vel_2", MAX_VEL_2, "joint 2 speed limit (rad/s), clipped after every step", low=0.0),
    Param("max_torque", MAX_TORQUE, "torque limit on joint 2 (N m): actions are clipped to +-max_torque", low=0.0,
          low_open=True),
    Param("cost_velocity", COST_VELOCITY, "weight of dtheta1^2 + dtheta2^2 in the cost", low=0.0),
    Param("cost_torque", COST_TORQUE, "weight of torque^2 in the cost", low=0.0),
)

#: Default parameters: Gymnasium Acrobot-v1's constants, our torque limit and cost weights.
DEFAULT_PARAMS: dict[str, float] = {p.name: p.default for p in PARAMS}


class AcrobotParams(params_tuple("_AcrobotParams", PARAMS)):
    """Physical parameters, one tensor (or float) each of the batch shape ``[*B]``, in :data:`PARAMS`' order."""

    __slots__ = ()


class StepConstants(NamedTuple):
    """What one step needs from :class:`AcrobotParams`, derived once per rollout (each ``[*B]`` or a float).

    The products are the left-to-right prefixes of Gymnasium's expressions, so the step evaluates them in the same
    floating-point order."""

    d1_base: Tensor  # m1 lc1^2
    d1_sq: Tensor  # l1^2 + lc2^2
    d1_cos: Tensor  # 2 l1 lc2
    m2: Tensor
    lc2_sq: Tensor  # lc2^2
    l1_lc2: Tensor  # l1 lc2
    moi_1: Tensor  # I1
    moi_2: Tensor  # I2
    phi2_gain: Tensor  # m2 lc2 g
    coriolis_22: Tensor  # -m2 l1 lc2
    coriolis_12: Tensor  # 2 m2 l1 lc2
    gravity_1: Tensor  # (m1 lc1 + m2 l1) g
    centrifugal: Tensor  # m2 l1 lc2
    inertia_22: Tensor  # m2 lc2^2 + I2
    dt: Tensor
    max_vel_1: Tensor
    max_vel_2: Tensor
    max_torque: Tensor
    link_length_1: Tensor
    link_length_2: Tensor
    cost_velocity: Tensor
    cost_torque: Tensor


def step_constants(p: AcrobotParams) -> StepConstants:
    """The :class:`StepConstants` of ``p`` (tensors ``[*B]`` or floats; gradients reach every parameter)."""
    m1, m2, l1 = p.link_mass_1, p.link_mass_2, p.link_length_1
    lc1, lc2, moi_2 = p.link_com_pos_1, p.link_com_pos_2, p.link_moi_2
    return StepConstants(
        d1_base=m1 * lc1**2, d1_sq=l1**2 + lc2**2, d1_cos=2 * l1 * lc2, m2=m2, lc2_sq=lc2**2, l1_lc2=l1 * lc2,
        moi_1=p.link_moi_1, moi_2=moi_2, phi2_gain=m2 * lc2 * p.g, coriolis_22=-m2 * l1 * lc2,
        coriolis_12=2 * m2 * l1 * lc2, gravity_1=(m1 * lc1 + m2 * l1) * p.g, centrifugal=m2 * l1 * lc2,
        inertia_22=m2 * lc2**2 + moi_2, dt=p.dt, max_vel_1=p.max_vel_1, max_vel_2=p.max_vel_2,
        max_torque=p.max_torque, link_length_1=l1, link_length_2=p.link_length_2, cost_velocity=p.cost_velocity,
        cost_torque=p.cost_torque)


def dsdt(theta1: Tensor, theta2: Tensor, dtheta1: Tensor, dtheta2: Tensor, torque: Tensor,
         c: StepConstants) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gymnasium's ``_dsdt`` ("book"): ``(dtheta1, dtheta2, ddtheta1, ddtheta2)``, each ``[*B]``."""
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    d1 = c.d1_base + c.m2 * (c.d1_sq + c.d1_cos * cos2) + c.moi_1 + c.moi_2
    d2 = c.m2 * (c.lc2_sq + c.l1_lc2 * cos2) + c.moi_2
    phi2 = c.phi2_gain * torch.cos(theta1 + theta2 - math.pi / 2.0)
    phi1 = (c.coriolis_22 * dtheta2**2 * sin2 - c.coriolis_12 * dtheta2 * dtheta1 * sin2
            + c.gravity_1 * torch.cos(theta1 - math.pi / 2) + phi2)
    ddtheta2 = (torque + d2 / d1 * phi1 - c.centrifugal * dtheta1**2 * sin2 - phi2) / (c.inertia_22 - d2**2 / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return dtheta1, dtheta2, ddtheta1, ddtheta2


def rk4(state: Sequence[Tensor], torque: Tensor, c: StepConstants) -> list[Tensor]:
    """One step of Gymnasium's ``rk4(_dsdt, [*state, torque], [0, dt])`` (the torque's derivative is 0)."""
    dt = c.dt
    dt2 = dt / 2.0
    k1 = dsdt(*state, torque, c)
    k2 = dsdt(*(y + dt2 * k for y, k in zip(state, k1, strict=True)), torque, c)
    k3 = dsdt(*(y + dt2 * k for y, k in zip(state, k2, strict=True)), torque, c)
    k4 = dsdt(*(y + dt * k for y, k in zip(state, k3, strict=True)), torque, c)
    h = dt / 6.0
    return [y + h * (a + 2 * b + 2 * d + e) for y, a, b, d, e in zip(state, k1, k2, k3, k4, strict=True)]


def tip_height_cost(theta1: Tensor, theta2: Tensor, c: StepConstants | AcrobotParams) -> Tensor:
    """``1 -`` the tip's normalised height: 0 upright, 1 hanging straight down (``[*B]``)."""
    l1, l2 = c.link_length_1, c.link_length_2
    return (l1 * (1 + torch.cos(theta1)) + l2 * (1 + torch.cos(theta1 + theta2))) / (2 * (l1 + l2))


def acrobot_step(state: Tensor, action: Tensor, c: StepConstants) -> tuple[Tensor, Tensor]:
    """One transition (the module docstring): ``state [*B, 4]``, ``action [*B, 1]`` -> ``(next [*B, 4], reward [*B])``.

    Non-finite actions are not checked (a host sync per step): ``+-inf`` saturates, ``NaN`` propagates."""
    u = torch.clamp(action[..., 0], -c.max_torque, c.max_torque)
    now = state.unbind(-1)
    cost = (tip_height_cost(now[0], now[1], c) + c.cost_velocity * (now[2] ** 2 + now[3] ** 2)
            + c.cost_torque * u**2)
    theta1, theta2, dtheta1, dtheta2 = rk4(now, u, c)
    dtheta1 = torch.clamp(dtheta1, -c.max_vel_1, c.max_vel_1)
    dtheta2 = torch.clamp(dtheta2, -c.max_vel_2, c.max_vel_2)
    return torch.stack((theta1, theta2, dtheta1, dtheta2), dim=-1), -cost


def wrap_state(state: Tensor) -> Tensor:
    """Gymnasium's representation of ``state [*B, 4]``: both angles wrapped into ``[-pi, pi)``."""
    return torch.cat((angle_normalize(state[..., :2]), state[..., 2:]), dim=-1)


def link_angles_from_upright(state: Tensor) -> Tensor:
    """``[*B, 2]``: each link's absolute angle from pointing straight up, in ``[-pi, pi)``."""
    theta1, theta2 = state[..., 0], state[..., 1]
    return angle_normalize(torch.stack((theta1 - math.pi, theta1 + theta2 - math.pi), dim=-1))


def energy(state: Tensor, p: AcrobotParams) -> Tensor:
    """Total mechanical energy ``[*B]`` (0 at the pivot's height): ``1/2 dq^T M(q) dq + V(q)`` with
    ``M = [[d1, d2], [d2, m2 lc2^2 + I2]]``, ``V = -(m1 lc1 + m2 l1) g cos theta1 - m2 lc2 g cos(theta1 + theta2)``;
    the upright at rest has ``(m1 lc1 + m2 l1 + m2 lc2) g``."""
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    c = step_constants(p)
    cos2 = torch.cos(theta2)
    d1 = c.d1_base + c.m2 * (c.d1_sq + c.d1_cos * cos2) + c.moi_1 + c.moi_2
    d2 = c.m2 * (c.lc2_sq + c.l1_lc2 * cos2) + c.moi_2
    kinetic = 0.5 * (d1 * dtheta1**2 + 2 * d2 * dtheta1 * dtheta2 + c.inertia_22 * dtheta2**2)
    potential = -c.gravity_1 * torch.cos(theta1) - c.phi2_gain * torch.cos(theta1 + theta2)
    return kinetic + potential


@dataclass(frozen=True)
class Acrobot(System):
    """Gymnasium Acrobot-v1's dynamics with a continuous torque and a swing-up cost (the module docstring).

    State ``[*B, 4] = [theta1, theta2, dtheta1, dtheta2]`` (angles unwrapped; 0 hangs down), observation
    ``[*B, 6] = [cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2]`` (Gymnasium's), action
    ``[*B, 1]`` (the elbow torque), reward ``-cost`` on the state before the step (and the torque).
    """

    system: ClassVar[str] = "acrobot"
    PARAMS: ClassVar[tuple[Param, ...]] = PARAMS
    Params: ClassVar[type] = AcrobotParams
    state_names: ClassVar[tuple[str, ...]] = ("theta1", "theta2", "dtheta1", "dtheta2")
    observation_names: ClassVar[tuple[str, ...]] = ("cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2",
                                                    "dtheta1", "dtheta2")
    action_names: ClassVar[tuple[str, ...]] = ("torque",)
    horizon: ClassVar[int] = 200
    action_bound: ClassVar[str] = "max_torque"
    noise_dim: ClassVar[int] = 0
    #: :meth:`is_success`: both links within this angle of upright (rad) and both joints slower than this (rad/s).
    success_angle: ClassVar[float] = 0.3
    success_speed: ClassVar[float] = 1.0

    def check(self, values: Mapping[str, float]) -> None:
        for i in (1, 2):
            if values[f"link_com_pos_{i}"] > values[f"link_length_{i}"]:
                raise ValueError(f"link_com_pos_{i} must lie on the link (<= link_length_{i} = "
                                 f"{values[f'link_length_{i}']:g}), got {values[f'link_com_pos_{i}']:g}")

    def constants(self, params: Any = None, features: frozenset[str] | None = None,
                  like: Tensor | None = None) -> StepConstants:
        params = self.default_params(like if like is not None else torch.zeros(())) if params is None else params
        return step_constants(params)

    def initial_state(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                      params: Any = None) -> Tensor:
        """Gymnasium's reset: ``[*batch_shape, 4]``, every entry uniform in ``[-0.1, 0.1]`` (one ``torch.rand``)."""
        u = torch.rand((*tuple(batch_shape), 4), generator=generator, device=device, dtype=dtype)
        return RESET_LOW + (RESET_HIGH - RESET_LOW) * u

    def observe(self, state: Tensor) -> Tensor:
        theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
        return torch.stack((torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2),
                            dtheta1, dtheta2), dim=-1)

    def step(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None,
             aux: Any = None) -> tuple[Tensor, Tensor]:
        """:func:`acrobot_step`; ``constants`` from :meth:`constants`, an :class:`AcrobotParams` of tensors
        ``[*B]``, or ``None`` (this variant's fixed values). ``noise`` and ``aux`` are unused."""
        if constants is None:
            constants = self.constants(like=state)
        elif not isinstance(constants, StepConstants):
            constants = step_constants(constants)
        return acrobot_step(state, action, constants)

    def goal_error(self, state: Tensor) -> Tensor:
        """Radians from upright of the link that is farther from it: ``max |link angle from up|`` (``[*B]``)."""
        return link_angles_from_upright(state).abs().amax(dim=-1)

    def is_success(self, state: Tensor) -> Tensor:
        """Both links within :attr:`success_angle` of upright and both joints slower than :attr:`success_speed`."""
        slow = state[..., 2:].abs().amax(dim=-1) < self.success_speed
        return (self.goal_error(state) < self.success_angle) & slow

    def draw(self, state: Tensor, action: Tensor | None = None, size: int = 256) -> Any:
        """The two links (Gymnasium's colours) on a white ``size x size`` image; the grey circle is the tip's reach,
        the tick on it the goal; ``action`` (if given) is an arc around the elbow, turning the way the torque does,
        spanning ``|torque| / max_torque * 270`` degrees."""
        from PIL import Image, ImageDraw

        values = self.defaults()
        l1, l2 = values["link_length_1"], values["link_length_2"]
        theta1, theta2 = (float(x) for x in torch.as_tensor(state).detach().reshape(-1)[:2])
        supersample = 3
        s = size * supersample
        scale = s / (2 * (l1 + l2) + 0.4)
        c = s / 2
        image = Image.new("RGB", (s, s), "white")
        draw = ImageDraw.Draw(image)
        reach = (l1 + l2) * scale
        draw.ellipse((c - reach, c - reach, c + reach, c + reach), outline=(225, 225, 225), width=supersample)
        draw.line((c, c - reach - 0.1 * scale, c, c - reach + 0.1 * scale), fill=(170, 170, 170), width=supersample)
        elbow = (c + l1 * scale * math.sin(theta1), c + l1 * scale * math.cos(theta1))  # image y points down
        tip = (elbow[0] + l2 * scale * math.sin(theta1 + theta2), elbow[1] + l2 * scale * math.cos(theta1 + theta2))
        width = 0.2 * scale
        link, joint = (0, 204, 204), (204, 204, 0)
        for a, b in ((c, c), elbow), (elbow, tip):
            draw.line((*a, *b), fill=link, width=int(round(width)))
            for x, y in (a, b):
                draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=link)
        for x, y in ((c, c), elbow):
            r = 0.1 * scale
            draw.ellipse((x - r, y - r, x + r, y + r), fill=joint)
        if action is not None:
            torque = float(torch.as_tensor(action).detach().reshape(-1)[0])
            fraction = max(-1.0, min(1.0, torque / self.max_action)) if math.isfinite(torque) else 0.0
            if abs(fraction) > 1e-3:
                _torque_arc(draw, elbow, 0.3 * scale, fraction, supersample)
        return image.resize((size, size), Image.Resampling.LANCZOS)


def _torque_arc(draw: Any, centre: tuple[float, float], radius: float, fraction: float, width: int) -> None:
    """An arc around ``centre`` spanning ``|fraction| * 270`` degrees (centred on 12 o'clock), its head on the side
    it turns to (counter-clockwise on screen for a positive torque)."""
    x, y = centre
    span = 270.0 * abs(fraction)
    lo, hi = 270.0 - span / 2, 270.0 + span / 2  # pillow: degrees clockwise from 3 o'clock (y down)
    gray = (90, 90, 90)
    draw.arc((x - radius, y - radius, x + radius, y + radius), lo, hi, fill=gray, width=2 * width)
    phi = math.radians(lo if fraction > 0 else hi)
    px, py = x + radius * math.cos(phi), y + radius * math.sin(phi)
    sign = 1.0 if fraction > 0 else -1.0
    dx, dy = sign * math.sin(phi), -sign * math.cos(phi)
    nx, ny = math.cos(phi), math.sin(phi)
    head = 0.4 * radius
    draw.polygon([(px + dx * head, py + dy * head), (px + nx * head * 0.55, py + ny * head * 0.55),
                  (px - nx * head * 0.55, py - ny * head * 0.55)], fill=gray)


# Why each variant: the comment above it.
PRESETS: dict[str, Acrobot] = {
    p.name: p
    for p in (
        Acrobot("default", description="Gymnasium Acrobot-v1's book dynamics, continuous torque in [-2, 2], "
                                       "tip-height swing-up cost."),
        # Gymnasium's own torque magnitude: the energy comes in half as fast and the saturated LQR's basin shrinks
        # (V_sat falls 4-fold), so the reference controller reaches the top later (median step 111 instead of 76)
        # and ends held up from 65 of 100 starts instead of 98.
        Acrobot("weak", {"max_torque": 1.0}, description="max_torque 1 (Gymnasium's): more pumps, later catch."),
    )
}

Acrobot.PRESETS = PRESETS


# ---------------------------------------------------------------------------------------------------- reference
#: The reference controller's settings: LQR weights, the energy pump's gain, the search depth, and the thresholds on
#: the LQR cost-to-go V = e^T P e. The LQR acts where V < REF_BASIN * V_sat, V_sat = max_torque^2 / (K P^-1 K^T)
#: being the largest such ellipsoid on which its torque stays unsaturated (V_sat = 4.76 at max_torque 2: from V = 1
#: it holds the top from every sampled state, from V = 3 from 75% of them); a branch of the search counts as
#: reaching the top where V < REF_CATCH * V_sat.
REF_Q = (1.0, 1.0, 0.1, 0.1)
REF_R = 1.0
REF_PUMP_GAIN = 0.3
REF_DEPTH = 5
REF_BASIN = 0.5
REF_CATCH = 10.0


@functools.lru_cache(maxsize=16)
def _lqr(values: tuple[tuple[str, float], ...]) -> tuple[Tensor, Tensor, Tensor]:
    """``(K [1, 4], P [4, 4], K P^-1 K^T)`` (float64): the discrete LQR of the step linearised at the upright (by
    Riccati iteration) and the gain's size in P's metric."""
    p = AcrobotParams(**{k: torch.tensor(v, dtype=torch.float64) for k, v in values})
    c = step_constants(p)
    x0 = torch.tensor([math.pi, 0.0, 0.0, 0.0], dtype=torch.float64)
    u0 = torch.zeros(1, dtype=torch.float64)
    a = torch.autograd.functional.jacobian(lambda x: acrobot_step(x, u0, c)[0], x0)
    b = torch.autograd.functional.jacobian(lambda u: acrobot_step(x0, u, c)[0], u0)
    q = torch.diag(torch.tensor(REF_Q, dtype=torch.float64))
    r = torch.tensor([[REF_R]], dtype=torch.float64)
    p_mat = q
    for _ in range(2000):
        k = torch.linalg.solve(r + b.T @ p_mat @ b, b.T @ p_mat @ a)
        new = q + a.T @ p_mat @ (a - b @ k)
        new = 0.5 * (new + new.T)
        if torch.allclose(new, p_mat, rtol=1e-12, atol=1e-12):
            p_mat = new
            break
        p_mat = new
    k = torch.linalg.solve(r + b.T @ p_mat @ b, b.T @ p_mat @ a)
    return k, p_mat, (k @ torch.linalg.solve(p_mat, k.T))[0, 0]


def _upright_error(state: Tensor) -> Tensor:
    """``[*B, 4]``: ``(theta1 - pi, theta2)`` wrapped into ``[-pi, pi)``, and the two speeds."""
    return torch.cat((angle_normalize(state[..., :2] - state.new_tensor([math.pi, 0.0])), state[..., 2:]), dim=-1)


@torch.no_grad()
def reference_controller(system: Acrobot, state: Tensor) -> Tensor:
    """A stateless swing-up-and-balance controller: ``state [*B, 4]`` -> torque ``[*B, 1]`` (no gradient).

    Three regimes, chosen per state from the LQR cost-to-go ``V = e^T P e`` of the upright (``e`` from
    :func:`_upright_error`, ``P`` and ``K`` from the discrete Riccati equation of the step linearised at the top,
    ``Q = diag(1, 1, 0.1, 0.1)``, ``R = 1``):

    - ``V < REF_BASIN * V_sat`` (``V_sat = max_torque^2 / (K P^-1 K^T)``, the largest ellipsoid ``V < V_sat`` on
      which ``|K e| <= max_torque``): LQR, ``u = -K e`` (clipped), which holds the top from there.
    - otherwise, a depth-``REF_DEPTH`` search over the torques ``{-max, 0, max}`` (243 sequences, 5 steps = 1 s,
      on the true model): if some sequence passes through ``V < REF_CATCH * V_sat``, the first torque of the one
      that gets lowest. This is the catch: with the torque limited to 2 and 5 Hz control, the saturated LQR's basin
      is a thin sliver (the unstable mode grows 1.76-fold per step), which the energy pump alone almost never hits.
    - otherwise, energy pumping (the passivity of the elbow, ``dE/dt = u dtheta2``): ``u = -k (E - E_up) dtheta2``,
      clipped, which drives the energy ``E`` (:func:`energy`) to the upright's ``E_up``.

    It uses ``system``'s fixed values (ranged parameters at their defaults). Its returns are in ``docs/protocol.md``.
    """
    values = system.defaults()
    k, p_mat, gain = _lqr(tuple(sorted(values.items())))
    batch = state.shape[:-1]
    x = state.reshape(-1, 4)
    k, p_mat = k.to(x), p_mat.to(x)
    params = AcrobotParams(**{name: torch.tensor(v, dtype=x.dtype, device=x.device) for name, v in values.items()})
    c = step_constants(params)
    max_torque = values["max_torque"]
    unsaturated = max_torque**2 / gain.item()
    e_up = (values["link_mass_1"] * values["link_com_pos_1"] + values["link_mass_2"] * values["link_length_1"]
            + values["link_mass_2"] * values["link_com_pos_2"]) * values["g"]

    def cost_to_go(s: Tensor) -> Tensor:
        e = _upright_error(s)
        return ((e @ p_mat) * e).sum(-1)

    e = _upright_error(x)
    u_lqr = (-(e @ k.T)[:, 0]).clamp(-max_torque, max_torque)
    u_pump = (-REF_PUMP_GAIN * (energy(x, params) - e_up) * x[:, 3]).clamp(-max_torque, max_torque)
    levels = x.new_tensor([-max_torque, 0.0, max_torque])
    n = x.shape[0]
    nodes = x[:, None, :]
    best = torch.full((n, 1), math.inf, dtype=x.dtype, device=x.device)
    for _ in range(REF_DEPTH):
        width = nodes.shape[1]
        nodes = nodes[:, :, None, :].expand(n, width, 3, 4).reshape(n, 3 * width, 4)
        best = best[:, :, None].expand(n, width, 3).reshape(n, 3 * width)
        nodes, _ = acrobot_step(nodes, levels.repeat(width)[None, :, None].expand(n, 3 * width, 1), c)
        best = torch.minimum(best, cost_to_go(nodes))
    lowest, index = best.min(dim=1)
    u_search = levels[index // 3 ** (REF_DEPTH - 1)]
    u = torch.where(cost_to_go(x) < REF_BASIN * unsaturated, u_lqr,
                    torch.where(lowest < REF_CATCH * unsaturated, u_search, u_pump))
    return u.reshape(*batch, 1)


def evaluate_reference(system: Acrobot | None = None, num_episodes: int = 100, seed: int = 1_000_003,
                       horizon: int | None = None, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """The reference controller's returns from the first ``num_episodes`` evaluation states (drawn as in the
    evaluator: CPU, float64, ``seed``): the return's mean, std, min and max, the share of episodes that end in
    :meth:`Acrobot.is_success`, and the median step at which the episodes that get there first do."""
    system = PRESETS["default"] if system is None else system
    horizon = system.horizon if horizon is None else horizon
    state = system.initial_state((num_episodes,), generator=torch.Generator().manual_seed(seed),
                                 dtype=torch.float64).to(dtype)
    constants = system.constants(like=state)
    total = torch.zeros(num_episodes, dtype=dtype)
    first_success = torch.full((num_episodes,), -1)
    for t in range(horizon):
        state, reward = system.step(state, reference_controller(system, state), constants)
        total = total + reward
        first_success = torch.where((first_success < 0) & system.is_success(state), t + 1, first_success)
    reached = first_success[first_success >= 0].to(torch.float64)
    return {"return_mean": total.mean().item(), "return_std": total.std(unbiased=False).item(),
            "return_min": total.min().item(), "return_max": total.max().item(),
            "success_rate": system.is_success(state).to(torch.float64).mean().item(),
            "first_success_median": reached.median().item() if reached.numel() else math.nan}


__all__ = ["PARAMS", "PRESETS", "Acrobot", "AcrobotParams", "StepConstants", "acrobot_step", "energy",
           "evaluate_reference", "reference_controller", "step_constants", "wrap_state"]
