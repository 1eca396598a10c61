"""Differentiable systems behind one interface (:class:`research.systems.base.System`), and their registry.

::

    import research.systems as systems
    pendulum = systems.make("pendulum", damping=0.1)        # a System: the pendulum with viscous friction
    wall = systems.get_system("pendulum", "wall")            # a named preset
    systems.SYSTEMS                                          # {"pendulum": Pendulum, "cartpole": ..., ...}

Adding a system is one file under ``research/systems/`` with a :class:`~research.systems.base.System` subclass and
one line in :data:`SYSTEMS` (``docs/systems.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from research.systems.acrobot import Acrobot
from research.systems.base import Param, System
from research.systems.cartpole import CartPole
from research.systems.pendulum import Pendulum

#: Every system by name: the one place a new system is registered.
SYSTEMS: dict[str, type[System]] = {
    "pendulum": Pendulum,
    "cartpole": CartPole,
    "acrobot": Acrobot,
}


def system_class(name: str) -> type[System]:
    """The class registered as ``name``; ``ValueError`` listing the registry otherwise."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {list(SYSTEMS)}")
    return SYSTEMS[name]


def get_system(name: str = "pendulum", preset: str = "default", overrides: Mapping[str, float] | None = None,
               ranges: Mapping[str, Sequence[float]] | None = None) -> System:
    """System ``name``'s preset ``preset`` with ``overrides`` (fixed values) and ``ranges`` (per-episode draws)."""
    cls = system_class(name)
    if preset not in cls.PRESETS:
        raise ValueError(f"unknown physics {preset!r} for system {name!r}; expected one of {list(cls.PRESETS)}")
    return cls.PRESETS[preset].override(overrides, ranges)


def make(name: str, **params: float) -> System:
    """System ``name`` at its default physics with ``params`` fixed: ``make("cartpole", masspole=0.2)``."""
    return get_system(name, "default", overrides=params)


__all__ = ["SYSTEMS", "Param", "System", "get_system", "make", "system_class"]
