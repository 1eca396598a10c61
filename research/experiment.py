"""Runs an experiment file: every (algorithm, seed) as its own process, resumable, locally or on Ray.

    python -m research.experiment experiments/pendulum_compare.toml --jobs 2 --backend local --device cpu
    python -m research.experiment experiments/smoke.toml --set bptt.lr=1e-3 --set max_wall_time_s=60

The ``[experiment]`` table names the seeds and algorithms (default: every algorithm table in the file); each run
writes ``<results>/<experiment>/<algo>/seed_<k>/`` (see :mod:`research.runs`). With ``physics = [...]`` (preset
names) every algorithm and seed also runs on every preset, into ``<results>/<experiment>/<physics>/<algo>/seed_<k>/``. A table whose name is not an algorithm but which
holds ``algo = "<algorithm>"`` is a *variant*, named ``<algorithm>_<suffix>``: ``[bptt_squash]`` with ``algo = "bptt"`` and ``squash_penalty = 1e-3``
runs BPTT with that setting under the name ``bptt_squash`` (its own run directories, ``--set bptt_squash.*`` and rows in
the reports), beside plain ``[bptt]``. Resume rules, checked for every run
before anything starts (nothing is ever deleted: a run that is replaced is moved aside, into
``<results>/<experiment>/superseded/``, which the scripts never read):

- ``summary.json`` present with the same ``config_hash`` as the resolved config: finished, skipped;
- ``summary.json`` present with another hash: the config changed; the finished run is moved to
  ``superseded/<its config hash>/<run path>`` (``<run path>`` is ``[<physics>/]<algo>/seed_<k>``) and run again
  (logged); when ``superseded/<the new hash>/<run path>`` holds a run finished under the new config (the config was
  changed back), that run is moved back instead of training again;
- a directory without ``summary.json`` whose ``checkpoint.pt`` (:mod:`research.harness`) can be read and was written
  under the same config hash (a run killed midway, or failed, after a checkpoint): resumed in place from that
  checkpoint (logged; a ``failure.json`` from the try that failed is removed once its reason is logged);
- any other directory without ``summary.json`` (a run killed, or failed, before its first checkpoint, or whose
  checkpoint cannot be read or belongs to another config): moved to ``superseded/unfinished-<time>/<run path>`` (or
  ``failed-<time>``) and run again from scratch.

``--set key=value`` (repeatable) changes the resolved config of the runs, as ``python -m research.train --set``
does: ``--set bptt.lr=1e-3`` the runs of ``[bptt]``, ``--set max_wall_time_s=60`` every algorithm's runs,
``--set experiment.seeds=[0,1,2]`` the ``[experiment]`` table. An override is part of each run's config (and of its
hash): the runs it changes are moved aside as above, and running again without it brings them back.

A run whose process fails (an exception, a signal such as the out-of-memory killer's SIGKILL, a process that cannot
start) is recorded as failed with its reason (``ExperimentOutcome.failed``, the log, ``failure.json`` in its
directory and the ``invocations`` of ``experiment.json``); the other runs go on, and the next invocation retries it.

Runs execute in a process pool (``backend="local"``, spawned processes, one run per process) or as Ray tasks
(``backend="ray"``: the cluster at ``RAY_ADDRESS``, else a local one). Ray tasks train in a scratch directory on
their node and send the files back, so a cluster needs no shared filesystem. ``<results>/<experiment>/experiment.json``
lists the planned runs and their config hashes (the scripts in ``scripts/`` aggregate exactly those runs) and the
wall-clock of every invocation that ran something (``invocations``).

An experiment file with a ``[gradient_study]`` table is a measurement, not a set of training runs: it is handed to
:func:`research.analysis.gradients.run_gradient_study`, which writes ``gradient_study.csv`` and ``config.json``
(``scripts/gradient_report.py`` turns them into figures and a report; ``make experiment`` runs both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from research.algos import ALGOS
from research.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    check_output_dir,
    config_hash,
    from_dict,
    load_toml,
    parse_override,
    physics_entry,
)
from research.harness import checkpoint_info
from research.rundir import (
    CHECKPOINT,
    FAILURE,
    MANIFEST,
    RUN_DIR_PATTERNS,
    SUMMARY,
    SUPERSEDED,
    atomic_write_bytes,
    atomic_write_json,
    is_superseded,
    run_dir,
)
from research.train import resolve_config, train

log = logging.getLogger("research.experiment")  # the same name when run with -m

GRADIENT_STUDY = "gradient_study"
Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class PlannedRun:
    """One (physics, algorithm, seed) of an experiment with its resolved config; ``physics`` is ``None`` without a
    physics axis."""

    algo: str
    seed: int
    config: Any
    run_dir: Path
    config_hash: str
    physics: str | None = None
    label: str = ""
    """The table the run comes from: ``algo`` itself, or a variant's name (``bptt_squash``)."""

    @property
    def table(self) -> str:
        return self.label or self.algo

    @property
    def name(self) -> str:
        run = f"{self.table}/seed_{self.seed}"
        return f"{self.physics}/{run}" if self.physics else run


