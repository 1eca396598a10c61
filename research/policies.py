"""The deterministic, torque-squashed MLP policy every method shares, and its save/load format.

The network is a torchrl ``MLP`` whose output goes through ``max_torque * tanh(.)``: the action always lies inside the
torque range, so the clip inside the physics never zeroes the gradient. The same ``SquashedMLP`` object is used as
a plain ``observation -> action`` module (fused rollouts, evaluation, :func:`load_policy`) and, wrapped by
:func:`make_actor`, as a TorchRL ``Actor`` reading ``observation`` and writing ``action`` (``env.rollout``, DDPG).
Its linear layers are :class:`research.linear.FastLinear` (the same parameters and state dict as ``nn.Linear``):
on CPU they run large products through oneDNN, which is ~2x faster than MKL on the AMD CPUs measured here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.modules import MLP, Actor

from research.envs.physics import MAX_TORQUE
from research.linear import FastLinear, accelerate
from research.native import NativeLayers
from research.rundir import atomic_write_bytes

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
#: The names of :data:`ACTIVATIONS`, as the type of config fields (so a config error lists them).
Activation = Literal["tanh", "relu", "elu", "silu"]
assert set(get_args(Activation)) == set(ACTIVATIONS)
POLICY_FORMAT = "research.SquashedMLP/1"


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


class SquashedMLP(nn.Module):
    """``observation [..., 3] -> action [..., 1]``: an MLP followed by ``max_torque * tanh``.

    Args:
        hidden_sizes: widths of the hidden layers, e.g. ``(64, 64)``.
        activation: one of ``tanh``, ``relu``, ``elu``, ``silu``.
        max_torque: bound of the action range.
        obs_dim, act_dim: input and output sizes (3 and 1 for the pendulum).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        max_torque: float = MAX_TORQUE,
        obs_dim: int = 3,
        act_dim: int = 1,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not hidden_sizes or any(int(h) <= 0 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be a non-empty list of positive widths, got {list(hidden_sizes)}")
        self.spec = {
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "max_torque": float(max_torque),
            "obs_dim": int(obs_dim),
            "act_dim": int(act_dim),
        }
        self.net = MLP(
            in_features=obs_dim,
            out_features=act_dim,
            num_cells=list(self.spec["hidden_sizes"]),
            activation_class=ACTIVATIONS[activation],
        )
        accelerate(self.net)
        self.max_torque = float(max_torque)
        self.obs_dim = int(obs_dim)

    def forward(self, observation: Tensor) -> Tensor:
        if observation.ndim == 0 or observation.shape[-1] != self.obs_dim:  # shapes only: no device sync, < 1 us
            raise ValueError(f"observation must have size {self.obs_dim} in its last dimension ([..., {self.obs_dim}]), "
                             f"got shape {list(observation.shape)}")
        return self.max_torque * torch.tanh(self.net(observation))

    def native_layers(self) -> NativeLayers | None:
        """This network as :mod:`research.native`'s C loop computes it (its opt-in: the loop runs nothing else), or
        ``None`` where this instance computes anything else: a subclass with its own ``forward`` or ``__call__``, a
        ``net`` that is not exactly linear layers with one ``tanh``/``relu`` between each two (a LayerNorm, a
        residual, dropout, another activation, a subclassed layer or ``MLP``), or hooks on it, its ``net`` or a
        layer."""
        cls = type(self)
        if cls.forward is not SquashedMLP.forward or cls.__call__ is not nn.Module.__call__:
            return None
        net = self.net
        if type(net) is not MLP or getattr(net, "_reshape_out", False):
            return None
        hooks = nn.modules.module
        if (hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
                or hooks._global_backward_pre_hooks or _hooked(self) or _hooked(net)):
            return None
        ops: list[nn.Linear | str] = []  # the computation in order: a layer, or the name of an activation
        for module in net:
            kind = type(module)
            if _hooked(module):
                return None
            if kind is FastLinear or kind is nn.Linear:
                ops.append(module)
                if kind is FastLinear and module.activation != "none":
                    ops.append(module.activation)
            elif kind is nn.Tanh or kind is nn.ReLU:
                ops.append("tanh" if kind is nn.Tanh else "relu")
            elif kind is not nn.Identity:
                return None
        linears, activations = ops[0::2], ops[1::2]  # layer, activation, layer, ..., layer
        if (len(ops) % 2 == 0 or not activations or len(set(activations)) != 1
                or not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears)
                or not all(isinstance(a, str) for a in activations)):
            return None
        return NativeLayers(tuple(m.weight for m in linears), tuple(m.bias for m in linears), activations[0],
                            float(self.max_torque))



