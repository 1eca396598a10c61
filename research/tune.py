"""Tunes any algorithm of the registry on any task with an equal budget: Optuna's TPE behind an experiment-file table.

    python -m research.tune experiments/tune_pendulum.toml --jobs 2 --backend local --device cpu
    make tune TUNE=tune_pendulum BACKEND=ray

A tuning file holds a ``[tune]`` table (:class:`TuneConfig`: trials per method, the per-trial budget in env steps and
in seconds, the tuning seeds and start states, the tasks, the algorithms, the objective), one search space per
algorithm, and optionally a fixed table per algorithm (as in an experiment file)::

    [tune]
    trials = 24
    env_steps = 200_000
    wall_time_s = 120
    seeds = [1000, 1001]
    tasks = ["default"]
    algos = ["bptt", "ddpg"]
    hidden_sizes = [64, 64]

    [tune.space.bptt]
    lr = {low = 1e-4, high = 3e-2, log = true}
    num_envs = {choices = [64, 128, 256]}

    [ddpg]
    warmup_env_steps = 1_000

A space entry is ``{low, high}`` (with ``log = true`` or an integer ``step``) for a number field, an integer range for
an integer field, or ``{choices = [...]}`` for any field (lists such as ``hidden_sizes = {choices = [[64, 64],
[256, 256]]}`` too). Every sampled value goes through the algorithm's config class (:mod:`research.config`): at load,
each bound and each choice is checked with the others at the fixed table's values, and a trial whose combination the
config class refuses fails with that reason (Optuna's TPE then ignores it; it still counts as one of the trials).
Unknown keys, bad ranges and fields the driver sets itself are one-line :class:`ConfigError`\\ s naming the field.

Equal terms. Every method gets ``trials`` trials, and every run of a trial the same ``env_steps`` and
``wall_time_s``: the driver cuts each config to the budget (``total_env_steps`` to the largest multiple of
``frames_per_batch`` (PPO: of ``steps_per_iteration``) within it for the replay-buffer learners and PPO; ``iterations`` to ``env_steps // steps_per_iteration``
for BPTT and SHAC, so that their learning-rate schedules end with the budget), and sets ``max_env_steps`` (the
harness stops before an iteration that would pass it) and ``max_wall_time_s`` on every run. The policy network is the
same for every method when ``[tune] hidden_sizes`` is set (the critic's too with ``critic_hidden_sizes``), else each
algorithm's default; a space may search ``hidden_sizes`` instead. ``search.json`` says which.

Disjoint from what is reported. The tuning runs train on ``[tune] seeds``, which must not be among ``report_seeds``
(the seeds of the written experiment file), and are scored on the evaluator's states drawn from ``eval_seed``,
``eval_noise_seed`` and ``eval_params_seed``, which must differ from the reported evaluation's
(:data:`research.evaluation.EVAL_SEED`, ``EVAL_NOISE_SEED``, ``EVAL_PARAMS_SEED``). The objective is the evaluator's
mean return (``research.evaluation``) at the end of each run, averaged over the tuning seeds (``objective = "mean"``)
or their interquartile mean (``"iqm"``: the mean of the middle half after sorting; the plain mean below 4 seeds).

Resume and scale. Each (task, algorithm) search lives in ``<results>/tune/<file stem>/<task>/<algo>/``: the Optuna
study in ``study.journal`` (a JournalStorage file), each trial's runs in ``trials/trial_<n>/seed_<k>/`` (ordinary run
directories), ``search.json`` and ``trials.csv``. Rerunning the command after a kill continues: finished trials are
kept, trials that were running are run again with the same parameters (their runs continue from their checkpoints or
reuse a finished ``summary.json``), and new trials are asked until ``trials`` are finished; a search whose settings
changed is moved aside into ``<results>/tune/<stem>/superseded/``. Runs go through :mod:`research.experiment`'s
machinery (local processes, ``--jobs`` at a time, or Ray tasks with ``--backend ray``), ``ceil(jobs / seeds)`` trials
at a time. One log line per finished trial. ``order = "rounds"`` (the default) runs one batch of every search in
turn, one progress bar over them all: a tuning that spans sessions or machines (the wall-clock cap buys less on a
slower CPU) spreads every method's trials over the same ones, and each trial records its CPU (``cpu`` in
``trials.csv``); ``"searches"`` runs each search to its end, a bar each.

Determinism. The TPE sampler is seeded with ``sampler_seed + trial number`` at every ask, so a trial's parameters
depend only on the trials finished (and running: TPE's constant liar) when it was asked: an uninterrupted search and
one killed and resumed ask the same parameters, and so do two invocations with the same ``--jobs``. Changing
``--jobs`` changes how many trials run at a time and so which trials each one sees: the searches then differ. A run's
numbers are reproducible on CPU unless ``wall_time_s`` cuts it (the harness stops on the clock), and the trial
seconds are measured, never reproducible.

Output. When a search finishes, ``experiments/tuned/<stem>.toml`` is (re)written: an experiment file with an
``[experiment]`` table (``report_seeds``, the tasks as its physics axis) and, per method whose searches have finished
on every task, its recipe row ``[<algo>]`` (its trainer's defaults; ``recipe_rows = false`` leaves it out) and its
tuned row ``[<algo>_tuned]`` (a variant of the same trainer: the best trial's parameters, the settings that differ by
task in ``[<algo>_tuned.by_physics.<task>]``), headed by comments naming the search that produced each. Its
``[experiment]`` table carries the tuning's budget (``env_steps``, ``wall_time_s``): the race cuts every row to it as
the trials were cut (:func:`research.experiment.common_budget`), the budget the settings were chosen at.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import shutil
import signal
import sys
import time
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from research.algos import ALGOS, get_algo
from research.config import (
    ConfigError,
    check_output_dir,
    config_hash,
    from_dict,
    load_toml,
    physics_entry,
)
from research.evaluation import EVAL_EPISODES, EVAL_NOISE_SEED, EVAL_PARAMS_SEED, EVAL_SEED
from research.rundir import SUMMARY, atomic_write_bytes, atomic_write_json
from research.runs import cpu_model
from research.train import resolve_config

log = logging.getLogger("research.tune")

TUNE = "tune"
SPACE = "space"
JOURNAL = "study.journal"
SEARCH = "search.json"
TRIALS_CSV = "trials.csv"
#: The evaluation seeds of reported runs (:class:`research.config.EvalConfig`'s defaults): tuning never scores on them.
REPORTED_EVAL_SEEDS = {"seed": EVAL_SEED, "noise_seed": EVAL_NOISE_SEED, "params_seed": EVAL_PARAMS_SEED}
#: Fields the driver sets on every run itself (the budget, the seeds, the task, the evaluation): not searchable.
DRIVER_FIELDS = ("seed", "iterations", "total_env_steps", "max_env_steps", "max_wall_time_s", "eval", "device",
                 "num_threads", "checkpoint_every_s", "env.system", "env.physics")
SPEC_KEYS = ("low", "high", "log", "step", "choices")


def _optuna() -> Any:
    """The ``optuna`` module, imported on first use; a one-line :class:`ConfigError` naming the extra when absent."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("research.tune needs Optuna, the 'tune' extra: pip install -e '.[tune]'") from None
    return optuna