@dataclass
class ExperimentPlan:
    """An experiment file resolved into runs."""

    name: str
    path: Path
    settings: ExperimentConfig
    directory: Path
    runs: list[PlannedRun]
    overrides: list[str] = field(default_factory=list)


@dataclass
class ExperimentOutcome:
    """What :func:`run_experiment` did: runs skipped as finished, completed now, and failed (with the error)."""

    plan: ExperimentPlan
    skipped: list[PlannedRun] = field(default_factory=list)
    completed: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


# ---------------------------------------------------------------------------------------------------- planning
VARIANT_KEY = "algo"
"""The key of a variant table naming the registered algorithm it runs."""


BY_PHYSICS_KEY = "by_physics"
"""The sub-table of an algorithm or variant table holding per-physics settings: ``[ddpg_tuned.by_physics.cartpole]``
applies on the ``cartpole`` entry of ``experiment.physics`` only (a tuned row whose settings differ by task)."""


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested tables merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def physics_table(path: Path, name: str, table: dict[str, Any], physics: str | None,
                  entries: Sequence[str]) -> dict[str, Any]:
    """The table of ``name`` as it runs on the ``physics`` entry: its :data:`BY_PHYSICS_KEY` sub-table for that entry
    merged over the rest. A sub-table naming an entry that ``experiment.physics`` lacks is a one-line error."""
    per = table.get(BY_PHYSICS_KEY)
    if per is None:
        return table
    if not isinstance(per, dict) or not entries:
        raise ConfigError(f"{path}: [{name}.{BY_PHYSICS_KEY}] needs experiment.physics and one table per entry, "
                          f"e.g. [{name}.{BY_PHYSICS_KEY}.default]")
    unknown = sorted(set(per) - set(entries))
    if unknown:
        raise ConfigError(f"{path}: [{name}.{BY_PHYSICS_KEY}.{unknown[0]}] is not in experiment.physics {list(entries)}")
    base = {k: v for k, v in table.items() if k != BY_PHYSICS_KEY}
    return _merged(base, per.get(physics, {}))


