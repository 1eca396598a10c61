"""The algorithms, one file each. ``ALGOS`` maps a name to its config class and trainer.

A trainer is ``train_<algo>(config, writer=None, quiet=False) -> summary``. Adding an algorithm: write
``research/algos/<name>.py`` with a config dataclass (subclass of :class:`research.config.RunConfig`) and a trainer,
then register it below.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class AlgoSpec(NamedTuple):
    module: str
    config: str
    trainer: str


_REGISTRY = {
    "bptt": AlgoSpec("research.algos.bptt", "BPTTConfig", "train_bptt"),
    "bptt_blend": AlgoSpec("research.algos.bptt_blend", "BPTTBlendConfig", "train_bptt_blend"),
    "bptt_finetune": AlgoSpec("research.algos.bptt_finetune", "BPTTFinetuneConfig", "train_bptt_finetune"),
    "ddpg": AlgoSpec("research.algos.ddpg", "DDPGConfig", "train_ddpg"),
    "shac": AlgoSpec("research.algos.shac", "SHACConfig", "train_shac"),
    "ahac": AlgoSpec("research.algos.ahac", "AHACConfig", "train_ahac"),
    "td3": AlgoSpec("research.algos.td3", "TD3Config", "train_td3"),
    "sac": AlgoSpec("research.algos.sac", "SACConfig", "train_sac"),
    "ppo": AlgoSpec("research.algos.ppo", "PPOConfig", "train_ppo"),
    "ptd3": AlgoSpec("research.algos.ptd3", "PTD3Config", "train_ptd3"),
}

ALGOS = tuple(_REGISTRY)


def get_algo(name: str) -> tuple[type, Any]:
    """``(ConfigClass, trainer)`` of the algorithm ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {list(_REGISTRY)}")
    spec = _REGISTRY[name]
    module = importlib.import_module(spec.module)
    return getattr(module, spec.config), getattr(module, spec.trainer)