@dataclass
class TuneConfig:
    """The ``[tune]`` table: what every search gets, the same for every method."""

    description: str = ""
    """One line on what the tuning is for."""
    trials: int = 24
    """Trials per (task, algorithm) search: every method gets this many."""
    env_steps: int = 100_000
    """Per-trial budget of every run in environment steps (each config is cut to it; the harness caps it)."""
    wall_time_s: float = 300.0
    """Per-trial wall-clock cap of every run in training seconds (the harness's max_wall_time_s)."""
    seeds: list[int] = field(default_factory=lambda: [1000, 1001])
    """Training seeds of every trial (each trial runs each seed); none of them may be in report_seeds."""
    report_seeds: list[int] = field(default_factory=lambda: list(range(10)))
    """Seeds of the reported runs: the [experiment] seeds of the written experiment file; never tuned on."""
    tasks: list[str] = field(default_factory=lambda: ["default"])
    """Tasks as experiment.physics names them: a pendulum preset, a system, or 'system:preset'."""
    algos: list[str] = field(default_factory=list)
    """Algorithms to tune; empty: every algorithm with a [tune.space.<algo>] table."""
    objective: Literal["mean", "iqm"] = "mean"
    """Over the tuning seeds, of the evaluator's final mean return: their mean, or their interquartile mean."""
    sampler_seed: int = 0
    """Seed of Optuna's TPE sampler (reseeded with sampler_seed + trial number at every ask)."""
    startup_trials: int = 8
    """Trials sampled at random before TPE models the results (TPESampler's n_startup_trials)."""
    hidden_sizes: list[int] = field(default_factory=list)
    """Policy MLP of every method (the fixed architecture); empty: each algorithm's own default."""
    critic_hidden_sizes: list[int] = field(default_factory=list)
    """Critic MLP of every method that has one; empty: each algorithm's own default."""
    order: Literal["rounds", "searches"] = "rounds"
    """'rounds': one batch of trials of every search in turn until each has its trials, so that a tuning spread over
    sessions or machines (its wall-clock caps depend on the CPU) gives every method the same mix of them; 'searches':
    each search to its end before the next."""
    recipe_rows: bool = True
    """Whether the written experiment file also runs each method's recipe (its trainer's defaults, the ``[<algo>]``
    table) beside the tuned settings (``[<algo>_tuned]``, a variant of the same trainer): the race's two rows."""
    evaluations: int = 20
    """How often each run of the written experiment is scored (its ``experiment.evaluations``: every env_steps /
    evaluations env steps and every wall_time_s / evaluations training seconds, whichever first), so that times to a
    score are resolved alike for methods bound by the clock and by env steps. The trials themselves are scored once,
    at their end."""
    eval_episodes: int = EVAL_EPISODES
    """Evaluation episodes (start states) of each run's evaluations."""
    eval_seed: int = 2_000_003
    """Seed of the tuning's evaluation start states (the reported evaluation uses EVAL_SEED = 1000003)."""
    eval_noise_seed: int = 2_000_033
    """Seed of the tuning's evaluation torque noise (reported: EVAL_NOISE_SEED = 1000033)."""
    eval_params_seed: int = 2_000_037
    """Seed of the tuning's evaluation parameter draws (reported: EVAL_PARAMS_SEED = 1000037)."""

    def __post_init__(self) -> None:
        for name in ("trials", "env_steps", "eval_episodes", "evaluations"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"tune.{name} must be > 0, got {getattr(self, name)}")
        if not self.wall_time_s > 0:
            raise ConfigError(f"tune.wall_time_s must be > 0 (every trial's wall-clock cap), got {self.wall_time_s}")
        if self.startup_trials < 0:
            raise ConfigError(f"tune.startup_trials must be >= 0, got {self.startup_trials}")
        for name in ("seeds", "report_seeds", "tasks"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"tune.{name} must be a non-empty list without repeats, got {values}")
        shared = sorted(set(self.seeds) & set(self.report_seeds))
        if shared:
            raise ConfigError(f"tune.seeds must be disjoint from tune.report_seeds (the reported runs), both hold "
                              f"{shared}")
        for task in self.tasks:
            try:
                physics_entry(task)
            except ConfigError:
                raise ConfigError(f"tune.tasks: unknown task {task!r}; expected a pendulum preset, a system or "
                                  "'system:preset' (as experiment.physics)") from None
        for algo in self.algos:
            if algo not in ALGOS:
                raise ConfigError(f"tune.algos: unknown algorithm {algo!r}; valid: {list(ALGOS)}")
        seeds = self.eval_seeds
        if len(set(seeds.values())) < len(seeds):
            raise ConfigError(f"tune.eval_seed, tune.eval_noise_seed and tune.eval_params_seed must differ, got "
                              f"{seeds}")
        for name, value in seeds.items():
            if value in REPORTED_EVAL_SEEDS.values():
                raise ConfigError(f"tune.eval_{name}: {value} is a seed of the reported evaluation "
                                  f"{REPORTED_EVAL_SEEDS}; tuning scores on other start states")
            if value in self.seeds:
                raise ConfigError(f"tune.eval_{name}: {value} is also a tuning seed; give it another value")
        for name in ("hidden_sizes", "critic_hidden_sizes"):
            if any(width <= 0 for width in getattr(self, name)):
                raise ConfigError(f"tune.{name} must list positive layer widths (or be empty), got "
                                  f"{getattr(self, name)}")

    @property
    def eval_seeds(self) -> dict[str, int]:
        return {"seed": self.eval_seed, "noise_seed": self.eval_noise_seed, "params_seed": self.eval_params_seed}


