"""Typed configuration: TOML experiment files parsed into dataclasses, with errors that name the key.

An experiment file holds one table per algorithm (``[bptt]``, ``[ddpg]``, ...) and an optional ``[experiment]``
table (seeds, algorithms, description) used by ``make experiment``::

    [experiment]
    seeds = [0, 1, 2]
    algos = ["bptt"]

    [bptt]
    iterations = 300
    [bptt.eval]
    interval_env_steps = 256_000

Each algorithm's table is parsed into its config dataclass (e.g. :class:`research.algos.bptt.BPTTConfig`). Unknown
keys and wrong types raise :class:`ConfigError` naming the key and what is allowed. Fields are documented by the
string under each field (read the source or ``python -m research.train --algo NAME --show-config``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import tempfile
import textwrap
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from research.evaluation import EVAL_EPISODES, EVAL_NOISE_SEED, EVAL_PARAMS_SEED, EVAL_SEED
from research.policies import Activation
from research.systems import SYSTEMS, System, get_system
from research.systems.pendulum import PRESETS

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the valid choices."""


@dataclass
class EnvConfig:
    """Which simulator a method trains on, and how."""

    backend: Literal["simulator", "gymnasium"] = "simulator"
    """'simulator': our batched simulator; 'gymnasium': torchrl's GymEnv('Pendulum-v1') (DDPG only)."""
    episode_length: int = 0
    """Steps after which an episode is truncated (0: the system's evaluation horizon, 200 for the pendulum as in
    Gymnasium's time limit)."""
    system: str = "pendulum"
    """The system to control, a name of research.systems.SYSTEMS: pendulum, cartpole, acrobot."""
    physics: str = "default"
    """Physics variant, a preset of the system (the pendulum's: default, weak, damped, coulomb, coulomb_smooth,
    wall, wall_soft, noisy, randomized)."""
    params: dict[str, float] = field(default_factory=dict)
    """Per-field overrides of the preset, e.g. {wall_restitution = 0.9} (any parameter of the system)."""
    param_ranges: dict[str, list[float]] = field(default_factory=dict)
    """Domain randomisation for training: {name: [low, high]} drawn per episode, merged over the preset's ranges
    (any parameter of the system, e.g. the pendulum's g, m, l, dt, max_speed, max_torque and its knobs)."""

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"env.system must be one of {list(SYSTEMS)}, got {self.system!r}")
        cls = SYSTEMS[self.system]
        if self.episode_length < 0:
            raise ConfigError(f"env.episode_length must be > 0 (or 0: the system's horizon), got {self.episode_length}")
        if self.episode_length == 0:
            self.episode_length = cls.horizon
        if self.physics not in cls.PRESETS:
            raise ConfigError(f"env.physics must be one of {list(cls.PRESETS)} (the {self.system}'s presets), got "
                              f"{self.physics!r}")
        names = list(cls.param_names())
        for table, values in (("params", self.params), ("param_ranges", self.param_ranges)):
            for name in values:
                if name not in names:
                    raise ConfigError(
                        f"env.{table}.{name}: unknown physical parameter {name!r} of the {self.system}; expected one "
                        f"of {names}"
                    )
        for name, bounds in self.param_ranges.items():
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ConfigError(f"env.param_ranges.{name} must be [low, high] with low <= high, got {bounds}")
        both = sorted(set(self.params) & set(self.param_ranges))
        if both:
            raise ConfigError(f"env.params.{both[0]} and env.param_ranges.{both[0]} are both set; give one of them")
        for name, value in self.params.items():
            self._check_physics(f"env.params.{name}", overrides={name: value})
        for name, bounds in self.param_ranges.items():
            self._check_physics(f"env.param_ranges.{name}", ranges={name: bounds})
        if self.backend == "gymnasium" and (self.system != "pendulum" or self.physics != "default" or self.params):
            raise ConfigError(
                "env.backend='gymnasium' runs Gymnasium's own physics (Pendulum-v1): env.system must be 'pendulum', env.physics "
                f"'default' and env.params empty, got {self.system!r}, {self.physics!r} and {self.params}"
            )
        self.to_physics()

    def _check_physics(self, key: str, **changes: Any) -> None:
        """Raises :class:`ConfigError` naming ``key`` when the preset with ``changes`` is not valid physics."""
        try:
            get_system(self.system, self.physics, **changes)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None

    def to_physics(self) -> System:
        """The training system: the preset ``physics`` of ``system`` with ``params`` fixed and ``param_ranges``
        drawn."""
        ranges = {name: (float(b[0]), float(b[1])) for name, b in self.param_ranges.items()}
        try:
            return get_system(self.system, self.physics, overrides=self.params, ranges=ranges)
        except ValueError as err:
            raise ConfigError(f"env.physics: {err}") from None

    to_system = to_physics


