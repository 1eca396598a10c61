"""Named physics variants of the pendulum: one registry, chosen in a config by ``env.physics = "<name>"``.

A variant is data, not a code path: a :class:`Physics` holds the values that differ from Gymnasium
(``fixed``, overrides of :data:`research.envs.physics.DEFAULT_PARAMS`) and the parameters drawn per episode
(``ranges``). Every trainer and the evaluator read the same object::

    physics = get_physics("wall", overrides={"wall_restitution": 0.5}, ranges={"g": (9.0, 11.0)})
    params = physics.params((256,), generator=gen)          # PendulumParams, each [256]
    th, thdot = physics.initial_state((256,), generator=gen)  # Gymnasium's reset, in the wall's range
    rollout = fused_rollout(policy, initial_state(th, thdot), params, 100, features=physics.features,
                            generator=gen)

The magnitudes were chosen so that each variant moves the best return a simple controller reaches by several points
or more (energy pumping plus a linear controller near upright, its gains tuned per variant on the evaluator's 1000
states; the numbers are beside :data:`PRESETS`, the protocol in ``docs/protocol.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from research.envs.physics import (
    DEFAULT_PARAMS,
    PendulumParams,
    PhysicsFeatures,
    sample_initial_state,
    sample_params,
    to_wall_range,
    validate_params,
)


@dataclass(frozen=True)
class Physics:
    """A physics variant: fixed overrides of :data:`DEFAULT_PARAMS` plus per-episode uniform draws.

    Attributes:
        name: the preset it was built from (``get_physics`` keeps the name when overriding values).
        fixed: ``{parameter: value}`` that differ from :data:`DEFAULT_PARAMS` (for the whole run).
        ranges: ``{parameter: (low, high)}`` drawn uniformly per episode (:meth:`params`); a ranged parameter is
            never also in ``fixed``.
        description: one line on what the variant changes and why it is there.
    """

    name: str
    fixed: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        for what, names in (("fixed", self.fixed), ("ranges", self.ranges)):
            unknown = sorted(set(names) - set(DEFAULT_PARAMS))
            if unknown:
                raise ValueError(
                    f"unknown physical parameter(s) {unknown} in physics {self.name!r} {what}; "
                    f"expected one of {list(DEFAULT_PARAMS)}"
                )
        both = sorted(set(self.fixed) & set(self.ranges))
        if both:
            raise ValueError(f"physics {self.name!r}: {both} is both fixed and drawn; give each parameter one of them")
        values = {**DEFAULT_PARAMS, **{k: float(v) for k, v in self.fixed.items()}}
        validate_params({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()})
        sample_params((), self.ranges, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                      fixed=self.fixed)  # checks every range and the values it reaches at its ends below
        for name, (low, high) in self.ranges.items():
            validate_params({**{k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()},
                             name: torch.tensor([float(low), float(high)], dtype=torch.float64)})

    def value(self, name: str) -> float:
        """The fixed value of parameter ``name`` (its default when not overridden; not for ranged parameters)."""
        if name in self.ranges:
            raise ValueError(f"physics {self.name!r} draws {name} per episode from {self.ranges[name]}; no one value")
        return float(self.fixed.get(name, DEFAULT_PARAMS[name]))

    def override(
        self,
        overrides: Mapping[str, float] | None = None,
        ranges: Mapping[str, Sequence[float]] | None = None,
    ) -> Physics:
        """This physics with ``overrides`` (fixed values) and ``ranges`` (per-episode draws) on top, same name.

        An override pins a parameter that is drawn here, and a range draws one that is fixed here; giving the same
        parameter in both raises ``ValueError``. Returns ``self`` when both are empty.
        """
        return _override(self, overrides, ranges)

    def _can_be(self, name: str, nonzero: bool) -> bool:
        """Whether some pendulum of this physics has ``name != 0`` (``nonzero``) or ``== 0``."""
        if name in self.ranges:
            low, high = self.ranges[name]
            return high > 0 if nonzero else low <= 0
        return (self.value(name) != 0) == nonzero

    @property
    def features(self) -> PhysicsFeatures:
        """Which optional physics terms this variant needs (static, no host sync): pass to the rollouts."""
        wall = "wall_angle" in self.ranges or math.isfinite(self.value("wall_angle"))
        friction = self._can_be("friction", True)
        return PhysicsFeatures(
            damping=self._can_be("damping", True),
            friction_sign=friction and self._can_be("friction_width", False),
            friction_smooth=friction and self._can_be("friction_width", True),
            noise=self._can_be("torque_noise", True),
            hard_wall=wall and self._can_be("wall_stiffness", False),
            soft_wall=wall and self._can_be("wall_stiffness", True),
        )

    @property
    def deterministic(self) -> bool:
        """No torque noise and no per-episode draws: one initial state gives one trajectory."""
        return not self.ranges and not self.features.noise

    @property
    def max_torque(self) -> float:
        """The largest torque any pendulum of this variant accepts (what a policy should squash its output to)."""
        if "max_torque" in self.ranges:
            return float(self.ranges["max_torque"][1])
        return self.value("max_torque")

    def params(
        self,
        batch_shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> PendulumParams:
        """Parameters for a batch of episodes, each ``[*batch_shape]``: ``ranges`` drawn from ``generator`` (in the
        field order of :class:`PendulumParams`), ``fixed`` values and defaults otherwise."""
        return sample_params(batch_shape, self.ranges, generator=generator, device=device, dtype=dtype, fixed=self.fixed)

    def initial_state(
        self,
        batch_shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        params: PendulumParams | None = None,
    ) -> tuple[Tensor, Tensor]:
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


# Why each magnitude: the comment above each preset. As a check that each one matters, the best mean 200-step
# return of a heuristic controller (bang-bang energy pumping, then u = -k1 angle - k2 thdot near upright; 300 gain
# settings tried per preset) from the evaluator's 1000 states: default -149.7, weak -250.3, damped -163.3,
# coulomb -177.0, coulomb_smooth -184.1, wall -195.3, wall_soft -194.7, noisy -159.4 (fixed noise seed),
# randomized -149.3 (mean unchanged: pumping adapts to m and l, but the worst episode falls from -372 to -511).
# These are lower bounds on each optimum, not the optimum (the dynamic-programming yardstick measures that).
PRESETS: dict[str, Physics] = {
    physics.name: physics
    for physics in (
        Physics("default", description="Gymnasium Pendulum-v1, unchanged."),
        # Half the torque: gravity (15 sin th rad/s^2) beats the motor (3 rad/s^2) everywhere beyond 0.2 rad of
        # upright, so a swing-up needs several pumps and the credit for the final hold lies far back in time.
        Physics("weak", {"max_torque": 1.0}, description="max_torque 1: more pumps, longer credit assignment."),
        # b = 0.1: the damping torque reaches 0.8 (40% of max_torque) at the speed limit, enough to cost energy
        # every swing and lengthen the swing-up, small enough that the default swing-up still works.
        Physics("damped", {"damping": 0.1}, description="viscous joint friction b = 0.1."),
        # mu = 0.5 (a quarter of max_torque) with the exact sign: a discontinuous torque at thdot = 0 whose
        # gradient is zero (first-order gradients are biased there, Suh et al. 2022).
        Physics("coulomb", {"friction": 0.5}, description="dry friction mu = 0.5, exact sign(thdot)."),
        # The same friction through tanh(thdot / 0.1): smooth, and close to the sign beyond 0.2 rad/s, so it is
        # the differentiable surrogate of "coulomb" (a steep slope mu / eps = 5 near rest).
        Physics("coulomb_smooth", {"friction": 0.5, "friction_width": 0.1},
                description="dry friction mu = 0.5 through tanh(thdot / 0.1)."),
        # A thin wall 45 degrees past upright on the positive side. Angles beyond it must swing the long way round;
        # overshooting upright hits it, and at pi/4 gravity (10.6 rad/s^2) beats the motor (6 rad/s^2), so a slow
        # hit leaves the pendulum resting on the wall. e = 0.5 lets gradients pass through a contact (scaled by -e)
        # and lets a fast hit bounce free.
        Physics("wall", {"wall_angle": math.pi / 4, "wall_restitution": 0.5},
                description="hard wall at pi/4, restitution 0.5 (reflected after the Euler step)."),
        # The same wall as a penalty spring k = 100: contact frequency sqrt(3 k) = 17 rad/s, resolved over ~4 steps
        # of dt = 0.05 (semi-implicit Euler is stable below 2 / dt = 40 rad/s), penetration ~0.46 rad at the speed
        # limit. Smooth but stiff: large, high-variance gradients instead of a discontinuity.
        Physics("wall_soft", {"wall_angle": math.pi / 4, "wall_stiffness": 100.0},
                description="soft wall at pi/4, penalty torque -100 * penetration."),
        # sigma = 0.5 (a quarter of max_torque) per step, added before the torque clip; the cost charges the
        # commanded torque. The evaluator draws the noise from a fixed seed, so every method meets the same noise.
        Physics("noisy", {"torque_noise": 0.5}, description="Gaussian torque noise, std 0.5 per step."),
        # m and l drawn per episode within +-30%: inertia m l^2 / 3 spans 0.16-0.56 and gravity 3 g / (2 l) spans
        # 11.5-21.4 rad/s^2, so one policy must swing up pendulums that need from one to several pumps.
        Physics("randomized", ranges={"m": (0.7, 1.3), "l": (0.7, 1.3)},
                description="m and l uniform in [0.7, 1.3] per episode."),
    )
}


def get_physics(
    name: str,
    overrides: Mapping[str, float] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> Physics:
    """The preset ``name`` with per-field ``overrides`` (fixed values) and ``ranges`` (per-episode draws) on top.

    An override pins a parameter that the preset draws, and a range draws one that it fixes; giving the same
    parameter in both raises. Unknown preset names and parameters raise ``ValueError`` listing the valid ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown physics {name!r}; expected one of {list(PRESETS)}")
    return PRESETS[name].override(overrides, ranges)


def _override(
    preset: Physics,
    overrides: Mapping[str, float] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> Physics:
    overrides = {str(k): float(v) for k, v in (overrides or {}).items()}
    new_ranges: dict[str, tuple[float, float]] = {}
    for key, bounds in (ranges or {}).items():
        if len(bounds) != 2:
            raise ValueError(f"ranges[{key!r}] must be [low, high], got {list(bounds)}")
        new_ranges[str(key)] = (float(bounds[0]), float(bounds[1]))
    both = sorted(set(overrides) & set(new_ranges))
    if both:
        raise ValueError(f"{both} given both as a fixed value and as a range; give each parameter one of them")
    fixed = {k: v for k, v in preset.fixed.items() if k not in new_ranges}
    fixed.update(overrides)
    drawn = {k: v for k, v in preset.ranges.items() if k not in overrides}
    drawn.update(new_ranges)
    if not overrides and not new_ranges:
        return preset
    changes = [f"{k}={v:g}" for k, v in overrides.items()] + [f"{k} in [{a:g}, {b:g}]" for k, (a, b) in new_ranges.items()]
    description = f"{preset.description} Changed: {', '.join(changes)}."
    return Physics(preset.name, fixed, drawn, description)