def make_policy(
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "tanh",
    max_torque: float = MAX_TORQUE,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    obs_dim: int = 3,
    act_dim: int = 1,
) -> SquashedMLP:
    """A freshly initialised :class:`SquashedMLP` on ``device`` in ``dtype`` (seed torch beforehand).

    ``max_torque`` is the action bound and ``obs_dim``/``act_dim`` the sizes of the system's observation and action
    (a system gives them: ``make_policy(..., system.max_action, obs_dim=system.obs_dim,
    act_dim=system.action_dim)``; the defaults are the pendulum's)."""
    return SquashedMLP(hidden_sizes, activation, max_torque, obs_dim, act_dim).to(device=device, dtype=dtype)


def make_actor(policy: SquashedMLP) -> Actor:
    """Wraps the network as a TorchRL ``Actor`` (``observation`` -> ``action``), sharing its parameters."""
    return Actor(policy, in_keys=["observation"], out_keys=["action"])


def as_tensor_policy(policy: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Accepts a plain ``observation -> action`` module or a TensorDict module and returns a tensor function."""
    if isinstance(policy, Actor) and isinstance(policy.module, nn.Module) and policy.in_keys == ["observation"]:
        return policy.module
    if isinstance(policy, TensorDictModuleBase):

        def call(observation: Tensor) -> Tensor:
            td = TensorDict({"observation": observation}, batch_size=observation.shape[:-1])
            return policy(td)["action"]

        return call
    return policy


def save_policy(policy: SquashedMLP, path: str | os.PathLike) -> None:
    """Writes ``policy.pt`` atomically: the constructor arguments and a CPU ``float32`` state dict."""
    if isinstance(policy, Actor):
        policy = policy.module
    if not isinstance(policy, SquashedMLP):
        raise TypeError(f"save_policy expects a SquashedMLP, got {type(policy).__name__}")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in policy.state_dict().items()}
    payload: dict[str, Any] = {"format": POLICY_FORMAT, "spec": dict(policy.spec), "state_dict": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_policy(path: str | os.PathLike) -> SquashedMLP:
    """Loads a ``policy.pt`` written by any trainer of this project.

    Returns a CPU ``float32`` module in eval mode mapping ``observation [..., 3] = [cos th, sin th, thdot]`` to
    ``action [..., 1]``; no other set-up is needed::

        policy = research.load_policy("results/pendulum_compare/bptt/seed_0/policy.pt")
        action = policy(torch.tensor([1.0, 0.0, 0.0]))

    One episode in the Gymnasium environment of the same physics (:mod:`research.gym`; any registered
    ``research/<System>-<preset>-v0`` whose observation the policy was trained on), printing its return::

        import gymnasium, torch, research, research.gym
        policy = research.load_policy("results/pendulum_compare/bptt/seed_0/policy.pt")
        env = gymnasium.make("research/Pendulum-default-v0")
        obs, info = env.reset(seed=0)
        episode_return, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = policy(torch.as_tensor(obs)).numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            episode_return += reward
            done = terminated or truncated
        print(episode_return)
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ... on bad bytes
        reason = " ".join(str(err).split()).split(". ")[0][:120]  # torch's first sentence says what broke
        raise ValueError(f"{path} is corrupt or not a policy file (torch.load failed: {type(err).__name__}"
                         f"{': ' + reason if reason else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise ValueError(f"{path} is not a policy file of this project (expected format {POLICY_FORMAT!r})")
    try:
        policy = SquashedMLP(**payload["spec"])
        policy.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is corrupt: its {POLICY_FORMAT!r} payload does not build a policy "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    return policy.eval()