@dataclass
class EvalConfig:
    """How often and on what the shared evaluator scores the policy during training."""

    interval_env_steps: int = 500_000
    """Evaluate each time this many more environment steps have been simulated (and once at the end)."""
    interval_s: float = 0.0
    """Also evaluate each time this many more seconds of training wall-clock have passed (0: by env steps only):
    a method bound by the clock is then scored as often as one bound by env steps (``experiment.evaluations``)."""
    episodes: int = EVAL_EPISODES
    """Number of fixed initial states (the protocol uses 1000)."""
    seed: int = EVAL_SEED
    """Seed of the fixed evaluation states; disjoint from training seeds."""
    physics: str = ""
    """Physics to score on, a preset name of the training system; empty: the run's training physics (env.physics with env.params; the
    extra env.param_ranges of training are not drawn at evaluation)."""
    noise_seed: int = EVAL_NOISE_SEED
    """Seed of the fixed torque noise at evaluation (physics with torque_noise > 0); disjoint from training seeds."""
    params_seed: int = EVAL_PARAMS_SEED
    """Seed of the fixed per-episode parameter draws at evaluation (e.g. physics 'randomized')."""

    def __post_init__(self) -> None:
        if self.interval_env_steps <= 0:
            raise ConfigError(f"eval.interval_env_steps must be > 0, got {self.interval_env_steps}")
        if not self.interval_s >= 0:
            raise ConfigError(f"eval.interval_s must be >= 0 (0: by env steps only), got {self.interval_s}")
        if self.episodes <= 0:
            raise ConfigError(f"eval.episodes must be > 0, got {self.episodes}")
        if self.physics and not any(self.physics in cls.PRESETS for cls in SYSTEMS.values()):
            presets = sorted({name for cls in SYSTEMS.values() for name in cls.PRESETS})
            raise ConfigError(f"eval.physics must be '' (the training physics) or one of {presets} (a preset of the "
                              f"training system), got {self.physics!r}")
        seeds = {"seed": self.seed, "noise_seed": self.noise_seed, "params_seed": self.params_seed}
        if len(set(seeds.values())) < len(seeds):
            raise ConfigError(f"eval.seed, eval.noise_seed and eval.params_seed must differ (separate streams), "
                              f"got {seeds}")

    def to_physics(self, env: EnvConfig) -> System:
        """The physics the evaluator scores on: the preset ``physics``, or else the training preset with
        ``env.params`` (and the preset's own ranges, drawn from ``params_seed``), without ``env.param_ranges``."""
        try:
            if self.physics:
                return get_system(env.system, self.physics)
            return get_system(env.system, env.physics, overrides=env.params)
        except ValueError as err:
            raise ConfigError(f"eval.physics: {err}") from None


def check_device(name: str) -> None:
    """Raises :class:`ConfigError` unless ``name`` is ``cpu``, or ``cuda``/``cuda:N`` with that GPU present."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device is {name!r} but no CUDA GPU is available here; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")


def check_output_dir(path: str | os.PathLike, name: str = "--results") -> None:
    """Raises :class:`ConfigError` (naming ``name``) unless ``path`` is a folder this process can write into; creates
    it when missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {str(path)!r} is a file, not a folder; give a folder for the run directories")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"{name} {str(path)!r} is not a writable folder ({err.strerror or err}); give one that "
                          "this user can write") from None