def experiment_tables(path: Path, data: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{table name: (registered algorithm, table without the variant key)}`` for every algorithm and variant table
    of an experiment file; any other table (but ``[experiment]``) raises a one-line :class:`ConfigError`."""
    tables = {}
    for key, table in data.items():
        if key == "experiment":
            continue
        if key in ALGOS:
            tables[key] = (key, table)
            continue
        algo = table.get(VARIANT_KEY) if isinstance(table, dict) else None
        if algo is None:
            raise ConfigError(f"{path}: unknown table [{key}]; expected [experiment], one of {list(ALGOS)}, or a "
                              f"variant table with {VARIANT_KEY} = \"<one of those>\"")
        if algo not in ALGOS:
            raise ConfigError(f"{path}: [{key}].{VARIANT_KEY} must be one of {list(ALGOS)}, got {algo!r}")
        if not key.startswith(f"{algo}_"):  # the name says what runs (and gives the statistics its family)
            raise ConfigError(f"{path}: variant [{key}] of {algo!r} must be named '{algo}_<suffix>', e.g. "
                              f"[{algo}_{key}]")
        tables[key] = (algo, {k: v for k, v in table.items() if k != VARIANT_KEY})
    return tables


def imported_tables(path: Path, experiment: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The tables of ``experiment.tables_from`` (``experiment`` is the raw ``[experiment]`` table of ``path``) as they
    run on its ``tables_at`` entry, by_physics settings merged in (:func:`physics_table`); ``{}`` without one. A
    missing file, or a missing or unknown ``tables_at`` where a table has per-physics settings, is a one-line
    :class:`ConfigError`."""
    source = experiment.get("tables_from", "")
    if not source:
        return {}
    other = path.parent / source
    if not other.is_file():
        raise ConfigError(f"{path}: experiment.tables_from = {source!r}: no experiment file at {other}")
    data = load_toml(other)
    entries = data.get("experiment", {}).get("physics", [])
    at = experiment.get("tables_at", "")
    if at and at not in entries:
        raise ConfigError(f"{path}: experiment.tables_at = {at!r} is not in {other}'s experiment.physics {entries}")
    out = {}
    for name, (algo, table) in experiment_tables(other, data).items():
        if BY_PHYSICS_KEY in table and not at:
            raise ConfigError(f"{path}: experiment.tables_at must name the entry of {other}'s experiment.physics "
                              f"{entries} whose settings the imported tables take ([{name}.{BY_PHYSICS_KEY}])")
        out[name] = (algo, physics_table(other, name, table, at or None, entries))
    return out


def _split_overrides(data: dict[str, Any], overrides: Sequence[str], tables: Sequence[str] = ALGOS
                     ) -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
    """``--set`` overrides of an experiment: ``(data with experiment.* set, {table: its own}, every algorithm's)``;
    ``tables`` are the names a per-table override may start with (the algorithms and the file's variants)."""
    per_algo: dict[str, list[str]] = {}
    common = []
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] == "experiment":
            data = apply_overrides(data, [text])
        elif keys[0] in ALGOS or keys[0] in tables:
            if len(keys) < 2:
                raise ConfigError(f"--set {text!r}: name a field of [{keys[0]}], e.g. {keys[0]}.seed=1")
            per_algo.setdefault(keys[0], []).append(".".join(keys[1:]) + "=" + text.split("=", 1)[1])
        else:
            common.append(text)
    return data, per_algo, common


def load_experiment(path: str | Path, results: str | Path = "results", device: str | None = None,
                    overrides: Sequence[str] = ()) -> ExperimentPlan:
    """Resolves an experiment file into its runs; ``device`` (e.g. ``"cpu"``) overrides every run's device, and
    ``overrides`` (``key=value``, as ``--set``: ``bptt.lr=1e-3``, ``max_wall_time_s=60``, ``experiment.seeds=[0]``)
    the file's values.

    Raises :class:`ConfigError` for a missing file (listing the experiments that exist), an unknown table or
    algorithm (listing the valid ones), no algorithm at all, or an invalid config value.
    """
    path = Path(path)
    data = load_toml(path)
    if GRADIENT_STUDY in data:
        raise ConfigError(f"{path} is a gradient study, not a set of training runs: run_experiment() hands it to "
                          "research.analysis.gradients")
    own = experiment_tables(path, data)
    tables = {**imported_tables(path, data.get("experiment", {})), **own}
    data, per_algo, common = _split_overrides(data, overrides, list(tables))
    settings = from_dict(ExperimentConfig, data.get("experiment", {}), prefix="experiment.")
    algos = settings.algos or list(own)
    for algo in algos:
        if algo not in ALGOS and algo not in tables:
            raise ConfigError(f"{path}: unknown algorithm {algo!r} in experiment.algos; valid: "
                              f"{list(ALGOS) + [t for t in tables if t not in ALGOS]}")
    if not algos:
        raise ConfigError(f"{path}: no algorithm to run; add a table such as [bptt] or list experiment.algos")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(f"{path}: experiment.seeds must be a non-empty list of distinct seeds, got {settings.seeds}")
    unused = sorted(set(per_algo) - set(algos))
    if unused:
        raise ConfigError(f"--set {unused[0]}.*: the experiment runs no {unused[0]!r}; it runs {algos}")
    given = list(overrides)
    overrides = ([f"device={json.dumps(device)}"] if device else []) + common
    runs = []
    cells = [(physics, name) for physics in settings.physics or [None] for name in algos]
    if settings.order == "algos":
        cells = [(physics, name) for name in algos for physics in settings.physics or [None]]
    for physics, name in cells:
        algo, table = tables.get(name, (name, {}))
        table = physics_table(path, name, table, physics, settings.physics)
        clash = sorted({"physics", "system"} & set(table.get("env", {}))) if physics else []
        if clash:
            raise ConfigError(f"{path}: [{name}.env] sets {clash[0]} while experiment.physics crosses presets and "
                              "systems; remove one of them")
        extra = []
        if physics:
            system, preset, _ = physics_entry(physics)
            extra = [f"env.physics={json.dumps(preset)}"]
            extra += [f"env.system={json.dumps(system)}"] if system != "pendulum" else []
        for seed in settings.seeds:
            try:
                config = resolve_config(algo, table, seed, overrides + per_algo.get(name, []) + extra)
            except ImportError as err:
                raise ConfigError(f"algorithm {algo!r} is registered but cannot be imported: {err}") from None
            try:
                config = common_budget(config, settings)
            except ConfigError as err:
                raise ConfigError(f"{path}: [{name}] under experiment.env_steps = {settings.env_steps}: {err}") from None
            folder = physics_entry(physics)[2] if physics else None
            runs.append(PlannedRun(algo, seed, config, run_dir(results, path.stem, name, seed, folder),
                                   config_hash(config), physics, "" if name == algo else name))
    return ExperimentPlan(path.stem, path, settings, Path(results) / path.stem, runs, given)