@dataclass(frozen=True)
class Param:
    """One searched field: a float or integer range, or a list of choices (any TOML values)."""

    name: str
    """Dotted field name inside the algorithm's table (``lr``, ``env.episode_length``)."""
    kind: Literal["float", "int", "choices"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value the Optuna ``trial`` suggests (choices that are not plain scalars travel as JSON text)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return self.decode(trial.suggest_categorical(self.name, [self.encode(c) for c in self.choices]))

    @staticmethod
    def encode(value: Any) -> Any:
        return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)

    def decode(self, value: Any) -> Any:
        """The field value of what Optuna stored for this parameter."""
        if self.kind != "choices":
            return value
        for choice in self.choices:
            if self.encode(choice) == value:
                return choice
        raise ConfigError(f"{self.name}: stored value {value!r} is not one of the choices {list(self.choices)}")

    def edges(self) -> list[Any]:
        """The values checked at load: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choices" else [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        if self.kind == "choices":
            return {"name": self.name, "choices": list(self.choices)}
        out = {"name": self.name, "type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return {**out, "step": self.step} if self.step is not None else out


def _field_type(config_cls: type, dotted: str, key: str) -> Any:
    """The type hint of the dotted field ``dotted`` of ``config_cls``; unknown names raise naming ``key``."""
    cls: Any = config_cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            valid = sorted(hints) if hints else []
            raise ConfigError(f"{key}: unknown field {'.'.join(parts[:i + 1])!r} of the algorithm's config; valid "
                              f"keys are {valid}")
        cls = hints[part]
    return cls


def _is_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(set(value) & set(SPEC_KEYS))


def parse_space(algo: str, table: Mapping[str, Any]) -> list[Param]:
    """The :class:`Param`\\ s of ``[tune.space.<algo>]``; one-line :class:`ConfigError` naming the field for an
    unknown field or key, a field the driver sets, a bad range or empty choices."""
    config_cls, _ = get_algo(algo)
    params = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, spec in node.items():
            dotted = f"{prefix}{name}"
            key = f"tune.space.{algo}.{dotted}"
            if isinstance(spec, Mapping) and not _is_spec(spec):
                walk(spec, f"{dotted}.")
                continue
            if any(dotted == f or dotted.startswith(f + ".") for f in DRIVER_FIELDS):
                raise ConfigError(f"{key}: set by the tuning driver (the budget, seeds, task or evaluation: "
                                  f"{list(DRIVER_FIELDS)}); it cannot be searched")
            if not isinstance(spec, Mapping):
                raise ConfigError(f"{key} must be a table {{low = ..., high = ...}} or {{choices = [...]}}, got "
                                  f"{spec!r}")
            unknown = sorted(set(spec) - set(SPEC_KEYS))
            if unknown:
                raise ConfigError(f"{key}: unknown key {unknown[0]!r}; expected {list(SPEC_KEYS)}")
            tp = _field_type(config_cls, dotted, key)
            params.append(_param(dotted, spec, tp, key))

    walk(table, "")
    if not params:
        raise ConfigError(f"tune.space.{algo} searches nothing; give at least one field, e.g. lr = {{low = 1e-4, "
                          "high = 1e-2, log = true}}")
    return params


def _param(name: str, spec: Mapping[str, Any], tp: Any, key: str) -> Param:
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ConfigError(f"{key}: give either choices or low/high, not both (also got {extra[0]!r})")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices must be a non-empty list, got {choices!r}")
        encoded = [Param.encode(c) for c in choices]
        if len(set(map(json.dumps, encoded))) != len(encoded):
            raise ConfigError(f"{key}.choices must not repeat a value, got {choices}")
        return Param(name, "choices", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: a range needs both low and high (or give choices = [...])")
    if tp not in (int, float):
        raise ConfigError(f"{key}: a {getattr(tp, '__name__', tp)} field takes choices = [...], not low/high")
    low, high, log_scale, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not isinstance(log_scale, bool):
        raise ConfigError(f"{key}.log must be true or false, got {log_scale!r}")
    number = (int,) if tp is int else (int, float)
    for name_, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, number)
                                  or not math.isfinite(value)):
            raise ConfigError(f"{key}.{name_} must be {'an integer' if tp is int else 'a finite number'}, got "
                              f"{value!r}")
    if not low < high:
        raise ConfigError(f"{key}: low must be < high, got low={low}, high={high}")
    if log_scale and low <= 0:
        raise ConfigError(f"{key}: log = true needs low > 0, got {low}")
    if step is not None and (step <= 0 or log_scale):
        raise ConfigError(f"{key}.step must be > 0 and not combined with log = true, got step={step}")
    kind = "int" if tp is int else "float"
    return Param(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 log_scale, step)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def fit_budget(config: Any, env_steps: int) -> tuple[Any, dict[str, int]]:
    """``config`` cut to ``env_steps`` environment steps, and the fields set: ``total_env_steps`` (a multiple of
    ``frames_per_batch``, or of ``steps_per_iteration`` for PPO) for a replay-buffer learner and PPO, ``iterations`` for an algorithm with ``steps_per_iteration``
    (BPTT, SHAC); an algorithm with neither is left to the harness's ``max_env_steps`` cap."""
    if hasattr(config, "total_env_steps"):
        unit = getattr(config, "frames_per_batch", None) or getattr(config, "steps_per_iteration", None) or 1
        total = env_steps // unit * unit
        if total <= 0:
            raise ConfigError(f"frames_per_batch={unit} is more than the budget of {env_steps} env steps")
        return dataclasses.replace(config, total_env_steps=total), {"total_env_steps": total}
    per_iteration = getattr(config, "steps_per_iteration", None)
    if per_iteration and hasattr(config, "iterations"):
        iterations = env_steps // per_iteration
        if iterations < 1:
            raise ConfigError(f"one iteration simulates {per_iteration} env steps, more than the budget of "
                              f"{env_steps}")
        return dataclasses.replace(config, iterations=iterations), {"iterations": iterations}
    return config, {}


