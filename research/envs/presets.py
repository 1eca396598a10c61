"""The pendulum's named physics variants, now in :mod:`research.systems.pendulum` (the old import path).

``Physics`` is :class:`research.systems.pendulum.Pendulum`: a pendulum variant is a system instance.
"""

from research.systems.pendulum import AXES, PRESETS, get_physics
from research.systems.pendulum import Pendulum as Physics

__all__ = ["AXES", "PRESETS", "Physics", "get_physics"]
