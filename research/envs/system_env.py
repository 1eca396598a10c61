"""Any :class:`research.systems.System` as a stateless, batched, differentiable TorchRL ``EnvBase``.

The tensordict carries the state (``state``, ``[*B, state_dim]`` in the system's order) and the physical parameters
(``params/<name>``, ``[*B]``), so a batch of any shape can mix parameters and gradients flow from rewards back to
actions, states and parameters. The pendulum keeps its own environment with named state keys
(:class:`research.envs.PendulumEnv`); :func:`make_env` picks the right one for a system.

Example::

    env = SystemEnv(research.systems.make("cartpole"), seed=0)
    td = env.reset(env.gen_params(batch_size=[256]))
    rollout = env.rollout(100, policy, tensordict=td, auto_reset=False)   # differentiable end to end
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from research.systems import System, get_system


class SystemEnv(EnvBase):
    """A :class:`~research.systems.System` as a TorchRL environment, stateless and not batch-locked.

    Keys: ``state`` ``[*B, state_dim]``; ``params/<name>`` ``[*B]`` for every parameter of the system;
    ``action`` ``[*B, action_dim]``; ``observation`` ``[*B, obs_dim]``; ``reward`` ``[*B, 1]``;
    ``done``/``terminated``/``truncated`` ``[*B, 1]`` (always ``False``: add ``StepCounter`` for a time limit).

    Args:
        system: the system and physics variant (an instance, or a registry name at its default physics).
        device, dtype: where and in which precision tensors live.
        seed: seed of the environment's own generator (resets, parameter draws, noise).
        batch_size: default batch shape when ``reset`` gets no tensordict.
    """

    batch_locked = False

    def __init__(self, system: System | str, device: torch.device | str | None = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int | None = None, batch_size: Sequence[int] = ()) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        super().__init__(device=device, batch_size=torch.Size(batch_size))
        self.system = get_system(system) if isinstance(system, str) else system
        self.dtype = dtype
        self.rng: torch.Generator | None = None
        self._make_specs()
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self.set_seed(seed)

    def gen_params(self, batch_size: Sequence[int] | None = None) -> TensorDict:
        """A tensordict ``{"params": {...}}`` of batch shape ``batch_size``: the system's ranges drawn with the env's
        generator, its fixed values otherwise."""
        batch = torch.Size(self.batch_size if batch_size is None else batch_size)
        params = self.system.params(batch, self.rng, self.device, self.dtype)._asdict()
        return TensorDict({"params": TensorDict(params, batch_size=batch)}, batch_size=batch, device=self.device)

    def _make_specs(self) -> None:
        system, batch = self.system, self.batch_size
        scalar = dict(shape=(), dtype=self.dtype, device=self.device)
        params_spec = Composite({name: Unbounded(**scalar) for name in system.param_names()}, shape=())
        state = Unbounded(shape=(system.state_dim,), dtype=self.dtype, device=self.device)
        self.observation_spec = Composite(
            state=state, params=params_spec,
            observation=Unbounded(shape=(system.obs_dim,), dtype=self.dtype, device=self.device), shape=(),
        ).expand(batch)
        self.state_spec = Composite(state=state.clone(), params=params_spec.clone(), shape=()).expand(batch)
        flag = dict(n=2, shape=(1,), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(done=Categorical(**flag), terminated=Categorical(**flag),
                                   truncated=Categorical(**flag), shape=()).expand(batch)
        bound = system.max_action
        self.action_spec = Bounded(low=-bound, high=bound, shape=(*batch, system.action_dim), dtype=self.dtype,
                                   device=self.device)
        self.reward_spec = Unbounded(shape=(*batch, 1), dtype=self.dtype, device=self.device)

    def _set_seed(self, seed: int | None) -> None:
        self.rng = torch.Generator(device=self.device).manual_seed(int(seed) if seed is not None else 0)

    def _params(self, td: TensorDictBase) -> tuple:
        return self.system.Params(*(td["params", name] for name in self.system.param_names()))

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDict:
        if tensordict is None or "params" not in tensordict.keys():
            batch = self.batch_size if tensordict is None else tensordict.batch_size
            params_td = self.gen_params(batch_size=batch)["params"]
        else:
            params_td = tensordict["params"]
        batch = params_td.batch_size
        state = self.system.initial_state(batch, self.rng, self.device, self.dtype,
                                          params=self.system.Params(*(params_td[n] for n in self.system.param_names())))
        done = torch.zeros((*batch, 1), dtype=torch.bool, device=self.device)
        return TensorDict({"state": state, "params": params_td, "observation": self.system.observe(state),
                           "done": done, "terminated": done.clone(), "truncated": done.clone()},
                          batch_size=batch, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        state, action = tensordict["state"], tensordict["action"]
        system = self.system
        if action.shape[-1:] != (system.action_dim,):
            raise ValueError(f"action must have shape [*batch, {system.action_dim}], got {list(action.shape)}")
        constants = system.constants(self._params(tensordict), like=state)
        noise = system.noise_block(state.shape[:-1], 1, self.rng, state)
        next_state, reward = system.step(state, action, constants, None if noise is None else noise[..., 0, :])
        done = torch.zeros((*state.shape[:-1], 1), dtype=torch.bool, device=state.device)
        return TensorDict({"state": next_state, "params": tensordict["params"],
                           "observation": system.observe(next_state), "reward": reward.unsqueeze(-1),
                           "done": done, "terminated": done.clone(), "truncated": done.clone()},
                          batch_size=tensordict.batch_size, device=self.device)


def make_env(system: System, device: torch.device | str | None = "cpu", dtype: torch.dtype = torch.float32,
             seed: int | None = None, batch_size: Sequence[int] = (), validate: bool = True) -> EnvBase:
    """The TorchRL environment of ``system``: :class:`research.envs.PendulumEnv` (named state keys ``th``,
    ``thdot``) for the pendulum, :class:`SystemEnv` for every other system."""
    if system.system == "pendulum":
        from research.envs.pendulum import PendulumEnv

        return PendulumEnv(device=device, dtype=dtype, seed=seed, batch_size=batch_size, physics=system,
                           validate=validate)
    return SystemEnv(system, device=device, dtype=dtype, seed=seed, batch_size=batch_size)