@dataclass
class Search:
    """One (task, algorithm) search of a tuning file."""

    algo: str
    task: str
    params: list[Param]
    table: dict[str, Any]
    """The fixed table of the algorithm (the file's ``[<algo>]``), every trial's starting point."""
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.task}/{self.algo}"


@dataclass
class TunePlan:
    """A tuning file resolved into searches."""

    name: str
    path: Path
    settings: TuneConfig
    searches: list[Search]
    directory: Path
    tuned_dir: Path
    device: str | None = None


def trial_config(plan: TunePlan, search: Search, values: Mapping[str, Any], seed: int) -> tuple[Any, dict[str, int]]:
    """The config of one run of a trial (``values``: ``{field: value}``) on ``seed``, cut to the budget; raises
    :class:`ConfigError` when the config class refuses the combination."""
    settings = plan.settings
    data = copy.deepcopy(search.table)
    for name, value in values.items():
        _set_dotted(data, name, value)
    config_cls, _ = get_algo(search.algo)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for name in ("hidden_sizes", "critic_hidden_sizes"):
        fixed = getattr(settings, name)
        if fixed and name in fields and name not in values:
            data[name] = list(fixed)
    system, preset, _ = physics_entry(search.task)
    data.setdefault("env", {}).update({"physics": preset, **({"system": system} if system != "pendulum" else {})})
    data["eval"] = {**data.get("eval", {}), "interval_env_steps": settings.env_steps,
                    "episodes": settings.eval_episodes, **settings.eval_seeds}
    data["max_env_steps"] = settings.env_steps
    data["max_wall_time_s"] = settings.wall_time_s
    if "total_env_steps" in fields:  # a valid length before fit_budget: a multiple of frames_per_batch
        unit = data.get("frames_per_batch", fields["frames_per_batch"].default) if "frames_per_batch" in fields else 1
        data["total_env_steps"] = max(settings.env_steps // unit, 1) * unit
    if plan.device:
        data["device"] = plan.device
    config = resolve_config(search.algo, data, seed)
    return fit_budget(config, settings.env_steps)


def load_tune(path: str | Path, results: str | Path = "results", device: str | None = None,
              tuned_dir: str | Path = "experiments/tuned") -> TunePlan:
    """Resolves a tuning file into its searches, checking every field, range and choice (one-line
    :class:`ConfigError` naming it); ``device`` overrides every run's."""
    path = Path(path)
    data = load_toml(path)
    if TUNE not in data or not isinstance(data[TUNE], Mapping):
        raise ConfigError(f"{path}: no [tune] table; a tuning file needs [tune] and [tune.space.<algo>] tables")
    for key in data:
        if key != TUNE and key not in ALGOS:
            raise ConfigError(f"{path}: unknown table [{key}]; expected [tune], [tune.space.<algo>] or one of "
                              f"{list(ALGOS)}")
    raw = dict(data[TUNE])
    spaces = raw.pop(SPACE, {})
    settings = from_dict(TuneConfig, raw, prefix="tune.")
    if not isinstance(spaces, Mapping):
        raise ConfigError(f"tune.space must hold one table per algorithm, got {spaces!r}")
    for algo in spaces:
        if algo not in ALGOS:
            raise ConfigError(f"tune.space.{algo}: unknown algorithm {algo!r}; valid: {list(ALGOS)}")
    algos = settings.algos or list(spaces)
    if not algos:
        raise ConfigError(f"{path}: nothing to tune; add a [tune.space.<algo>] table")
    missing = [algo for algo in algos if algo not in spaces]
    if missing:
        raise ConfigError(f"tune.algos: {missing[0]!r} has no [tune.space.{missing[0]}] table to search")
    plan = TunePlan(path.stem, path, settings, [], Path(results) / TUNE / path.stem, Path(tuned_dir), device)
    for task in settings.tasks:
        for algo in algos:
            table = data.get(algo, {})
            budget = [k for k in ("seed", "iterations", "total_env_steps", "max_env_steps", "max_wall_time_s")
                      if k in table]
            if budget:
                raise ConfigError(f"[{algo}] sets {budget[0]}; the tuning driver sets it (tune.env_steps, "
                                  "tune.wall_time_s, tune.seeds)")
            clash = sorted({"physics", "system"} & set(table.get("env", {})))
            if clash:
                raise ConfigError(f"[{algo}.env] sets {clash[0]}; the task comes from tune.tasks")
            driven = [k for k in table.get("eval", {}) if k in (*REPORTED_EVAL_SEEDS, "episodes", "interval_env_steps")]
            if driven:
                raise ConfigError(f"[{algo}.eval] sets {driven[0]}; tuning evaluates at the end of the budget on "
                                  "tune.eval_seed, tune.eval_noise_seed, tune.eval_params_seed and tune.eval_episodes")
            params = parse_space(algo, spaces[algo])
            if settings.hidden_sizes and any(p.name == "hidden_sizes" for p in params):
                raise ConfigError(f"tune.space.{algo}.hidden_sizes is searched while tune.hidden_sizes fixes it; "
                                  "give one of them")
            search = Search(algo, task, params, dict(table), plan.directory / physics_entry(task)[2] / algo)
            _check_search(plan, search)
            plan.searches.append(search)
    return plan


def _check_search(plan: TunePlan, search: Search) -> None:
    """Every bound and choice of the space through the config class, the others at the fixed table's values."""
    seed = plan.settings.seeds[0]
    try:
        trial_config(plan, search, {}, seed)
    except ConfigError as err:
        raise ConfigError(f"[{search.algo}] on task {search.task!r} under tune.env_steps = {plan.settings.env_steps}: "
                          f"{err}") from None
    except ImportError as err:
        raise ConfigError(f"algorithm {search.algo!r} is registered but cannot be imported: {err}") from None
    for param in search.params:
        for value in param.edges():
            try:
                trial_config(plan, search, {param.name: value}, seed)
            except ConfigError as err:
                raise ConfigError(f"tune.space.{search.algo}.{param.name} = {value!r}: {err}") from None


# ---------------------------------------------------------------------------------------------------- records
def objective_value(returns: Sequence[float], kind: str) -> float:
    """The mean of ``returns`` (``"mean"``), or their interquartile mean (``"iqm"``: the mean after dropping the
    lowest and highest ``floor(n / 4)``)."""
    values = sorted(returns)
    if kind == "iqm":
        cut = len(values) // 4
        values = values[cut:len(values) - cut]
    return sum(values) / len(values)


def _fingerprint(plan: TunePlan, search: Search) -> str:
    """A hash of what a search's trials depend on: a study made for other settings is moved aside, not mixed."""
    blob = {"settings": {k: v for k, v in dataclasses.asdict(plan.settings).items()
                         if k not in ("description", "trials", "tasks", "algos", "report_seeds", "order",
                                      "recipe_rows", "evaluations")},
            "space": [p.describe() for p in search.params], "table": search.table,
            # the device the trials run on: no --device and --device cpu are one tuning (runs default to the CPU)
            "device": plan.device or search.table.get("device") or "cpu"}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _trial_record(search: Search, trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name, "value": trial.value,
            "params": {p.name: p.decode(trial.params[p.name]) for p in search.params if p.name in trial.params},
            "seconds": attrs.get("seconds"), "cpu": attrs.get("cpu"), "budget": attrs.get("budget"),
            "runs": attrs.get("runs", {}),
            **({"failure": attrs["failure"]} if "failure" in attrs else {})}


def best_trial(search: Search, trials: Sequence[Any]) -> Any | None:
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def tuned_table(plan: TunePlan, search: Search, best: Any) -> dict[str, Any]:
    """The fixed table with the best trial's parameters (and the fixed architecture): the experiment file's table."""
    table = copy.deepcopy(search.table)
    names = {f.name for f in dataclasses.fields(get_algo(search.algo)[0])}
    for name in ("hidden_sizes", "critic_hidden_sizes"):
        fixed = getattr(plan.settings, name)
        if fixed and name in names:
            table[name] = list(fixed)
    for param in search.params:
        _set_dotted(table, param.name, param.decode(best.params[param.name]))
    return table


def write_record(plan: TunePlan, search: Search, study: Any, batch: int) -> dict[str, Any]:
    """``search.json`` and ``trials.csv`` of a search from its study; returns the record."""
    settings = plan.settings
    trials = study.get_trials(deepcopy=False)
    best = best_trial(search, trials)
    system, preset, _ = physics_entry(search.task)
    searched = any(p.name == "hidden_sizes" for p in search.params)
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(get_algo(search.algo)[0])}
    arch = {"policy_hidden_sizes": "searched" if searched else (settings.hidden_sizes or defaults["hidden_sizes"]),
            "fixed_for_all_methods": bool(settings.hidden_sizes) and not searched}
    if "critic_hidden_sizes" in defaults:
        arch["critic_hidden_sizes"] = ("searched" if any(p.name == "critic_hidden_sizes" for p in search.params)
                                       else settings.critic_hidden_sizes or defaults["critic_hidden_sizes"])
    record = {
        "search": f"{plan.name}/{search.name}", "source": str(plan.path), "description": settings.description,
        "algo": search.algo, "task": search.task, "system": system, "physics": preset,
        "trials_planned": settings.trials,
        "trials_finished": _finished_count(study),
        "budget": {"env_steps": settings.env_steps, "wall_time_s": settings.wall_time_s,
                   "cut": "total_env_steps or iterations fitted per trial (trials[].budget), max_env_steps and "
                          "max_wall_time_s on every run"},
        "objective": {"kind": settings.objective, "of": "the evaluator's mean return (research.evaluation) at the "
                      "end of each run, over the tuning seeds", "direction": "maximize"},
        "seeds": {"tuning": settings.seeds, "reported": settings.report_seeds},
        "eval": {"tuning": {**settings.eval_seeds, "episodes": settings.eval_episodes},
                 "reported": REPORTED_EVAL_SEEDS},
        "architecture": arch,
        "space": [p.describe() for p in search.params],
        "fixed": search.table,
        "sampler": {"name": "TPESampler", "seed": settings.sampler_seed, "reseeded": "sampler_seed + trial number",
                    "n_startup_trials": settings.startup_trials, "trials_at_a_time": batch},
        "device": plan.device or search.table.get("device", "cpu"),
        "journal": str(search.directory / JOURNAL),
        "trials": [_trial_record(search, t) for t in trials],
        "best": None if best is None else {"number": best.number, "value": best.value,
                                           "params": _trial_record(search, best)["params"],
                                           "table": tuned_table(plan, search, best)},
    }
    atomic_write_json(search.directory / SEARCH, record)
    names = [p.name for p in search.params]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "seconds", "cpu", "max_env_steps", *names,
                     *(f"return_seed_{s}" for s in settings.seeds)])
    for row in record["trials"]:
        runs = row["runs"]
        steps = max((r.get("env_steps", 0) for r in runs.values()), default="")
        writer.writerow([row["number"], row["state"], row["value"], row["seconds"], row["cpu"], steps,
                         *(json.dumps(row["params"].get(n)) if isinstance(row["params"].get(n), list)
                           else row["params"].get(n) for n in names),
                         *(runs.get(str(s), {}).get("return") for s in settings.seeds)])
    atomic_write_bytes(search.directory / TRIALS_CSV, buffer.getvalue().encode())
    return record


