"""The algorithms, one file each. ``ALGOS`` maps a name to its config class and trainer.

A trainer is ``train_<algo>(config, writer=None, quiet=False) -> summary``. Adding an algorithm: write
``research/algos/<name>.py`` with a config dataclass (subclass of :class:`research.config.RunConfig`) and a trainer,
then register it below with its family (:data:`BACKPROP` or :data:`MODEL_FREE`), which the statistics and the study
group methods by.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

BACKPROP = "backprop"
"""Family of the methods that follow gradients through the simulator."""
MODEL_FREE = "model-free"
"""Family of the methods that learn from sampled transitions only."""


class AlgoSpec(NamedTuple):
    module: str
    config: str
    trainer: str
    family: str
    """:data:`BACKPROP` or :data:`MODEL_FREE`: how the study and the statistics group the method."""


_REGISTRY = {
    "bptt": AlgoSpec("research.algos.bptt", "BPTTConfig", "train_bptt", BACKPROP),
    "bptt_blend": AlgoSpec("research.algos.bptt_blend", "BPTTBlendConfig", "train_bptt_blend", BACKPROP),
    "bptt_finetune": AlgoSpec("research.algos.bptt_finetune", "BPTTFinetuneConfig", "train_bptt_finetune", BACKPROP),
    "ddpg": AlgoSpec("research.algos.ddpg", "DDPGConfig", "train_ddpg", MODEL_FREE),
    "shac": AlgoSpec("research.algos.shac", "SHACConfig", "train_shac", BACKPROP),
    "ahac": AlgoSpec("research.algos.ahac", "AHACConfig", "train_ahac", BACKPROP),
    "td3": AlgoSpec("research.algos.td3", "TD3Config", "train_td3", MODEL_FREE),
    "sac": AlgoSpec("research.algos.sac", "SACConfig", "train_sac", MODEL_FREE),
    "ppo": AlgoSpec("research.algos.ppo", "PPOConfig", "train_ppo", MODEL_FREE),
    "ptd3": AlgoSpec("research.algos.ptd3", "PTD3Config", "train_ptd3", MODEL_FREE),
}

ALGOS = tuple(_REGISTRY)


def family(name: str) -> str:
    """The family (:data:`BACKPROP` or :data:`MODEL_FREE`) of an algorithm, or of a variant of one named after it
    (``bptt_squash``, ``shac_nosquash``: the longest registered name that ``name`` starts with followed by ``_``).
    Unknown names raise :class:`ValueError` listing the algorithms."""
    if name in _REGISTRY:
        return _REGISTRY[name].family
    owners = [algo for algo in _REGISTRY if name.startswith(algo + "_")]
    if not owners:
        raise ValueError(f"no algorithm family for {name!r}: expected a registered algorithm {list(_REGISTRY)} or a "
                         "variant named '<algorithm>_<suffix>'")
    return _REGISTRY[max(owners, key=len)].family


def get_algo(name: str) -> tuple[type, Any]:
    """``(ConfigClass, trainer)`` of the algorithm ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {list(_REGISTRY)}")
    spec = _REGISTRY[name]
    module = importlib.import_module(spec.module)
    return getattr(module, spec.config), getattr(module, spec.trainer)
