"""Every system and preset as a Gymnasium environment: numpy in, numpy out, one environment at a time.

For Stable-Baselines3, CleanRL and anything else written against ``gymnasium.Env``. Importing this module registers
one id per system and preset (:func:`register_envs`), named ``research/<System>-<preset>-v0`` after the system's
class and the preset's name in its ``PRESETS``::

    research/Pendulum-default-v0   research/Pendulum-wall-v0   research/Pendulum-coulomb_smooth-v0   ...
    research/CartPole-default-v0   research/CartPole-heavy_pole-v0   research/CartPole-randomized-v0
    research/Acrobot-default-v0    research/Acrobot-weak-v0

:data:`ENV_IDS` lists them. Gymnasium 1.x has no plugin entry points (``load_plugin_envs`` and the
``gymnasium.envs`` entry-point group were removed in 1.0), so either import this module first or name it in the
id, which makes :func:`gymnasium.make` import it::

    import gymnasium, research.gym
    env = gymnasium.make("research/Pendulum-wall-v0")                 # after the import
    env = gymnasium.make("research.gym:research/Pendulum-wall-v0")    # no import needed

The registered environments end an episode by truncation after the system's evaluation horizon
(``System.horizon``, 200 steps for every system today): ``gymnasium.make`` adds a ``TimeLimit`` with
``max_episode_steps=system.horizon`` (override it with ``gymnasium.make(id, max_episode_steps=...)``). The class
itself never truncates and never terminates (the physics has no terminal state), like Gymnasium's classic-control
environments; wrap a directly built :class:`SystemGymEnv` in ``gymnasium.wrappers.TimeLimit`` yourself.

**Physics.** The state lives in a float64 torch tensor of batch shape ``()`` and every step is the system's own
``System.step``, the same function the differentiable trainers and the evaluator run (so the default pendulum agrees
with Gymnasium's Pendulum-v1 to float64 rounding: ``tests/test_gym.py``). Observations are returned as float32
(the spaces' dtype), rewards as Python floats. Each reset draws, from one ``torch.Generator``: the episode's
parameters (``system.params((), generator)``: the preset's per-episode ranges, if any), then the start state
(``system.initial_state((), generator, params=params)``); each step of a noisy variant then draws its noise
(``system.noise_block``) from the same generator. That generator is seeded from Gymnasium's ``np_random`` whenever
``reset`` gets a seed (and on the first reset), so ``reset(seed=k)`` replays an episode exactly.

**Spaces.** ``action_space = Box(-max_action, max_action, (action_dim,), float32)``, where ``max_action`` is the
variant's action bound (the pendulum's ``max_torque``, the cart-pole's ``force_max``; the largest of its range when
drawn per episode); the physics clips to the episode's bound. ``observation_space = Box(-inf, inf, (obs_dim,),
float32)``.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from research.systems import SYSTEMS, System, get_system

#: The namespace of every id registered here.
NAMESPACE = "research"
#: The version suffix of every id (bumped when an environment's behaviour changes).
VERSION = 0


def env_id(system: str | type[System] | System, preset: str = "default") -> str:
    """The Gymnasium id of ``system``'s preset ``preset``: ``env_id("pendulum", "wall") == "research/Pendulum-wall-v0"``."""
    if isinstance(system, str):
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; expected one of {list(SYSTEMS)}")
        system = SYSTEMS[system]
    cls = system if isinstance(system, type) else type(system)
    return f"{NAMESPACE}/{cls.__name__}-{preset}-v{VERSION}"


def _implements_draw(system: System) -> bool:
    return type(system).draw is not System.draw


def _time_step(system: System) -> float | None:
    """The variant's step length in seconds (its ``dt`` or ``tau`` parameter), ``None`` when it has neither."""
    values = system.defaults()
    for name in ("dt", "tau"):
        if name in values and name not in system.ranges:
            return float(values[name])
    return None