#: How to install the package a ``logger`` needs (the ``logging`` extra of setup.cfg holds tensorboard).
LOGGER_PACKAGES = {"tensorboard": "pip install -e '.[logging]'", "wandb": "pip install wandb"}


@dataclass
class RunConfig:
    """Fields every algorithm shares."""

    seed: int = 0
    """Training seed (torch and the env's generator); must differ from eval.seed."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'cuda:N'."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point type of the simulation and networks."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Widths of the policy MLP's hidden layers."""
    activation: Activation = "tanh"
    """Hidden activation of the policy MLP."""
    num_threads: int = 0
    """CPU threads of torch during the run (0: leave torch's setting, which the experiment runner sets to
    cores // jobs)."""
    logger: Literal["none", "csv", "tensorboard", "wandb"] = "none"
    """A TorchRL logger mirroring every metric row into ``<run dir>/logs/`` (wandb in offline mode); the run's
    ``metrics.csv`` stays the record the scripts read."""
    max_wall_time_s: float = 0.0
    """Stop training after this many seconds (0 = no limit); the final evaluation still runs."""
    max_env_steps: int = 0
    """Stop training before an iteration that, at the size of the last one, would simulate more than this many
    environment steps in all (0 = no cap; the tuning driver's equal budget); the final evaluation still runs."""
    max_consecutive_skips: int = 10
    """Stop with an error after this many consecutive updates skipped for a non-finite loss or gradient."""
    checkpoint_every_s: float = 300.0
    """Seconds between checkpoints of the whole training state into ``<run dir>/checkpoint.pt`` (also written when
    training ends; 0 = never); a run directory holding one continues from it, bit for bit on CPU. Not part of the
    config hash."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Training environment."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation schedule."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # from_dict checks parsed values; this, configs built in Python
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{item.name} must be a finite number, got {value}")
            if item.name.endswith("hidden_sizes") and (not value or any(width <= 0 for width in value)):
                raise ConfigError(f"{item.name} must be a non-empty list of positive layer widths, got {value}")
        check_device(self.device)
        max_threads = 4 * (os.cpu_count() or 1)
        if not 0 <= self.num_threads <= max_threads:
            raise ConfigError(f"num_threads must be between 0 (torch's setting) and {max_threads} (4 x the "
                              f"{os.cpu_count()} cores here), got {self.num_threads}")
        if self.logger in LOGGER_PACKAGES and importlib.util.find_spec(self.logger) is None:
            raise ConfigError(f"logger={self.logger!r} needs the {self.logger} package, which is not installed: "
                              f"{LOGGER_PACKAGES[self.logger]} (or use logger='csv')")
        for name in ("seed", "noise_seed", "params_seed"):
            if self.seed == getattr(self.eval, name):
                raise ConfigError(f"seed must differ from eval.{name} ({self.seed}): what the evaluator draws stays "
                                  "unseen in training")
        if self.max_wall_time_s < 0:
            raise ConfigError(f"max_wall_time_s must be >= 0, got {self.max_wall_time_s}")
        if self.max_env_steps < 0:
            raise ConfigError(f"max_env_steps must be >= 0 (0 = no cap), got {self.max_env_steps}")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"checkpoint_every_s must be >= 0 (0 = never), got {self.checkpoint_every_s}")
        if self.max_consecutive_skips <= 0:
            raise ConfigError(f"max_consecutive_skips must be > 0, got {self.max_consecutive_skips}")


@dataclass
class ExperimentConfig:
    """The ``[experiment]`` table: what ``make experiment`` runs."""

    description: str = ""
    """One line on what the experiment asks."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; every algorithm runs every seed."""
    algos: list[str] = field(default_factory=list)
    """Algorithms to run (each needs its own table); empty = every algorithm table in the file."""
    physics: list[str] = field(default_factory=list)
    """Systems and physics presets crossed with every algorithm and seed: a pendulum preset
    (:data:`research.envs.presets.PRESETS`: default, wall, ...), a system at its default physics (cartpole, acrobot)
    or a system's preset as 'system:preset' (cartpole:heavy_pole). Each run trains and is scored on it (``env.system``
    and ``env.physics``; ``eval.physics`` follows) and lives in ``<experiment>/<entry>/<algo>/seed_<k>`` (':' written
    '-'). Empty: one physics per algorithm, its table's ``env``, and runs in ``<experiment>/<algo>/seed_<k>``."""
    tables_from: str = ""
    """Another experiment file (relative to this one's folder, e.g. 'tuned/tune_race.toml') whose algorithm and
    variant tables this file may run by name, as they run on its ``tables_at`` entry: settings tuned once reused on
    other physics. This file's own table of the same name replaces an imported one."""
    tables_at: str = ""
    """The entry of tables_from's experiment.physics whose per-physics settings (``[<table>.by_physics.<entry>]``)
    the imported tables take; needed when any of them has some."""
    env_steps: int = 0
    """Every run's budget in environment steps (0: each table's own): each config is cut to it as the tuning driver
    cuts its trials (``research.tune.fit_budget``: ``iterations`` or ``total_env_steps``, so learning-rate schedules
    end with it) and capped there (``max_env_steps``): the same budget for every method."""
    wall_time_s: float = 0.0
    """Every run's cap in training seconds (``max_wall_time_s``; 0: each table's own)."""
    evaluations: int = 0
    """With a common budget, how often every run is scored: each ``env_steps / evaluations`` env steps
    (``eval.interval_env_steps``) and each ``wall_time_s / evaluations`` training seconds (``eval.interval_s``),
    whichever comes first, so a method bound by the clock and one bound by env steps get times to a score resolved
    alike (0: each table's own schedule)."""
    order: Literal["physics", "algos"] = "physics"
    """Which axis the runs go through slowest: 'physics' (every algorithm on the first physics, then the next) or
    'algos' (the first algorithm on every physics, then the next: a cheap method's whole row finishes before an
    expensive one starts). Only the order in which runs start; nothing else depends on it."""

    def __post_init__(self) -> None:
        unknown = []
        for entry in self.physics:
            try:
                physics_entry(entry)
            except ConfigError:
                unknown.append(entry)
        if unknown:
            raise ConfigError(f"experiment.physics must list presets (the pendulum's {list(PRESETS)}), systems "
                              f"({list(SYSTEMS)}) or 'system:preset', got unknown {unknown}")
        if len(set(self.physics)) != len(self.physics):
            raise ConfigError(f"experiment.physics must not repeat a preset, got {self.physics}")
        if self.env_steps < 0 or not self.wall_time_s >= 0:
            raise ConfigError(f"experiment.env_steps and experiment.wall_time_s must be >= 0 (0: each table's own "
                              f"budget), got {self.env_steps} and {self.wall_time_s}")
        if self.evaluations < 0:
            raise ConfigError(f"experiment.evaluations must be >= 0 (0: each table's own schedule), got "
                              f"{self.evaluations}")
        if self.evaluations and not (self.env_steps or self.wall_time_s):
            raise ConfigError(f"experiment.evaluations = {self.evaluations} needs a common budget to divide: set "
                              "experiment.env_steps or experiment.wall_time_s (or evaluations = 0)")