def tuned_path(plan: TunePlan) -> Path:
    """``<tuned_dir>/<stem>.toml``: the experiment file of the tuning file ``<stem>``, every task in one."""
    return plan.tuned_dir / f"{plan.name}.toml"


def write_tuned(plan: TunePlan, records: Mapping[str, Mapping[str, dict[str, Any]]]) -> Path | None:
    """The experiment file of the finished searches (``records``: ``{task: {algo: record}}``): per method whose
    searches have finished on every task, its recipe row ``[<algo>]`` and its tuned row ``[<algo>_tuned]``, the best
    table of each task's search; with several tasks a ``[<algo>_tuned.by_physics.<task>]`` table per task (what
    differs by task), the tuned settings common to every task in ``[<algo>_tuned]`` itself."""
    from research.config import _toml_value
    from research.experiment import BY_PHYSICS_KEY, VARIANT_KEY

    settings = plan.settings
    tasks = list(settings.tasks)

    def finished(task: str, algo: str) -> dict[str, Any] | None:
        record = records.get(task, {}).get(algo)
        ok = record is not None and record["best"] is not None and record["trials_finished"] >= record["trials_planned"]
        return record if ok else None

    algos = [a for a in dict.fromkeys(s.algo for s in plan.searches) if all(finished(t, a) for t in tasks)]
    if not algos:
        return None
    lines = [f"# Written by research.tune from {plan.path} on {datetime.date.today()}: rerun `make tune "
             f"TUNE={plan.name}` to regenerate; edits are overwritten.",
             f"# Each tuned table is the best trial of the search named above it ({settings.trials} trials, "
             f"{settings.env_steps} env steps and {settings.wall_time_s:g} s per run, tuning seeds {settings.seeds}, "
             f"evaluation seeds {settings.eval_seeds}, objective: {settings.objective} final eval return).",
             "# Every row runs at the tuning's budget (experiment.env_steps and wall_time_s, the budget the settings "
             "were chosen at; each config is cut to it as the trials were): change both there for another. Each run is "
             "scored every 1/evaluations of it in env steps or in seconds, whichever comes first.",
             "", "[experiment]",
             f"description = {_toml_value(f'Tuned by {plan.path} on ' + ', '.join(tasks) + ': ' + ', '.join(algos))}",
             f"seeds = {_toml_value(settings.report_seeds)}", f"physics = {_toml_value(tasks)}",
             f"env_steps = {_toml_value(settings.env_steps)}", f"wall_time_s = {_toml_value(settings.wall_time_s)}",
             f"evaluations = {_toml_value(settings.evaluations)}",
             f"algos = {_toml_value([n for a in algos for n in ([a] if settings.recipe_rows else []) + [tuned_name(a)]])}"]
    for algo in algos:
        if settings.recipe_rows:
            lines += ["", f"# {algo}'s recipe: its trainer's defaults (`python -m research.train --algo {algo} "
                      "--show-config`)", f"[{algo}]"]
        comments, tables = [], {}
        for task in tasks:
            record = finished(task, algo)
            best = record["best"]
            cut = next((t["budget"] for t in record["trials"] if t["number"] == best["number"]), None)
            comments.append(f"# {record['search']}: {search_dir_of(plan, task, algo) / SEARCH}, best trial "
                            f"{best['number']} of {record['trials_finished']}, {settings.objective} eval return "
                            f"{best['value']:.2f}; tuned at " + ", ".join(f"{k} = {v}" for k, v in (cut or {}).items()))
            tables[task] = best["table"]
        common = {k: v for k, v in tables[tasks[0]].items() if all(t.get(k, object()) == v for t in tables.values())}
        table: dict[str, Any] = {VARIANT_KEY: algo, **common}
        if len(tasks) > 1:
            per_task = {task: {k: v for k, v in t.items() if k not in common} for task, t in tables.items()}
            if any(per_task.values()):
                table[BY_PHYSICS_KEY] = {task: rest for task, rest in per_task.items() if rest}
        lines += ["", *comments, *_toml_table(tuned_name(algo), table)]
    path = tuned_path(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def tuned_name(algo: str) -> str:
    """The label of ``algo``'s tuned row in the written experiment file: a variant of its trainer."""
    return f"{algo}_tuned"


def search_dir_of(plan: TunePlan, task: str, algo: str) -> Path:
    return plan.directory / physics_entry(task)[2] / algo


def _toml_table(name: str, table: Mapping[str, Any]) -> list[str]:
    from research.config import _toml_value

    lines = [f"[{name}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
    for key, value in nested.items():
        lines += ["", *_toml_table(f"{name}.{key}", value)]
    return lines


# ---------------------------------------------------------------------------------------------------- driver
def _open_study(plan: TunePlan, search: Search) -> Any:
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    fingerprint = _fingerprint(plan, search)
    journal = search.directory / JOURNAL
    if journal.exists():
        storage = JournalStorage(JournalFileBackend(str(journal)))
        studies = storage.get_all_studies()
        old = studies[0].user_attrs.get("fingerprint") if studies else None
        if old != fingerprint:
            target = plan.directory / "superseded" / f"{old or 'unknown'}-{time.strftime('%Y%m%d-%H%M%S')}"
            target = target / physics_entry(search.task)[2] / search.algo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(search.directory), str(target))
            log.warning("%s: its settings changed since the study began: moved to %s, starting again",
                        search.name, target)
    search.directory.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name=f"{plan.name}/{search.name}", direction="maximize",
                                load_if_exists=True)
    study.set_user_attr("fingerprint", fingerprint)
    return study