class SystemGymEnv(gymnasium.Env):
    """One :class:`research.systems.System` variant as a ``gymnasium.Env`` (see the module docstring).

    Args:
        system: a registry name (``"pendulum"``, ``"cartpole"``, ...) or a ``System`` instance (then ``preset``,
            ``overrides`` and ``ranges`` must be left out).
        preset: the preset of a named system (``"default"``, ``"wall"``, ...).
        overrides: fixed parameter values on top of the preset (``{"damping": 0.2}``).
        ranges: parameters drawn per episode on top of the preset (``{"g": (9.0, 11.0)}``).
        render_mode: ``None`` or ``"rgb_array"`` (:meth:`render` then returns ``[size, size, 3]`` ``uint8``: the
            system's ``draw`` of the current state and the last action); only for systems that can draw.
        render_size: side of the rendered picture in pixels.
        dtype: the precision of the physics, ``torch.float64`` (default: Gymnasium's own precision) or
            ``torch.float32`` (the trainers' default).

    Attributes:
        system: the ``System`` instance.
        state: the current state as a float64 numpy array ``[state_dim]`` in the system's order (settable, like
            Gymnasium's ``env.unwrapped.state``: the next step starts there).
        params: the current episode's parameters (a ``System.Params`` tuple of 0-d tensors).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, system: str | System = "pendulum", preset: str = "default",
                 overrides: dict[str, float] | None = None, ranges: dict[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None, render_size: int = 256, dtype: torch.dtype = torch.float64) -> None:
        if isinstance(system, System):
            if preset != "default" or overrides or ranges:
                raise ValueError("give either a System instance or a system name with preset/overrides/ranges, "
                                 "not both")
            self.system = system
        else:
            self.system = get_system(system, preset, overrides, ranges)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.dtype = dtype
        can_draw = _implements_draw(self.system)
        dt = _time_step(self.system)
        self.metadata = {"render_modes": ["rgb_array"] if can_draw else [],
                         "render_fps": round(1.0 / dt) if dt else 30}
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']} for "
                             f"{type(self.system).__name__}, got {render_mode!r}")
        if int(render_size) <= 0:
            raise ValueError(f"render_size must be a positive number of pixels, got {render_size}")
        self.render_mode = render_mode
        self.render_size = int(render_size)

        bound = np.float32(self.system.max_action)
        self.action_space = spaces.Box(-bound, bound, shape=(self.system.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.system.obs_dim,), dtype=np.float32)

        self._generator: torch.Generator | None = None
        self._like = torch.zeros((), dtype=dtype)
        self._state: torch.Tensor | None = None
        self._aux: Any = None  # what the step can reuse from the last observation (System.observe_for_step) ...
        self._aux_of: torch.Tensor | None = None  # ... and the state it belongs to
        self._last_action: torch.Tensor | None = None
        self.params: Any = None
        self._constants: Any = None
        self._features = self.system.features
        self._noisy = self.system.needs_noise

    # ------------------------------------------------------------------------------------------------ state
    @property
    def state(self) -> np.ndarray:
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before reading the state")
        return self._state.detach().to(torch.float64).numpy().copy()

    @state.setter
    def state(self, value: Any) -> None:
        self._state = self._as_state(value)
        self._aux_of = None

    def _as_state(self, value: Any) -> torch.Tensor:
        state = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=self.dtype)
        if tuple(state.shape) != (self.system.state_dim,):
            raise ValueError(f"state must have shape [{self.system.state_dim}] ({', '.join(self.system.state_names)}), "
                             f"got {list(state.shape)}")
        return state

    # ------------------------------------------------------------------------------------------------ Env API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """A new episode: parameters, then the start state, drawn from the environment's generator.

        ``options={"state": [...]}`` starts from that state instead of a drawn one (the parameters are still
        drawn; for the wall pendulum a fresh angle is represented in the wall's range, as every reset's is).
        """
        super().reset(seed=seed)
        if seed is not None or self._generator is None:
            self._generator = torch.Generator().manual_seed(int(self.np_random.integers(0, 2**63 - 1)))
        system, gen = self.system, self._generator
        self.params = system.params((), gen, dtype=self.dtype)
        self._constants = system.constants(self.params)
        state = system.initial_state((), gen, dtype=self.dtype, params=self.params)
        if options and options.get("state") is not None:
            state = self._as_state(options["state"])
            represent = getattr(system, "represent", None)
            if callable(represent):
                state = represent(state, self.params)
        self._state = state
        self._last_action = None
        return self._observation(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        act = torch.as_tensor(np.asarray(action, dtype=np.float64), dtype=self.dtype)
        if act.numel() != self.system.action_dim:
            raise ValueError(f"action must have shape [{self.system.action_dim}] "
                             f"({', '.join(self.system.action_names)}), got {list(act.shape)}")
        act = act.reshape(self.system.action_dim)
        noise = None
        if self._noisy:
            noise = self.system.noise_block((), 1, self._generator, self._like, self._features)[0]
        if self._aux_of is not self._state:
            self._observation()
        with torch.no_grad():
            self._state, reward = self.system.step(self._state, act, self._constants, noise, self._aux)
        self._last_action = act
        return self._observation(), float(reward), False, False, {}

    def render(self) -> np.ndarray | None:
        """``[size, size, 3]`` ``uint8``: the current state (and the last action) as the system draws it."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' to make()")
            return None
        if self._state is None:
            raise gymnasium.error.ResetNeeded("call reset() before render()")
        picture = self.system.draw(self._state, self._last_action, self.render_size)
        return np.asarray(picture.convert("RGB") if hasattr(picture, "convert") else picture, dtype=np.uint8)

    def _observation(self) -> np.ndarray:
        obs, self._aux = self.system.observe_for_step(self._state)
        self._aux_of = self._state
        return obs.numpy().astype(np.float32)


def register_envs() -> list[str]:
    """Registers ``research/<System>-<preset>-v0`` for every system of :data:`research.systems.SYSTEMS` and every
    preset in its ``PRESETS`` (entry point :class:`SystemGymEnv`, ``max_episode_steps`` the system's horizon).
    Idempotent: ids already registered are left alone. Returns every id."""
    ids = []
    for name, cls in SYSTEMS.items():
        for preset in cls.PRESETS:
            id_ = env_id(cls, preset)
            ids.append(id_)
            if id_ in gymnasium.registry:
                continue
            gymnasium.register(id=id_, entry_point="research.gym:SystemGymEnv",
                               kwargs={"system": name, "preset": preset}, max_episode_steps=cls.horizon)
    return ids


#: Every id registered on import: ``research/<System>-<preset>-v0``.
ENV_IDS: tuple[str, ...] = tuple(register_envs())

__all__ = ["ENV_IDS", "NAMESPACE", "SystemGymEnv", "env_id", "register_envs"]
