"""The run-directory contract: file names, the manifest, metric columns, atomic writes and readers.

Standard library only, so that both the library (which writes runs) and ``scripts/`` (which read them, and never
import a trainer) use this one definition. A run lives in ``<results>/<experiment>/<algo>/seed_<k>/``:

- ``config.json`` (:data:`CONFIG`): ``algo``, ``experiment``, ``seed``, ``config`` (the resolved config),
  ``config_hash``, ``git_commit``, ``versions`` and ``device``;
- ``metrics.csv`` (:data:`METRICS`): one row per logged iteration; the columns :data:`FIXED_COLUMNS` come first,
  then namespaced metrics (``train/...``, ``eval/...``); a cell is empty where nothing was measured;
- ``summary.json`` (:data:`SUMMARY`): ``algo``, ``seed``, ``env_steps``, ``wall_time_s``, ``config_hash``,
  ``eval`` (the final evaluation) and algorithm extras; written last, so its presence means the run finished;
- ``policy.pt`` (:data:`POLICY`): the final policy (``research.load_policy`` reads it);
- ``checkpoint.pt`` (:data:`CHECKPOINT`): the run's whole training state (networks, optimisers, replay buffer, RNG
  states, counters, the metric rows so far), written by :func:`research.harness.train` every
  ``checkpoint_every_s`` seconds and when training ends; a run directory holding one continues from it.

``<results>/<experiment>/experiment.json`` (:data:`MANIFEST`) lists the runs an experiment plans, with their config
hashes; readers aggregate exactly those. Every file is written through a temporary file and a rename
(:func:`atomic_write_bytes`), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
POLICY = "policy.pt"
CHECKPOINT = "checkpoint.pt"
MANIFEST = "experiment.json"

#: Columns every metrics row holds, in this order.
FIXED_COLUMNS = ("iteration", "env_steps", "wall_time_s")
#: Prefix of the shared evaluator's columns in ``metrics.csv`` (``eval/return_mean``, ...).
EVAL_PREFIX = "eval/"
#: The column the reports and time-to-threshold statistics read.
EVAL_RETURN = EVAL_PREFIX + "return_mean"


def run_dir(results: str | os.PathLike, experiment: str, algo: str, seed: int, physics: str | None = None) -> Path:
    """``<results>/<experiment>/<algo>/seed_<seed>``, or ``<results>/<experiment>/<physics>/<algo>/seed_<seed>`` in an
    experiment with a physics axis (``experiment.physics``)."""
    base = Path(results) / experiment
    return (base / physics if physics else base) / algo / f"seed_{seed}"


RUN_DIR_PATTERNS = ("*/seed_*", "*/*/seed_*")
"""Globs, under ``<results>/<experiment>``, of the run directories :func:`run_dir` makes: ``<algo>/seed_<k>`` and,
with a physics axis, ``<physics>/<algo>/seed_<k>``."""

SUPERSEDED = "superseded"
"""Folder under ``<results>/<experiment>`` into which the experiment runner moves the runs it replaces (never deleting
one): ``superseded/<config hash>/<run path>`` for a finished run whose config changed, and
``superseded/unfinished-<time>/<run path>`` for an unfinished one. Readers skip it (:func:`is_superseded`); its run
directories also lie deeper than :data:`RUN_DIR_PATTERNS` reach."""

FAILURE = "failure.json"
"""Written by the experiment runner into the directory of a run that failed (``reason``, ``time``, ``config_hash``);
the run stays unfinished, and the next invocation retries it."""


def is_superseded(path: str | os.PathLike, exp_dir: str | os.PathLike) -> bool:
    """Whether the run directory ``path`` lies under ``<exp_dir>/superseded/`` (moved aside, not part of the
    experiment any more)."""
    parts = Path(path).relative_to(exp_dir).parts
    return bool(parts) and parts[0] == SUPERSEDED


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, fsync: bool = False) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory and a rename; with ``fsync`` the
    file's contents reach the disk before the rename, and the rename itself before returning (a crash of the machine
    leaves the old file or the new one, never a truncated one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if fsync and hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """:func:`atomic_write_text` of ``data`` as indented JSON (non-JSON values written with ``str``)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def metrics_csv(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] = ()) -> str:
    """``metrics.csv`` text of ``rows``: :data:`FIXED_COLUMNS`, then ``columns``, then any other key in order seen."""
    ordered = list(dict.fromkeys([*FIXED_COLUMNS, *columns, *(k for row in rows for k in row)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ordered, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def read_metrics_rows(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv`` as floats (``None`` where a cell is empty)."""
    with Path(path).open(newline="") as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def is_finished(path: str | os.PathLike) -> bool:
    """Whether the run directory ``path`` holds a ``summary.json`` (it is written last)."""
    return (Path(path) / SUMMARY).is_file()