def _finished_count(study: Any) -> int:
    """Trials that count towards ``[tune] trials``: finished (complete or failed), but not those that never ran."""
    return sum(t.state.is_finished() and not t.user_attrs.get("never_ran") for t in study.get_trials(deepcopy=False))


def _sampler(settings: TuneConfig, number: int) -> Any:
    return _optuna().samplers.TPESampler(seed=settings.sampler_seed + number, n_startup_trials=settings.startup_trials)


def _next_batch(plan: TunePlan, search: Search, study: Any, batch_size: int) -> list[tuple[Any, dict[str, Any]]]:
    """The next trials of one search to run, ``(trial, values)``: those a killed invocation left running (run again
    with their parameters), then new ones asked of the sampler, up to ``batch_size``; empty when it has its trials."""
    optuna = _optuna()
    settings = plan.settings
    trials = study.get_trials(deepcopy=False)
    stale = [t for t in trials if t.state.name == "RUNNING"]  # a killed invocation's: run again as they were
    for t in [t for t in stale if any(p.name not in t.params for p in search.params)]:
        # killed between its ask and its parameters: it never ran, and does not count as a trial
        study._storage.set_trial_user_attr(t._trial_id, "never_ran", True)
        study._storage.set_trial_user_attr(t._trial_id, "failure", "never ran: stopped between its ask and "
                                           "its parameters (not counted)")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        stale.remove(t)
    remaining = settings.trials - _finished_count(study)
    if remaining <= 0:
        return []
    again = stale[:min(batch_size, remaining)]
    batch = [(optuna.trial.Trial(study, t._trial_id), {p.name: p.decode(t.params[p.name]) for p in search.params})
             for t in again]
    if again:
        log.info("%s: running again trial(s) %s, unfinished when the last invocation stopped", search.name,
                 [t.number for t in again])
    for _ in range(min(batch_size - len(batch), max(0, remaining - len(stale)))):
        study.sampler = _sampler(settings, len(study.get_trials(deepcopy=False)))
        trial = study.ask()
        batch.append((trial, {p.name: p.suggest(trial) for p in search.params}))
    return batch