def common_budget(config: Any, settings: ExperimentConfig) -> Any:
    """``config`` under the experiment's common budget: cut to ``env_steps`` as the tuning driver cuts its trials
    (:func:`research.tune.fit_budget`; a :class:`ConfigError` when one iteration or collector batch is larger) and
    capped there, and capped at ``wall_time_s`` training seconds; unchanged where they are 0. With ``evaluations``,
    scored each ``env_steps / evaluations`` env steps and each ``wall_time_s / evaluations`` training seconds."""
    from research.tune import fit_budget

    if settings.env_steps:
        config, _ = fit_budget(config, settings.env_steps)
        config = dataclasses.replace(config, max_env_steps=settings.env_steps)
    if settings.wall_time_s:
        config = dataclasses.replace(config, max_wall_time_s=settings.wall_time_s)
    if settings.evaluations:
        schedule = {}
        if settings.env_steps:
            schedule["interval_env_steps"] = max(1, settings.env_steps // settings.evaluations)
        if settings.wall_time_s:
            schedule["interval_s"] = settings.wall_time_s / settings.evaluations
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, **schedule))
    return config


def _finished_hash(directory: Path) -> str | None:
    """The ``config_hash`` of the finished run in ``directory`` (``""`` when its summary has none), else ``None``."""
    try:
        return str(json.loads((directory / SUMMARY).read_text()).get("config_hash", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def resume_point(run: PlannedRun) -> dict[str, Any] | None:
    """What the run's ``checkpoint.pt`` says (``iteration``, ``done``, ...) when it can be read and was written by
    this algorithm under this config hash; ``None`` otherwise."""
    info = checkpoint_info(run.run_dir / CHECKPOINT)
    if info is None or info["config_hash"] != run.config_hash or info["algo"] != run.algo:
        return None
    return info


def run_status(run: PlannedRun) -> Literal["done", "changed", "resumable", "failed", "incomplete", "new"]:
    """``done``: finished with this config; ``changed``: finished with another; ``resumable``: unfinished (killed
    midway, or failed) with a checkpoint of this config to continue from; ``failed``: the last try failed (its
    ``failure.json`` says why); ``incomplete``: started, unfinished (killed midway)."""
    finished = _finished_hash(run.run_dir)
    if finished is not None:
        return "done" if finished == run.config_hash else "changed"
    if resume_point(run) is not None:
        return "resumable"
    if (run.run_dir / FAILURE).is_file():
        return "failed"
    return "incomplete" if run.run_dir.exists() else "new"


def failure_reason(run: PlannedRun) -> str:
    """The first line of the reason in the run's ``failure.json`` (``""`` when there is none)."""
    try:
        return str(json.loads((run.run_dir / FAILURE).read_text()).get("reason", "")).strip().split("\n")[0]
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def move_aside(run: PlannedRun, directory: Path, status: str) -> Path:
    """Moves the run directory of ``run`` into ``<directory>/superseded/`` (the layout of the module docstring),
    never over another; returns where it went."""
    if status == "changed":
        name = _finished_hash(run.run_dir) or "unknown"
    else:
        name = f"{'failed' if status == 'failed' else 'unfinished'}-{time.strftime('%Y%m%d-%H%M%S')}"
    relative = run.run_dir.relative_to(directory)
    target, n = directory / SUPERSEDED / name / relative, 1
    while target.exists():
        n += 1
        target = directory / SUPERSEDED / f"{name}.{n}" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    run.run_dir.rename(target)
    return target


def restore_superseded(run: PlannedRun, directory: Path) -> Path | None:
    """Moves back a run finished under this very config that an earlier change moved aside; returns where it was."""
    source = directory / SUPERSEDED / run.config_hash / run.run_dir.relative_to(directory)
    if run.run_dir.exists() or _finished_hash(source) != run.config_hash:
        return None
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    source.rename(run.run_dir)
    for parent in source.parents:  # the folders it leaves empty, up to superseded/
        if parent == directory / SUPERSEDED or any(parent.iterdir()):
            break
        parent.rmdir()
    return source


def write_manifest(plan: ExperimentPlan, invocation: dict | None = None) -> None:
    """``experiment.json``: the planned runs and their config hashes, read by the aggregation scripts, and the
    ``invocations`` that ran runs (start time, wall-clock, runs run and failed, jobs): earlier ones are kept while
    every run they planned is still planned unchanged, ``invocation`` (if given) is appended."""
    plan.directory.mkdir(parents=True, exist_ok=True)
    runs = [{"algo": run.table, **({"trainer": run.algo} if run.label else {}), "seed": run.seed,
             "config_hash": run.config_hash,
             "path": str(run.run_dir.relative_to(plan.directory)), **({"physics": run.physics} if run.physics else {})}
            for run in plan.runs]
    invocations = []
    try:
        previous = json.loads((plan.directory / MANIFEST).read_text())
        if all(entry in runs for entry in previous.get("runs", [])):  # the same plan, or one that only grew
            invocations = list(previous.get("invocations", []))
    except (OSError, json.JSONDecodeError):
        pass
    if invocation is not None:
        invocations.append(invocation)
    atomic_write_json(plan.directory / MANIFEST, {
        "experiment": plan.name,
        "source": str(plan.path),
        **({"overrides": plan.overrides} if plan.overrides else {}),
        "description": plan.settings.description,
        "seeds": plan.settings.seeds,
        "algos": list(dict.fromkeys(run.table for run in plan.runs)),
        **({"physics": plan.settings.physics} if plan.settings.physics else {}),
        "runs": runs,
        "invocations": invocations,
    })


def _unplanned_run_dirs(plan: ExperimentPlan) -> list[str]:
    planned = {run.run_dir.resolve() for run in plan.runs}
    found = (p for pattern in RUN_DIR_PATTERNS for p in plan.directory.glob(pattern)
             if p.is_dir() and p.resolve() not in planned and not is_superseded(p, plan.directory))
    return sorted(str(p.relative_to(plan.directory)) for p in found)


# ---------------------------------------------------------------------------------------------------- workers
def default_threads(jobs: int) -> int:
    """Torch threads per run so that ``jobs`` parallel runs share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def execute_run(algo: str, config: Any, out_dir: str | Path, experiment: str, threads: int, label: str = "") -> dict:
    """Body of one worker: trains ``algo`` (reported as ``label``, a variant's name, when given) with ``threads``
    torch threads into ``out_dir``; returns the summary."""
    import torch

    torch.set_num_threads(threads)
    logging.getLogger("torchrl").setLevel(logging.WARNING)  # one progress bar, not every worker's info lines
    return train(config, algo, out_dir, experiment, quiet=True, label=label)


def execute_run_packed(algo: str, config: Any, experiment: str, threads: int,
                       start: dict[str, bytes] | None = None, label: str = "") -> tuple[dict, dict[str, bytes]]:
    """Trains into a scratch directory and returns ``(summary, {file name: contents})`` (Ray tasks, any node);
    ``start`` (``{file name: contents}``, e.g. the run's ``checkpoint.pt``) is written there first, to resume from."""
    with tempfile.TemporaryDirectory(prefix="research-run-") as scratch:
        for name, data in (start or {}).items():
            atomic_write_bytes(Path(scratch) / name, data)
        summary = execute_run(algo, config, scratch, experiment, threads, label)
        files = {p.name: p.read_bytes() for p in Path(scratch).iterdir() if p.is_file() and not p.name.startswith(".")}
    return summary, files


def unpack_run(out_dir: Path, files: dict[str, bytes]) -> None:
    """Writes a packed run into ``out_dir``, atomically per file and ``summary.json`` last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == SUMMARY):
        atomic_write_bytes(out_dir / name, files[name])


OnDone = Callable[[PlannedRun, "dict | None", "str | None"], None]


def process_context(runs: Sequence[PlannedRun]) -> BaseContext:
    """Where run processes come from: on Linux a fork server that has imported torch and the trainers once, so each
    run starts in a fresh process within milliseconds; plain spawning elsewhere (forking is unsafe on macOS)."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Takes effect when the server starts (the first run of this Python process); later runs import what they lack.
    context.set_forkserver_preload(["research.train", *sorted({type(r.config).__module__ for r in runs})])
    return context


def _run_child(run: PlannedRun, experiment: str, threads: int, results: Connection) -> None:
    """Entry point of a run's process: sends back ``("ok", summary)`` or ``("error", message)``."""
    try:
        results.send(("ok", execute_run(run.algo, run.config, run.run_dir, experiment, threads, run.label)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        results.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        results.close()


def exit_reason(exitcode: int | None) -> str:
    """Why a run's process ended without sending its result, from its exit code (``-N``: killed by signal ``N``)."""
    if exitcode is None:
        return "its process sent nothing and did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = (" (the kernel's out-of-memory killer sends it when memory runs out; so can a person or a job "
                "scheduler)" if -exitcode == signal.SIGKILL else "")
        return f"its process was killed by {name}{hint}"
    return f"its process exited with code {exitcode} without sending a result"


def _execute_local(runs: list[PlannedRun], experiment: str, jobs: int, threads: int, on_done: OnDone) -> None:
    # A fresh process per run: no state (RNG, compile caches, thread pools) leaks from one run to the next. A run
    # whose process cannot start or dies fails alone (a dead fork server is started again for the next run).
    context = process_context(runs)
    waiting = list(runs)
    running: dict[Connection, tuple[PlannedRun, BaseProcess]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                run = waiting.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_run_child, args=(run, experiment, threads, send), name=run.name)
                try:
                    process.start()
                except Exception as err:  # noqa: BLE001 - e.g. EOFError from a fork server that died, no memory
                    receive.close()
                    on_done(run, None, f"its process could not start: {type(err).__name__}: {err}")
                    continue
                finally:
                    send.close()  # the child holds the only writer: its exit makes `receive` ready (EOF)
                running[receive] = (run, process)
            for receive in wait(list(running)):
                run, process = running.pop(receive)
                try:
                    status, payload = receive.recv()
                except EOFError:  # it died before sending anything
                    status, payload = "error", None
                except Exception as err:  # noqa: BLE001 - a result that cannot be read fails its run only
                    status, payload = "error", f"its result could not be read: {type(err).__name__}: {err}"
                receive.close()
                process.join(timeout=60)
                if process.is_alive():  # sent its result but hangs on exit
                    process.kill()
                    process.join()
                if status == "ok":
                    on_done(run, payload, None)
                else:
                    on_done(run, None, payload or exit_reason(process.exitcode))
    finally:
        for _, process in running.values():  # interrupted: stop the runs still going
            process.terminate()
            process.join()


def _resume_files(run: PlannedRun) -> dict[str, bytes]:
    """The checkpoint a Ray task resumes from (``{}`` for a run that starts from scratch)."""
    path = run.run_dir / CHECKPOINT
    return {CHECKPOINT: path.read_bytes()} if resume_point(run) is not None else {}


def _execute_ray(runs: list[PlannedRun], experiment: str, jobs: int, cpus_per_run: int, gpus_per_run: float,
                 quiet: bool, on_done: OnDone) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs the optional Ray extra: pip install -e '.[distributed]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=not quiet)
        else:
            log.info("starting a local Ray instance with %d CPUs", jobs * cpus_per_run)
            ray.init(num_cpus=jobs * cpus_per_run, include_dashboard=False, log_to_driver=not quiet)
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(execute_run_packed)
        refs = {task.remote(r.algo, r.config, experiment, cpus_per_run, _resume_files(r), r.label): r for r in runs}
        pending = list(refs)
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    run = refs[ref]
                    try:
                        summary, files = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a failed task fails its run, not the experiment
                        on_done(run, None, f"{type(err).__name__}: {err}")
                        continue
                    unpack_run(run.run_dir, files)
                    on_done(run, summary, None)
        except BaseException:
            for ref in pending:  # interrupted: free the cluster of the runs still going
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------- driver
def run_experiment(path: str | Path, results: str | Path = "results", jobs: int | None = None,
                   backend: Backend = "local", device: str | None = None, quiet: bool = False,
                   cpus_per_run: int | None = None, gpus_per_run: float | None = None,
                   overrides: Sequence[str] = ()) -> ExperimentOutcome | Any:
    """Runs every unfinished (algorithm, seed) of the experiment file ``path`` into ``<results>/<name>/``.

    Args:
        jobs: runs at a time (default: the core count); each run gets ``cores // jobs`` torch threads.
        backend: ``"local"`` (process pool) or ``"ray"`` (``RAY_ADDRESS``'s cluster, else a local one).
        device: overrides every run's device (``"cpu"``, ``"cuda"``); ``None`` keeps the file's.
        cpus_per_run, gpus_per_run: resources per run (default ``cores // jobs`` CPUs; 1 GPU when on CUDA);
            on Ray they are the task's resource request.
        overrides: ``key=value`` changes of the file's values (``--set``; see :func:`load_experiment`).

    Returns:
        An :class:`ExperimentOutcome` (a failed run is reported there, and the other runs still finish); for a
        ``[gradient_study]`` file, whatever :func:`research.analysis.gradients.run_gradient_study` returns.
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    check_output_dir(results)
    if GRADIENT_STUDY in load_toml(path):
        if overrides:
            raise ConfigError(f"--set is for training runs; {path} is a gradient study (edit its file instead)")
        from research.analysis.gradients import run_gradient_study

        return run_gradient_study(path, results, device=device, quiet=quiet)

    plan = load_experiment(path, results, device, overrides)
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    cpus_per_run = cpus_per_run or default_threads(jobs)
    outcome = ExperimentOutcome(plan)
    pending = []
    for run in plan.runs:
        status = run_status(run)
        if status == "done":
            outcome.skipped.append(run)
            continue
        if status == "resumable":
            point = resume_point(run)
            failed = (run.run_dir / FAILURE).is_file()
            log.info("%s: unfinished%s: resuming in place from its checkpoint after iteration %s", run.name,
                     f", failed last time ({failure_reason(run) or 'no reason recorded'})" if failed else "",
                     point["iteration"] if point else "?")
            if failed:
                (run.run_dir / FAILURE).unlink()
            pending.append(run)
            continue
        if status == "failed":
            log.info("%s: failed last time (%s): trying again", run.name, failure_reason(run) or "no reason recorded")
        if run.run_dir.exists():
            moved = move_aside(run, plan.directory, status)
            what = {"changed": "the config changed since it ran", "failed": "a failed run",
                    "incomplete": "unfinished run (no summary.json)"}[status]
            log.info("%s: %s: moved to %s, running it again", run.name, what, moved.relative_to(plan.directory))
        restored = restore_superseded(run, plan.directory)
        if restored is not None:
            log.info("%s: finished before under this config: moved back from %s", run.name,
                     restored.relative_to(plan.directory))
            outcome.skipped.append(run)
            continue
        pending.append(run)
    write_manifest(plan)
    unplanned = _unplanned_run_dirs(plan)
    if unplanned:
        log.warning("%s holds runs this experiment no longer plans (ignored by the scripts): %s",
                    plan.directory, ", ".join(unplanned))
    log.info("%s: %d runs planned, %d already finished, %d to run (%s backend, %d at a time, %d CPU each)",
             plan.name, len(plan.runs), len(outcome.skipped), len(pending), backend, jobs, cpus_per_run)
    if not pending:
        return outcome

    bar = tqdm(total=len(plan.runs), initial=len(outcome.skipped), unit="run", desc=plan.name, disable=quiet,
               dynamic_ncols=True)
    started, clock = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()

    def on_done(run: PlannedRun, summary: dict | None, error: str | None) -> None:
        if error is None:
            outcome.completed[run.name] = summary
            score = summary.get("eval", {}).get("return_mean", float("nan"))
            log.info("%s finished: eval return %.1f after %d env steps, %.1f s", run.name, score,
                     summary.get("env_steps", 0), summary.get("wall_time_s", 0.0))
        else:
            outcome.failed[run.name] = error
            log.error("%s failed: %s", run.name, error)
            try:  # the run stays unfinished (no summary.json): the next invocation moves it aside and retries it
                run.run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(run.run_dir / FAILURE, {"reason": error, "config_hash": run.config_hash,
                                                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            except OSError as err:
                log.warning("%s: could not write %s: %s", run.name, FAILURE, err)
        bar.update(1)

    with logging_redirect_tqdm():
        try:
            if backend == "ray":
                gpus = gpus_per_run if gpus_per_run is not None else _default_gpus(plan)
                _execute_ray(pending, plan.name, jobs, cpus_per_run, gpus, quiet, on_done)
            else:
                _execute_local(pending, plan.name, jobs, cpus_per_run, on_done)
        finally:
            bar.close()
            write_manifest(plan, {"started": started, "wall_time_s": round(time.perf_counter() - clock, 1),
                                  "runs_completed": len(outcome.completed), "runs_failed": len(outcome.failed),
                                  "runs_interrupted": len(pending) - len(outcome.completed) - len(outcome.failed),
                                  **({"failures": {name: error.strip().split("\n")[0]
                                                   for name, error in outcome.failed.items()}}
                                     if outcome.failed else {}),
                                  "backend": backend, "jobs": jobs, "cpus_per_run": cpus_per_run})
    if outcome.failed:
        log.error("%d of %d runs failed: %s (rerun the same command to retry them)", len(outcome.failed),
                  len(plan.runs), ", ".join(outcome.failed))
    return outcome


def _default_gpus(plan: ExperimentPlan) -> float:
    return 1.0 if any(str(run.config.device).startswith("cuda") for run in plan.runs) else 0.0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.experiment", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="experiment file, e.g. experiments/pendulum_compare.toml")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: the core count)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--device", help="device of every run (default: each config's own)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="root of the run directories")
    parser.add_argument("--cpus-per-run", type=int, help="CPUs (torch threads) per run (default: cores // jobs)")
    parser.add_argument("--gpus-per-run", type=float, help="GPUs per Ray task (default: 1 on CUDA, else 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value: ALGO.KEY=VALUE for one algorithm's runs (bptt.lr=1e-3), "
                             "KEY=VALUE for every algorithm's, experiment.KEY=VALUE for the [experiment] table; "
                             "dotted keys reach nested tables; repeatable. Changed runs are moved aside, not lost")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)  # a terminated experiment stops its runs too
    try:
        if args.dry_run:
            plan = load_experiment(args.experiment, args.results, args.device, args.overrides)
            for run in plan.runs:
                status = run_status(run)
                reason = f"  ({failure_reason(run)})" if status == "failed" else ""
                print(f"{run.name:40s} {status:10s} {run.run_dir}{reason}")
            return 0
        outcome = run_experiment(args.experiment, args.results, args.jobs, args.backend, args.device, args.quiet,
                                 args.cpus_per_run, args.gpus_per_run, args.overrides)
    except ConfigError as err:  # bad input: one line on stderr, no traceback
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if getattr(outcome, "ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