def physics_entry(entry: str) -> tuple[str, str, str]:
    """``(system, preset, directory)`` of an ``experiment.physics`` entry: ``"wall"`` (a pendulum preset) ->
    ``("pendulum", "wall", "wall")``, ``"cartpole"`` -> ``("cartpole", "default", "cartpole")``,
    ``"cartpole:heavy_pole"`` -> ``("cartpole", "heavy_pole", "cartpole-heavy_pole")``."""
    system, _, preset = entry.partition(":")
    if not preset:
        if entry in PRESETS:
            return "pendulum", entry, entry
        system, preset = entry, "default"
    if system not in SYSTEMS or preset not in SYSTEMS[system].PRESETS:
        raise ConfigError(f"unknown physics entry {entry!r}")
    return system, preset, entry.replace(":", "-")


# ---------------------------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table of {sorted(f.name for f in dataclasses.fields(tp))}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0] if args else Any, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(args[1] if args else Any, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Builds the dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys are {names}")
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    for key, value in kwargs.items():  # NaN would pass every range check (`lr <= 0` is False), inf most of them
        if hints[key] is float and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key} must be a finite number, got {value}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(_prefixed(str(err), prefix)) from None


def _prefixed(message: str, prefix: str) -> str:
    """``message`` with its key under ``prefix``: a table's own checks may already name the table
    (``env.param_ranges.g ...`` inside ``bptt.env.`` becomes ``bptt.env.param_ranges.g ...``)."""
    if not prefix or message.startswith(prefix):
        return message
    table = prefix.rstrip(".").rsplit(".", 1)[-1] + "."
    if message.startswith(table):
        return prefix + message[len(table):]
    return prefix + message


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