def _batch_size(plan: TunePlan, jobs: int) -> int:
    """Trials run at a time: enough for ``jobs`` runs over the tuning seeds."""
    return max(1, math.ceil(jobs / len(plan.settings.seeds)))


def run_search(plan: TunePlan, search: Search, jobs: int, backend: str, cpus_per_run: int,
               gpus_per_run: float | None, quiet: bool, study: Any = None, bar: Any = None,
               rounds: int | None = None) -> dict[str, Any]:
    """Runs the trials of one search still missing (resuming the study); returns its record.

    With ``rounds``, at most that many batches (the caller interleaves searches); ``study`` and ``bar`` default to
    the search's own."""
    from tqdm.auto import tqdm

    from research.experiment import PlannedRun, _execute_local, _execute_ray

    study = _open_study(plan, search) if study is None else study
    batch_size = _batch_size(plan, jobs)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=plan.settings.trials, initial=min(_finished_count(study), plan.settings.trials),
                   unit="trial", disable=quiet, desc=f"{plan.name}/{search.name}", dynamic_ncols=True)
    try:
        done = 0
        while rounds is None or done < rounds:
            batch = _next_batch(plan, search, study, batch_size)
            if not batch:
                break
            _run_batch(plan, search, study, batch, jobs, backend, cpus_per_run, gpus_per_run, quiet,
                       f"{TUNE}/{plan.name}", bar, PlannedRun, _execute_local, _execute_ray)
            write_record(plan, search, study, batch_size)
            done += 1
    finally:
        if own_bar:
            bar.close()
    return write_record(plan, search, study, batch_size)


def _run_batch(plan: TunePlan, search: Search, study: Any, batch: list[tuple[Any, dict[str, Any]]], jobs: int,
               backend: str, cpus_per_run: int, gpus_per_run: float | None, quiet: bool, experiment: str, bar: Any,
               planned_run: Any, execute_local: Any, execute_ray: Any) -> None:
    """Runs every seed of the trials of ``batch`` (``(trial, values)``) and tells the study each trial's result."""
    optuna = _optuna()
    settings = plan.settings
    runs, pending, results, cuts, started = [], {}, {}, {}, time.perf_counter()

    def finish(trial: Any) -> None:
        outcome = results[trial.number]
        trial.set_user_attr("runs", {str(s): r for s, r in outcome["runs"].items()})
        seconds = round(sum(r.get("wall_time_s", 0.0) + r.get("eval_time_s", 0.0)
                            for r in outcome["runs"].values()), 2)
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("cpu", cpu_model())  # the wall-clock cap means less on a slower CPU: say which ran it
        trial.set_user_attr("budget", cuts.get(trial.number, {}))
        values = {p.name: p.decode(trial.params[p.name]) for p in search.params if p.name in trial.params}
        if outcome["errors"]:
            trial.set_user_attr("failure", outcome["errors"][0])
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            log.warning("%s trial %d failed: %s (params %s)", search.name, trial.number, outcome["errors"][0], values)
        else:
            value = objective_value([r["return"] for r in outcome["runs"].values()], settings.objective)
            study.tell(trial.number, value, skip_if_finished=True)
            best = study.best_trial
            steps = max(r["env_steps"] for r in outcome["runs"].values())
            log.info("%s trial %d (%d/%d): %s eval return %.2f (best %.2f, trial %d), %d env steps, %.1f s, %s",
                     search.name, trial.number, _finished_count(study),
                     settings.trials, settings.objective, value, best.value, best.number, steps, seconds,
                     json.dumps(values))
        bar.update(1)

    for trial, values in batch:
        results[trial.number] = {"runs": {}, "errors": [], "left": len(settings.seeds)}
        for seed in settings.seeds:
            try:
                config, cut = trial_config(plan, search, values, seed)
            except ConfigError as err:
                results[trial.number]["errors"].append(f"the config class refuses it: {err}")
                results[trial.number]["left"] -= 1
                continue
            cuts[trial.number] = cut
            directory = search.directory / "trials" / f"trial_{trial.number:04d}" / f"seed_{seed}"
            run = planned_run(search.algo, seed, config, directory, config_hash(config))
            pending[str(directory)] = (trial, seed)
            summary = _finished_summary(run)
            if summary is not None:  # a kill came after this run finished: reuse it
                _record(results[trial.number], seed, summary)
                continue
            runs.append(run)
        if results[trial.number]["left"] == 0:
            finish(trial)

    def on_done(run: Any, summary: dict | None, error: str | None) -> None:
        trial, seed = pending[str(run.run_dir)]
        outcome = results[trial.number]
        if error is None:
            _record(outcome, seed, summary)
        else:
            outcome["errors"].append(f"seed {seed}: {error.strip().splitlines()[0]}")
            outcome["left"] -= 1
        if outcome["left"] == 0:
            finish(trial)

    if not runs:
        return
    threads = cpus_per_run
    if backend == "ray":
        gpus = gpus_per_run if gpus_per_run is not None else (1.0 if str(runs[0].config.device).startswith("cuda")
                                                              else 0.0)
        execute_ray(runs, experiment, jobs, threads, gpus, quiet, on_done)
    else:
        execute_local(runs, experiment, jobs, threads, on_done)
    log.debug("%s: batch of %d trials in %.1f s", search.name, len(batch), time.perf_counter() - started)


