"""The run-directory contract every trainer writes and every script reads.

``results/<experiment>/<algo>/seed_<k>/`` holds:

- ``config.json``: the resolved config, its hash, the git commit, library versions and the device;
- ``metrics.csv``: one row per logged iteration; columns ``iteration``, ``env_steps``, ``wall_time_s`` and
  namespaced metrics (``train/return``, ``train/grad_norm``, ``eval/return_mean``, ...); empty where not measured;
- ``summary.json``: ``algo``, ``seed``, ``env_steps``, ``wall_time_s``, ``config_hash`` and ``eval`` (the final
  evaluation); it is written last, so its presence means the run finished;
- ``policy.pt``: the final policy, loadable with :func:`research.load_policy`.

Every file is written atomically (temporary file, then rename): a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from research.config import config_hash, to_dict

FIXED_COLUMNS = ("iteration", "env_steps", "wall_time_s")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def git_commit() -> str | None:
    """The current commit of the repository holding this package (with ``-dirty`` when modified), or ``None``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result."""
    import numpy
    import tensordict
    import torchrl

    import research

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "numpy": numpy.__version__,
        "research": research.__version__,
    }


def device_description(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def run_dir(results: str | os.PathLike, experiment: str, algo: str, seed: int) -> Path:
    """``<results>/<experiment>/<algo>/seed_<seed>``."""
    return Path(results) / experiment / algo / f"seed_{seed}"


class RunWriter:
    """Writes one run's files. Trainers call :meth:`log` as they go and :meth:`finish` once at the end.

    ``metrics.csv`` is rewritten atomically at every :meth:`flush` (each evaluation), so it is always readable.
    """

    def __init__(self, path: str | os.PathLike, algo: str, config: Any, experiment: str = "") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        stale = self.path / "summary.json"
        if stale.exists():
            stale.unlink()  # a run being (re)written is unfinished until finish() writes it again
        self.algo = algo
        self.seed = getattr(config, "seed", None)
        self.config_hash = config_hash(config)
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(FIXED_COLUMNS)
        atomic_write_json(
            self.path / "config.json",
            {
                "algo": algo,
                "experiment": experiment,
                "seed": self.seed,
                "config": to_dict(config),
                "config_hash": self.config_hash,
                "git_commit": git_commit(),
                "versions": library_versions(),
                "device": device_description(getattr(config, "device", "cpu")),
            },
        )

    def log(self, row: Mapping[str, Any]) -> None:
        """Appends a row; it must hold ``iteration``, ``env_steps`` and ``wall_time_s``."""
        missing = [c for c in FIXED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"a metrics row needs {list(FIXED_COLUMNS)}; missing {missing}")
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()})

    def flush(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def finish(self, policy: torch.nn.Module, env_steps: int, wall_time_s: float, evaluation: Mapping[str, float],
               **extra: Any) -> dict[str, Any]:
        """Writes ``metrics.csv``, ``policy.pt`` and, last, ``summary.json``; returns the summary."""
        from research.policies import save_policy

        self.flush()
        save_policy(policy, self.path / "policy.pt")
        summary = {
            "algo": self.algo,
            "seed": self.seed,
            "env_steps": int(env_steps),
            "wall_time_s": float(wall_time_s),
            "config_hash": self.config_hash,
            "eval": dict(evaluation),
            **extra,
        }
        atomic_write_json(self.path / "summary.json", summary)
        return summary