#: Fields added after runs were recorded, left out of :func:`config_hash` while they hold the value every earlier run
#: had implicitly, so that adding them does not make earlier runs look changed: ``(table, key): value``.
#: The table ``""`` is the config's own top level.
#: A top-level field of one algorithm's config goes into that class's own ``HASH_NEUTRAL_FIELDS`` instead (``{key:
#: value}``, a ClassVar its subclasses inherit): another algorithm may have a field of that name with other values.
HASH_NEUTRAL: dict[tuple[str, str], Any] = {("env", "system"): "pendulum", ("", "max_env_steps"): 0,
                                            ("eval", "interval_s"): 0.0}

#: Top-level fields that change how a run is carried out, never its numbers, left out of :func:`config_hash` whatever
#: their value (changing them neither makes a finished run look changed nor stops a checkpoint from resuming).
HASH_EXCLUDED: tuple[str, ...] = ("checkpoint_every_s",)


def config_hash(config: Any) -> str:
    """A short stable hash of a resolved config (used to tell whether a finished run can be reused)."""
    neutral = getattr(type(config), "HASH_NEUTRAL_FIELDS", {})
    data = {k: v for k, v in to_dict(config).items()
            if k not in HASH_EXCLUDED and not (k in neutral and v == neutral[k])}
    for (table, key), value in HASH_NEUTRAL.items():
        if not table and key in data and data[key] == value:
            data = {k: v for k, v in data.items() if k != key}
        elif isinstance(data.get(table), dict) and data[table].get(key) == value:
            data[table] = {k: v for k, v in data[table].items() if k != key}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The documentation of each field of the dataclass ``cls`` (and its dataclass bases): the string literal under
    the field in the class body, on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
            continue  # no source (a frozen app, a class made at run time): its fields go undocumented
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_value(str(k)) if not str(k).isidentifier() else k} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(str(value))


def describe_config(config: Any, table: str) -> str:
    """``config`` as the TOML table ``[table]`` (nested dataclasses as ``[table.field]``), every field followed by a
    comment with its documentation (:func:`field_docs`): what ``--show-config`` prints, pasteable into an experiment
    file."""
    docs = field_docs(type(config))
    summary = " ".join((type(config).__doc__ or "").split()).split(". ")[0].rstrip(".")
    lines = [f"[{table}]" + (f"  # {summary}" if summary else "")]
    nested = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            nested.append(item)
            continue
        text = f"{item.name} = {_toml_value(value)}" if value is not None else f"# {item.name} = (unset)"
        doc = docs.get(item.name, "")
        lines.append(f"{text:<32}  # {doc}" if doc else text)
    for item in nested:
        lines.append("")
        lines.append(describe_config(getattr(config, item.name), f"{table}.{item.name}"))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"env.backend=gymnasium"`` -> ``(["env", "backend"], "gymnasium")``; values are read as TOML when possible."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with each ``key=value`` of ``overrides`` set (dotted keys reach nested tables)."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a table")
        node[path[-1]] = value
    return data


def load_toml(path: str | Path) -> dict[str, Any]:
    """Reads an experiment file; a missing file names the experiments that exist."""
    path = Path(path)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.toml")) if path.parent.is_dir() else []
        raise ConfigError(f"experiment file {str(path)!r} not found; available in {path.parent}/: {available}")
    with path.open("rb") as handle:
        try:
            return tomllib.load(handle)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from None