def _record(outcome: dict[str, Any], seed: int, summary: Mapping[str, Any]) -> None:
    evaluation = summary.get("eval") or {}
    outcome["runs"][seed] = {"return": float(evaluation.get("return_mean", float("nan"))),
                             "env_steps": int(summary.get("env_steps", 0)),
                             "wall_time_s": float(summary.get("wall_time_s", 0.0)),
                             "eval_time_s": float(summary.get("eval_time_s", 0.0)),
                             "iterations": int(summary.get("iterations", 0))}
    outcome["left"] -= 1


def _finished_summary(run: Any) -> dict | None:
    try:
        summary = json.loads((run.run_dir / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if summary.get("config_hash") == run.config_hash else None


def run_tune(path: str | Path, results: str | Path = "results", jobs: int | None = None, backend: str = "local",
             device: str | None = None, quiet: bool = False, cpus_per_run: int | None = None,
             gpus_per_run: float | None = None, tuned_dir: str | Path = "experiments/tuned") -> dict[str, Any]:
    """Runs (or continues) every search of the tuning file ``path``; returns ``{"<task>/<algo>": record}`` and writes
    the tuned experiment files (see the module docstring)."""
    import os

    from research.experiment import default_threads

    if backend not in ("local", "ray"):
        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    _optuna().logging.set_verbosity(logging.WARNING)  # one line per trial is ours
    check_output_dir(results)
    plan = load_tune(path, results, device, tuned_dir)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    cpus_per_run = cpus_per_run or default_threads(jobs)
    log.info("%s: %d searches (%s), %d trials each, %d env steps and %.0f s per run, seeds %s", plan.name,
             len(plan.searches), ", ".join(s.name for s in plan.searches), plan.settings.trials,
             plan.settings.env_steps, plan.settings.wall_time_s, plan.settings.seeds)
    records: dict[str, dict[str, Any]] = {}

    def finished(search: Search, record: dict[str, Any]) -> None:
        records[search.name] = record
        by_task: dict[str, dict[str, Any]] = {}
        for done in plan.searches:
            if done.name in records:
                by_task.setdefault(done.task, {})[done.algo] = records[done.name]
        written = write_tuned(plan, by_task)
        if written is not None:
            log.info("%s: best %s eval return %s (trial %s); wrote %s", search.name, plan.settings.objective,
                     (record["best"] or {}).get("value"), (record["best"] or {}).get("number"), written)

    if plan.settings.order == "searches":
        for search in plan.searches:
            finished(search, run_search(plan, search, jobs, backend, cpus_per_run, gpus_per_run, quiet))
        return records
    from tqdm.auto import tqdm

    studies = {search.name: _open_study(plan, search) for search in plan.searches}
    total = plan.settings.trials * len(plan.searches)
    bar = tqdm(total=total, initial=sum(min(_finished_count(s), plan.settings.trials) for s in studies.values()),
               unit="trial", disable=quiet, desc=plan.name, dynamic_ncols=True)
    try:
        active = list(plan.searches)
        while active:
            for search in list(active):  # one batch of each search per round
                study = studies[search.name]
                record = run_search(plan, search, jobs, backend, cpus_per_run, gpus_per_run, quiet, study, bar,
                                    rounds=1)
                if _finished_count(study) >= plan.settings.trials:
                    active.remove(search)
                    finished(search, record)
    finally:
        bar.close()
    return records


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.tune", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="tuning file, e.g. experiments/tune_pendulum.toml")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the core count)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--device", help="device of every run (default: each table's own)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="root of results/tune/")
    parser.add_argument("--tuned-dir", type=Path, default=Path("experiments/tuned"),
                        help="where the tuned experiment files go")
    parser.add_argument("--cpus-per-run", type=int, help="CPUs (torch threads) per run (default: cores // jobs)")
    parser.add_argument("--gpus-per-run", type=float, help="GPUs per Ray task (default: 1 on CUDA, else 0)")
    parser.add_argument("--dry-run", action="store_true", help="check the file, list the searches, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if args.dry_run:
            plan = load_tune(args.file, args.results, args.device, args.tuned_dir)
            for search in plan.searches:
                print(f"{search.name:32s} {len(search.params)} params  {search.directory}")
            return 0
        run_tune(args.file, args.results, args.jobs, args.backend, args.device, args.quiet, args.cpus_per_run,
                 args.gpus_per_run, args.tuned_dir)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
