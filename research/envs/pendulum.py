"""A stateless, batched, differentiable Pendulum-v1 as a TorchRL ``EnvBase``.

In the spirit of TorchRL's pendulum tutorial, on current torchrl names. The environment keeps no state: the
tensordict carries the state (``th``, ``thdot``) and the physical parameters (``params``), so a batch of any shape
can mix gravities, masses and lengths, and gradients flow from rewards back to actions, states and parameters.

Example::

    env = PendulumEnv(seed=0)
    td = env.reset(env.gen_params(batch_size=[256]))
    rollout = env.rollout(100, policy, tensordict=td, auto_reset=False)   # differentiable end to end
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from research.envs.physics import (
    DEFAULT_PARAMS,
    PendulumParams,
    observation,
    pendulum_step,
    physics_features,
    sample_initial_state,
    sample_params,
    to_wall_range,
    validate_params,
)
from research.envs.presets import Physics, get_physics


class PendulumEnv(EnvBase):
    """Gymnasium Pendulum-v1 physics, stateless and not batch-locked.

    Keys: state ``th``, ``thdot`` (``[*B]``); parameters ``params/{g, m, l, dt, max_speed, max_torque}`` and the
    physics knobs ``params/{damping, friction, friction_width, torque_noise, wall_angle, wall_restitution,
    wall_stiffness}`` (``[*B]``; see :mod:`research.envs.physics`);
    ``action`` ``[*B, 1]``; ``observation`` ``[*B, 3]`` = ``[cos th, sin th, thdot]``; ``reward`` ``[*B, 1]``;
    ``done``/``terminated``/``truncated`` ``[*B, 1]`` (always ``False``: the task never ends by itself, add
    ``StepCounter(200)`` for Gymnasium's time limit).

    Args:
        device: where tensors live.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        seed: seed of the environment's own ``torch.Generator`` (the global RNG is never touched).
        batch_size: default batch shape used when ``reset`` gets no tensordict (``[]`` by default). With the default
            ``[]``, any batch shape works by passing ``env.gen_params(batch_size=...)`` to ``reset``; an env built
            with a non-empty ``batch_size`` is held to it by torchrl.
        param_ranges: optional domain randomisation, e.g. ``{"g": (8.0, 12.0)}``; used by ``gen_params`` when it
            is called without explicit values.
        validate: check actions and parameters at every step (one host sync per step). Turn off for raw speed.
        physics: a preset name of :data:`research.envs.presets.PRESETS` or a :class:`Physics` (default:
            Gymnasium's); ``param_ranges`` are drawn on top of its ranges. ``gen_params`` and ``reset`` follow it
            (with a wall, reset angles are represented in the wall's range), ``step`` draws torque noise from the
            env's generator. Which optional physics terms a step computes is the union of the physics' features
            and those of every parameter set the env has generated or been reset with (a superset is always
            correct); with ``validate=True`` each step also reads them from its own parameters.
        render_mode: ``None`` or ``"rgb_array"``. With ``"rgb_array"`` every reset and step also returns
            ``pixels`` (``[*B, render_size, render_size, 3]`` ``uint8``, one picture per batch element, drawn with
            pillow by :func:`research.render.pendulum_frame`, the applied torque as an arrow), so torchrl's
            ``VideoRecorder`` records it directly, and :meth:`render` returns the picture of the first batch element.
        render_size: side of those pictures in pixels.

    Recording a video with torchrl (``skip=1``: a frame per step; a ``CSVLogger`` writes ``.pt``, or ``.mp4`` where
    torchcodec is installed)::

        from torchrl.envs import TransformedEnv
        from torchrl.record import CSVLogger, VideoRecorder
        env = TransformedEnv(PendulumEnv(render_mode="rgb_array"),
                             VideoRecorder(CSVLogger("pendulum", log_dir="videos"), tag="swingup", skip=1))
        env.rollout(200, policy)   # a TensorDictModule reading "observation", e.g. research.policies.make_actor
        env.transform.dump()       # videos/pendulum/videos/swingup_0.pt: [1, 201, 3, H, W] uint8 (reset + 200)

    ``python -m research.render`` draws side-by-side comparisons of trained policies (GIF, MP4) from the same code.

    A non-finite action is not rejected: ``+-inf`` saturates at ``+-max_torque`` and ``NaN`` propagates into the
    next state and reward (see :mod:`research.envs.physics`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    batch_locked = False

    def __init__(
        self,
        device: torch.device | str | None = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        batch_size: Sequence[int] = (),
        param_ranges: Mapping[str, tuple[float, float]] | None = None,
        validate: bool = True,
        physics: Physics | str = "default",
        render_mode: str | None = None,
        render_size: int = 256,
    ) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if int(render_size) <= 0:
            raise ValueError(f"render_size must be a positive number of pixels, got {render_size}")
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self._last_frame_state: tuple[float, float | None] | None = None
        super().__init__(device=device, batch_size=torch.Size(batch_size))
        self.dtype = dtype
        self.param_ranges = dict(param_ranges or {})
        physics = get_physics(physics) if isinstance(physics, str) else physics
        self.physics = physics.override(ranges=self.param_ranges)  # fails early on unknown names or bad ranges
        self.features = self.physics.features
        self.validate = validate
        self.rng: torch.Generator | None = None
        self._make_specs()
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    @property
    def system(self) -> Physics:
        """The pendulum system this environment steps (its physics variant, with ``param_ranges`` on top)."""
        return self.physics

    # ------------------------------------------------------------------ parameters
    def gen_params(self, batch_size: Sequence[int] | None = None, **values: float) -> TensorDict:
        """A tensordict ``{"params": {...}}`` of batch shape ``batch_size``.

        Keyword values (e.g. ``g=9.81``) set a parameter for the whole batch; otherwise parameters named in the
        env's ``param_ranges`` are drawn uniformly (with the env's generator) and the rest take Gymnasium's values.
        """
        batch = torch.Size(self.batch_size if batch_size is None else batch_size)
        unknown = set(values) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown physical parameter(s) {sorted(unknown)}; expected some of {list(DEFAULT_PARAMS)}")
        ranges = {k: v for k, v in self.physics.ranges.items() if k not in values}
        params = sample_params(
            batch, ranges, generator=self.rng, device=self.device, dtype=self.dtype, fixed=self.physics.fixed
        )._asdict()
        if values:
            self.features = self.features | physics_features(PendulumParams(**{**DEFAULT_PARAMS, **values}))
        for name, value in values.items():
            params[name] = torch.full(batch, float(value), device=self.device, dtype=self.dtype)
        validate_params(params)
        return TensorDict({"params": TensorDict(params, batch_size=batch)}, batch_size=batch, device=self.device)

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        batch = self.batch_size
        scalar = dict(shape=(), dtype=self.dtype, device=self.device)
        params_spec = Composite({name: Unbounded(**scalar) for name in DEFAULT_PARAMS}, shape=())
        observation_spec = Composite(
            th=Unbounded(**scalar),
            thdot=Unbounded(**scalar),
            params=params_spec,
            observation=Unbounded(shape=(3,), dtype=self.dtype, device=self.device),
            shape=(),
        )
        state_spec = Composite(th=Unbounded(**scalar), thdot=Unbounded(**scalar), params=params_spec.clone(), shape=())
        flag = dict(n=2, shape=(1,), dtype=torch.bool, device=self.device)
        done_spec = Composite(
            done=Categorical(**flag), terminated=Categorical(**flag), truncated=Categorical(**flag), shape=()
        )
        # Specs lead with the env's default batch shape; the env is not batch-locked, so other shapes still work.
        self.observation_spec = observation_spec.expand(batch)
        self.state_spec = state_spec.expand(batch)
        self.done_spec = done_spec.expand(batch)
        self.action_spec = Bounded(
            low=-self.physics.max_torque,
            high=self.physics.max_torque,
            shape=(*batch, 1),
            dtype=self.dtype,
            device=self.device,
        )
        self.reward_spec = Unbounded(shape=(*batch, 1), dtype=self.dtype, device=self.device)
        if self.render_mode == "rgb_array":
            side = self.render_size
            self.observation_spec["pixels"] = Bounded(
                low=0, high=255, shape=(*batch, side, side, 3), dtype=torch.uint8, device=self.device
            )

    # ------------------------------------------------------------------ EnvBase API
    def _set_seed(self, seed: int | None) -> None:
        rng = torch.Generator(device=self.device)
        rng.manual_seed(int(seed) if seed is not None else 0)
        self.rng = rng

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDict:
        if tensordict is None or "params" not in tensordict.keys():
            batch = self.batch_size if tensordict is None else tensordict.batch_size
            params = self.gen_params(batch_size=batch)["params"]
        else:
            params = tensordict["params"]
            validate_params(params, tensordict.batch_size)
            self.features = self.features | physics_features(params)
        batch = params.batch_size
        th, thdot = sample_initial_state(batch, generator=self.rng, device=self.device, dtype=self.dtype)
        if self.features.wall:
            th = to_wall_range(th, PendulumParams.from_mapping(params).wall_angle)
        done = torch.zeros((*batch, 1), dtype=torch.bool, device=self.device)
        out = TensorDict(
            {
                "th": th,
                "thdot": thdot,
                "params": params,
                "observation": observation(th, thdot),
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            batch_size=batch,
            device=self.device,
        )
        if self.render_mode == "rgb_array":
            out["pixels"] = self._pixels(th, None)
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        th, thdot, action = tensordict["th"], tensordict["thdot"], tensordict["action"]
        if self.validate:
            self._check_step_input(tensordict, th, thdot, action)
        params = PendulumParams.from_mapping(tensordict["params"])
        features = self.features | physics_features(params) if self.validate else self.features
        noise = None
        if features.noise:
            noise = torch.randn(th.shape, generator=self.rng, device=th.device, dtype=th.dtype)
        next_th, next_thdot, reward = pendulum_step(
            th, thdot, action.squeeze(-1), params, noise=noise, features=features
        )
        done = torch.zeros((*th.shape, 1), dtype=torch.bool, device=th.device)
        out = TensorDict(
            {
                "th": next_th,
                "thdot": next_thdot,
                "params": tensordict["params"],
                "observation": observation(next_th, next_thdot),
                "reward": reward.unsqueeze(-1),
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            batch_size=tensordict.batch_size,
            device=self.device,
        )
        if self.render_mode == "rgb_array":
            torque = action.squeeze(-1).clamp(-params.max_torque, params.max_torque)
            out["pixels"] = self._pixels(next_th, torque)
        return out

    # ------------------------------------------------------------------ rendering
    def _pixels(self, th: torch.Tensor, torque: torch.Tensor | None) -> torch.Tensor:
        """``[*B, S, S, 3]`` uint8 pictures of the states ``th [*B]`` (and the torques just applied)."""
        from research.render import pendulum_frame  # research.render imports this package: import it late

        angles = th.detach().reshape(-1).cpu().double().tolist()
        torques = [None] * len(angles) if torque is None else torque.detach().reshape(-1).cpu().double().tolist()
        if angles:
            self._last_frame_state = (angles[0], torques[0])
        side = self.render_size
        frames = [pendulum_frame(a, u, side) for a, u in zip(angles, torques, strict=True)]
        stacked = np.stack(frames) if frames else np.zeros((0, side, side, 3), dtype=np.uint8)
        return torch.from_numpy(stacked).reshape(*th.shape, side, side, 3).to(self.device)

    def render(self, tensordict: TensorDictBase | None = None) -> np.ndarray:
        """``[render_size, render_size, 3]`` uint8: the first batch element of ``tensordict`` (its ``th``, and the
        ``action`` if it holds one), or else of the last state this env returned (needs ``render_mode="rgb_array"``).

        ``torchrl.record.PixelRenderTransform(pass_tensordict=True)`` calls it this way.
        """
        from research.render import pendulum_frame

        if tensordict is not None:
            th = float(tensordict["th"].reshape(-1)[0])
            action = tensordict.get("action", None)
            torque = None if action is None else float(action.reshape(-1)[0])
        elif self._last_frame_state is not None:
            th, torque = self._last_frame_state
        else:
            raise RuntimeError("nothing to render yet: call reset() on an env built with render_mode='rgb_array', "
                               "or pass a tensordict holding 'th'")
        return pendulum_frame(th, torque, self.render_size)

    @staticmethod
    def _check_step_input(td: TensorDictBase, th: torch.Tensor, thdot: torch.Tensor, action: torch.Tensor) -> None:
        batch = tuple(td.batch_size)
        if action.ndim == 0 or action.shape[-1] != 1:
            raise ValueError(f"action must have shape [*batch, 1] = {[*batch, 1]}, got {list(action.shape)}")
        if tuple(action.shape[:-1]) != batch:
            raise ValueError(
                f"action has batch shape {list(action.shape[:-1])}, which does not match the state's batch shape "
                f"{list(batch)}; expected an action of shape {[*batch, 1]}"
            )
        for name, value in (("th", th), ("thdot", thdot)):
            if tuple(value.shape) != batch:
                raise ValueError(f"{name} must have shape {list(batch)} (the batch shape), got {list(value.shape)}")
        validate_params(td["params"], batch)
