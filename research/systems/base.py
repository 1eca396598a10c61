"""The system interface: everything that makes one differentiable control task what it is, behind one class.

A *system* (the pendulum, the cart-pole, the acrobot) owns its state layout, its observation, its step (pure torch:
any batch shape, device and dtype, no RNG inside), its reset distribution, its cost, its physical parameters and
their valid ranges, its evaluation protocol (horizon, success test) and its picture. Everything else in the library
(the rollout loop, the trainers, the collector, the evaluator, the harness, the TorchRL environment) is written
against this interface and never names a state variable.

A :class:`System` *instance* is one physics variant of its task: fixed values of its parameters (``fixed``, the rest
at the defaults that reproduce Gymnasium) and parameters drawn per episode (``ranges``). Its minimal public
contract::

    system = research.systems.make("cartpole", masspole=0.2)
    state = system.initial_state((256,), generator=gen)          # [256, state_dim], Gymnasium's state order
    next_state, reward = system.step(state, action)              # action [256, action_dim] -> [256, state_dim], [256]
    obs = system.observe(state)                                  # [256, obs_dim]

``step`` without parameters runs the instance's fixed values; a rollout passes per-episode parameters (``params``,
a :class:`typing.NamedTuple` of tensors ``[*B]`` built from the declarations) through :meth:`System.constants` once
and then calls ``step(state, action, constants)`` every step.

**Adding a system** is one file with a subclass (its :class:`Param` table, presets, ``initial_state``, ``observe``,
``step``, ``goal_error``) and one line in :data:`research.systems.SYSTEMS`. **Adding a physics knob** is one
:class:`Param` row (name, the default that leaves Gymnasium's physics unchanged, the valid domain, a one-line doc,
the optional term it switches on) plus its term in the step: the parameter tuple, defaults, validation, the config
and the static feature selection are built from the table.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class Param:
    """One physical parameter or knob of a system: a row of its table.

    Attributes:
        name: the field name (in configs: ``env.params.<name>``).
        default: the value that reproduces the Gymnasium environment (for a knob: its neutral value).
        doc: one line on what it is (units, effect).
        low, high: the valid domain; ``low_open``/``high_open`` make an end strict (``> 0`` rather than ``>= 0``).
        allow_inf: ``+inf`` is also valid (e.g. a wall at ``+inf``: no wall).
        term: the optional term of the step this knob switches on (the name of a feature flag), ``None`` for a
            parameter that every step uses. Which flags a batch needs is decided by the system's
            :meth:`System.feature_rules` from the values.
    """

    name: str
    default: float
    doc: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False
    term: str | None = None

    def domain(self) -> str:
        """The valid domain in words, e.g. ``> 0``, ``in [0, 1]``, ``in (0, pi) or +inf``."""
        lo, hi = self.low, self.high
        if math.isfinite(lo) and math.isfinite(hi):
            text = f"in {'(' if self.low_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if self.high_open else ']'}"
        elif math.isfinite(lo):
            text = f"{'>' if self.low_open else '>='} {_fmt(lo)}"
        elif math.isfinite(hi):
            text = f"{'<' if self.high_open else '<='} {_fmt(hi)}"
        else:
            text = "finite"
        return f"{text} or +inf" if self.allow_inf else text

    def invalid(self, value: Tensor) -> Tensor:
        """Where ``value`` lies outside the domain (bool, same shape)."""
        ok = torch.isfinite(value)
        if math.isfinite(self.low):
            ok = ok & ((value > self.low) if self.low_open else (value >= self.low))
        if math.isfinite(self.high):
            ok = ok & ((value < self.high) if self.high_open else (value <= self.high))
        if self.allow_inf:
            ok = ok | (value == math.inf)
        return ~ok


def _fmt(x: float) -> str:
    return "pi" if x == math.pi else f"{x:g}"


def params_tuple(name: str, table: Sequence[Param], doc: str = "") -> type:
    """A :class:`typing.NamedTuple` class with one field per row of ``table`` (defaults: the rows' Python floats).

    A NamedTuple is a pytree, so ``torch.compile`` and ``torch.func`` see through it; fields that are Python floats
    at their neutral default cost nothing in the step.
    """
    cls = NamedTuple(name, [(p.name, Tensor | float) for p in table])
    cls.__new__.__defaults__ = tuple(p.default for p in table)
    cls.__doc__ = doc or f"Physical parameters of the system, one tensor ``[*B]`` (or a float) per field: {cls._fields}."
    return cls


def validate_values(table: Sequence[Param], mapping: Mapping[str, Any], required: Sequence[str] = (),
                    batch_shape: Sequence[int] | None = None, prefix: str = "params") -> None:
    """Raises ``ValueError`` naming the field when a value of ``mapping`` is outside its :class:`Param` domain.

    ``required`` names fields that must be present (the others take their defaults). With ``batch_shape`` every
    value must broadcast to it. One host sync (a single reduction) when everything is valid.
    """
    rows = {p.name: p for p in table}
    unknown = sorted(set(mapping.keys()) - set(rows))
    if unknown:
        raise ValueError(f"unknown physical parameter(s) {unknown}; expected some of {list(rows)}")
    missing = [name for name in required if name not in mapping.keys()]
    if missing:
        raise ValueError(f"{prefix} is missing {missing}; expected the keys {list(rows)}")
    values = {name: torch.as_tensor(mapping[name] if name in mapping.keys() else rows[name].default)
              for name in rows}
    if batch_shape is not None:
        for name, value in values.items():
            try:
                torch.broadcast_shapes(value.shape, tuple(batch_shape))
            except RuntimeError:
                raise ValueError(f"{prefix}.{name} has shape {list(value.shape)}, which does not match the batch "
                                 f"shape {list(batch_shape)}") from None
    bad = torch.stack([rows[name].invalid(v).any() for name, v in values.items()])
    if not bool(bad.any()):
        return
    for name, value in values.items():
        row = rows[name]
        invalid = row.invalid(value)
        if not bool(invalid.any()):
            continue
        nonfinite = ~torch.isfinite(value) & ~((value == math.inf) if row.allow_inf else torch.zeros_like(invalid))
        if bool(nonfinite.any()):
            if row.allow_inf:
                raise ValueError(f"{prefix}.{name} contains NaN or inf other than +inf; expected {row.domain()}")
            raise ValueError(f"{prefix}.{name} contains NaN or inf; expected finite values")
        if row.allow_inf:
            raise ValueError(f"{prefix}.{name} must be {row.domain()}, got {value[invalid].flatten()[0].item():g}")
        both = f" ({row.domain()})" if math.isfinite(row.low) and math.isfinite(row.high) else ""
        if math.isfinite(row.low) and bool(((value <= row.low) if row.low_open else (value < row.low)).any()):
            op = ">" if row.low_open else ">="
            raise ValueError(f"{prefix}.{name} must be {op} {_fmt(row.low)}{both}, got min {value.min().item():g}")
        op = "<" if row.high_open else "<="
        raise ValueError(f"{prefix}.{name} must be {op} {_fmt(row.high)}{both}, got max {value.max().item():g}")


@dataclass(frozen=True)
class System:
    """A differentiable control task and one physics variant of it (see the module docstring).

    Attributes:
        name: the preset it was built from (:meth:`override` keeps it).
        fixed: ``{parameter: value}`` that differ from the defaults, for the whole run.
        ranges: ``{parameter: (low, high)}`` drawn uniformly per episode (:meth:`params`); never also in ``fixed``.
        description: one line on what the variant changes and why.

    Class attributes a subclass declares: ``system`` (its registry name), ``PARAMS`` (the :class:`Param` table),
    ``Params`` (the tuple built from it with :func:`params_tuple`), ``PRESETS`` (``{name: instance}``),
    ``state_names``, ``observation_names``, ``action_names``, ``horizon`` (the evaluation episode's steps) and
    ``success_tolerance`` (what :meth:`is_success` accepts). Methods it implements: :meth:`initial_state`,
    :meth:`observe`, :meth:`step` (with :meth:`constants` when it pre-computes anything), :meth:`goal_error`,
    :meth:`is_success` and optionally :meth:`feature_rules`, :meth:`draw`.
    """

    name: str = "default"
    fixed: dict[str, float] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    description: str = ""

    system: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    Params: ClassVar[type] = tuple
    PRESETS: ClassVar[dict[str, System]] = {}
    state_names: ClassVar[tuple[str, ...]] = ()
    observation_names: ClassVar[tuple[str, ...]] = ()
    action_names: ClassVar[tuple[str, ...]] = ()
    #: Steps of an evaluation episode (and the default training episode length).
    horizon: ClassVar[int] = 200
    #: The parameter that bounds the action (the policy squashes to it).
    action_bound: ClassVar[str] = ""
    #: Standard-normal draws the step needs per environment and step when its noise term is on (0: none).
    noise_dim: ClassVar[int] = 0
    #: The parameter that scales the noise (named in errors).
    noise_param: ClassVar[str] = ""
    #: Whether :mod:`research.native`'s generated C loop implements this system's step (when its features are off).
    native: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------------------ parameters
    def __post_init__(self) -> None:
        fields_ = self.param_names()
        for what, names in (("fixed", self.fixed), ("ranges", self.ranges)):
            unknown = sorted(set(names) - set(fields_))
            if unknown:
                raise ValueError(f"unknown physical parameter(s) {unknown} in {self.system} physics {self.name!r} "
                                 f"{what}; expected one of {list(fields_)}")
        both = sorted(set(self.fixed) & set(self.ranges))
        if both:
            raise ValueError(f"physics {self.name!r}: {both} is both fixed and drawn; give each parameter one of them")
        for key, bounds in self.ranges.items():
            low, high = (float(x) for x in bounds)
            if not (math.isfinite(low) and math.isfinite(high)) or high < low:
                raise ValueError(f"ranges[{key!r}] must be finite [low, high] with low <= high, got {bounds}")
        values = self.defaults()
        f64 = torch.float64
        validate_values(self.PARAMS, {k: torch.tensor(v, dtype=f64) for k, v in values.items()})
        for key, (low, high) in self.ranges.items():
            validate_values(self.PARAMS, {**{k: torch.tensor(v, dtype=f64) for k, v in values.items()},
                                          key: torch.tensor([float(low), float(high)], dtype=f64)})
        self.check(values)

    def check(self, values: Mapping[str, float]) -> None:
        """Cross-parameter checks beyond each field's domain (override; ``values`` holds every fixed value)."""

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(p.name for p in cls.PARAMS)

    @classmethod
    def default_values(cls) -> dict[str, float]:
        """``{name: default}`` of every parameter: the Gymnasium environment."""
        return {p.name: p.default for p in cls.PARAMS}

    def defaults(self) -> dict[str, float]:
        """``{name: value}``: the defaults with ``fixed`` on top (ranged parameters at their default)."""
        return {**self.default_values(), **{k: float(v) for k, v in self.fixed.items()}}

    def value(self, name: str) -> float:
        """The fixed value of parameter ``name`` (its default when not overridden; not for ranged parameters)."""
        if name in self.ranges:
            raise ValueError(f"physics {self.name!r} draws {name} per episode from {self.ranges[name]}; no one value")
        if name not in self.param_names():
            raise ValueError(f"unknown physical parameter {name!r}; expected one of {list(self.param_names())}")
        return float(self.fixed.get(name, self.default_values()[name]))

    def override(self, overrides: Mapping[str, float] | None = None,
                 ranges: Mapping[str, Sequence[float]] | None = None) -> System:
        """This variant with ``overrides`` (fixed values) and ``ranges`` (per-episode draws) on top, same name.

        An override pins a parameter that is drawn here, and a range draws one that is fixed here; giving the same
        parameter in both raises ``ValueError``. Returns ``self`` when both are empty.
        """
        overrides = {str(k): float(v) for k, v in (overrides or {}).items()}
        new_ranges: dict[str, tuple[float, float]] = {}
        for key, bounds in (ranges or {}).items():
            if len(bounds) != 2:
                raise ValueError(f"ranges[{key!r}] must be [low, high], got {list(bounds)}")
            new_ranges[str(key)] = (float(bounds[0]), float(bounds[1]))
        both = sorted(set(overrides) & set(new_ranges))
        if both:
            raise ValueError(f"{both} given both as a fixed value and as a range; give each parameter one of them")
        if not overrides and not new_ranges:
            return self
        fixed = {k: v for k, v in self.fixed.items() if k not in new_ranges}
        fixed.update(overrides)
        drawn = {k: v for k, v in self.ranges.items() if k not in overrides}
        drawn.update(new_ranges)
        changes = ([f"{k}={v:g}" for k, v in overrides.items()]
                   + [f"{k} in [{a:g}, {b:g}]" for k, (a, b) in new_ranges.items()])
        description = f"{self.description} Changed: {', '.join(changes)}."
        return type(self)(self.name, fixed, drawn, description)

    def params(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Any:
        """Parameters for a batch of episodes: a :attr:`Params` tuple of ``[*batch_shape]`` tensors, ``ranges``
        drawn uniformly from ``generator`` (one ``torch.rand`` per ranged field, in table order), fixed values and
        defaults otherwise."""
        shape = tuple(batch_shape)
        values = self.defaults()
        out = []
        for p in self.PARAMS:
            if p.name in self.ranges:
                low, high = (float(x) for x in self.ranges[p.name])
                u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
                out.append(low + (high - low) * u)
            else:
                out.append(torch.full(shape, float(values[p.name]), device=device, dtype=dtype))
        return self.Params(*out)

    def default_params(self, like: Tensor) -> Any:
        """The fixed values as 0-d tensors on ``like``'s device and dtype (what :meth:`step` uses without params)."""
        values = self.defaults()
        return self.Params(*(torch.tensor(float(values[p.name]), dtype=like.dtype, device=like.device)
                             for p in self.PARAMS))

    @property
    def deterministic(self) -> bool:
        """No noise and no per-episode draws: one initial state gives one trajectory."""
        return not self.ranges and not self.needs_noise

    @property
    def max_action(self) -> float:
        """The largest action magnitude any episode of this variant accepts (what a policy squashes to)."""
        if self.action_bound in self.ranges:
            return float(self.ranges[self.action_bound][1])
        return self.value(self.action_bound)

    # ------------------------------------------------------------------------------------------------ features
    @staticmethod
    def feature_rules(p: Any) -> dict[str, Any]:
        """``{term: condition}``: which optional terms the values ``p`` switch on, each condition written with
        operators that work on floats and on tensors alike (``&``, ``|``, comparisons, ``torch.isfinite`` on a
        tensor). Override in systems with optional terms; the default has none."""
        return {}

    @property
    def features(self) -> frozenset[str]:
        """The optional terms some episode of this variant needs (static, no host sync): every corner of the
        ``ranges`` box is tried, so monotone conditions (all of today's) are decided exactly."""
        return self._terms

    @functools.cached_property
    def _terms(self) -> frozenset[str]:
        """:attr:`features`, computed once per instance (resets and rollouts ask for it often)."""
        values = self.defaults()
        corners = itertools.product(*(self.ranges[n] if n in self.ranges else (values[n],) for n in self.param_names()))
        on: set[str] = set()
        for corner in corners:
            p = self.Params(*(torch.tensor(float(v), dtype=torch.float64) for v in corner))
            on.update(term for term, cond in self.feature_rules(p).items() if bool(cond))
        return frozenset(on)

    def features_of(self, params: Any) -> frozenset[str]:
        """The optional terms that ``params`` need, read from the values (one host sync; none without terms)."""
        rules = self.feature_rules(self.Params(*(torch.as_tensor(v) for v in params)))
        if not rules:
            return frozenset()
        flags = torch.stack([torch.as_tensor(c).any() for c in rules.values()]).tolist()
        return frozenset(t for t, f in zip(rules, flags, strict=True) if f)

    @property
    def needs_noise(self) -> bool:
        """Whether the step draws on a noise sample (then every rollout needs ``noise [*B, H, noise_dim]``)."""
        return self.noise_dim > 0 and "noise" in self.features

    # ------------------------------------------------------------------------------------------------ dynamics
    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def obs_dim(self) -> int:
        return len(self.observation_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def constants(self, params: Any = None, features: frozenset[str] | None = None, like: Tensor | None = None) -> Any:
        """What :meth:`step` needs from ``params``, derived once per rollout (default: the parameters themselves).

        ``params=None`` uses the fixed values (on ``like``'s device and dtype). ``features`` (default
        :attr:`features`) says which optional terms to prepare."""
        return self.default_params(like if like is not None else torch.zeros(())) if params is None else params

    def initial_state(self, batch_shape: Sequence[int], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                      params: Any = None) -> Tensor:
        """The reset distribution: states ``[*batch_shape, state_dim]`` drawn from ``generator``."""
        raise NotImplementedError

    def reset_state(self, batch_shape: Sequence[int], generator: torch.Generator | None, like: Tensor,
                    constants: Any = None, features: Any = None) -> Tensor:
        """Fresh states ``[*batch_shape, state_dim]`` for episodes that end inside a rollout (on ``like``'s device and
        dtype; ``constants`` are the rollout's). Default: :meth:`initial_state`."""
        return self.initial_state(batch_shape, generator, like.device, like.dtype)

    def observe(self, state: Tensor) -> Tensor:
        """The observation ``[*B, obs_dim]`` of ``state [*B, state_dim]``."""
        raise NotImplementedError

    def observe_for_step(self, state: Tensor) -> tuple[Tensor, Any]:
        """``(observe(state), aux)``, where ``aux`` is whatever :meth:`step` can reuse (e.g. ``sin th``)."""
        return self.observe(state), None

    def step(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None,
             aux: Any = None) -> tuple[Tensor, Tensor]:
        """One transition: ``state [*B, state_dim]``, ``action [*B, action_dim]`` -> ``(next_state, reward [*B])``.

        ``constants`` from :meth:`constants` (default: this variant's fixed values); ``noise [*B, noise_dim]``
        standard-normal draws when the variant has noise; ``aux`` from :meth:`observe_for_step`.
        """
        raise NotImplementedError

    def contact(self, state: Tensor, action: Tensor, constants: Any = None, noise: Tensor | None = None) -> Tensor:
        """``[*B]`` bool: the transition :meth:`step` takes from ``state [*B, state_dim]`` under ``action
        [*B, action_dim]`` is stiff (a contact, a penalty regime), so its Jacobian should not be chained into a
        gradient (``research.algos.ahac`` cuts there). Arguments as in :meth:`step`; no gradient; a separate call,
        so rollouts that do not ask pay nothing. Default: no contact anywhere (systems without contact)."""
        return torch.zeros(state.shape[:-1], dtype=torch.bool, device=state.device)

    def goal_error(self, state: Tensor) -> Tensor:
        """A distance ``[*B]`` of ``state`` to the goal (radians from upright for the swing-ups)."""
        raise NotImplementedError

    def is_success(self, state: Tensor) -> Tensor:
        """``[*B]`` bool: the episode ended at the goal (held there, not passing through)."""
        raise NotImplementedError

    def noise_block(self, batch_shape: Sequence[int], horizon: int, generator: torch.Generator | None,
                    like: Tensor, features: frozenset[str] | None = None, noise: Tensor | None = None
                    ) -> Tensor | None:
        """The standard-normal noise ``[*B, H, noise_dim]`` of a rollout, or ``None`` when the step needs none.

        ``noise`` (if given) is checked and returned (``[*B, H]`` is accepted when ``noise_dim == 1``)."""
        features = self.features if features is None else features
        if not (self.noise_dim > 0 and "noise" in features):
            return None
        expected = (*batch_shape, horizon, self.noise_dim)
        if noise is not None:
            if self.noise_dim == 1 and tuple(noise.shape) == expected[:-1]:
                return noise.unsqueeze(-1)
            if tuple(noise.shape) != expected:
                shown = list(expected[:-1]) if self.noise_dim == 1 else list(expected)
                raise ValueError(f"noise must have shape [*B, H] = {shown}, got {list(noise.shape)}")
            return noise
        if generator is None:
            when = f"{self.noise_param} > 0" if self.noise_param else "the physics has noise"
            raise ValueError(f"generator (or noise_generator, or noise) is required when {when}: the rollout draws "
                             "its noise from it; got None")
        return torch.randn(expected, generator=generator, device=like.device, dtype=like.dtype)

    def draw(self, state: Tensor, action: Tensor | None = None, size: int = 256) -> Any:
        """A picture of one state ``[state_dim]`` (a PIL image; override to render)."""
        raise NotImplementedError(f"{type(self).__name__} has no picture")

    def describe(self) -> str:
        """One line: the system, the variant and what it changes."""
        return f"{self.system}/{self.name}: {self.description}"
