"""Writing a run directory (the contract itself, file names and columns, is :mod:`research.rundir`).

:class:`RunWriter` writes ``config.json`` when the run starts, rewrites ``metrics.csv`` at every :meth:`flush` (each
evaluation, so it is always readable), and at :meth:`finish` writes ``policy.pt`` and, last, ``summary.json``. The
harness keeps its checkpoint at :attr:`RunWriter.checkpoint_path` and, through :meth:`RunWriter.state_dict`, the rows
logged so far inside it: a resumed run starts from those rows (``metrics.csv`` is rewritten to end at the checkpoint).
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from research.config import config_hash, to_dict
from research.rundir import (
    CHECKPOINT,
    CONFIG,
    FIXED_COLUMNS,
    METRICS,
    POLICY,
    SUMMARY,
    atomic_write_json,
    atomic_write_text,
    metrics_csv,
    run_dir,
)

__all__ = ["RunWriter", "device_description", "git_commit", "library_versions", "run_dir"]


def git_commit() -> str | None:
    """The current commit of the repository holding this package (with ``-dirty`` when code outside ``results/`` is
    modified), or ``None``."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                                timeout=5).stdout.strip()
        # results/ is what runs write, not code: regenerating a committed result in place is not a dirty tree
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=root,
                               capture_output=True, text=True, check=True, timeout=5).stdout.strip()
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


def cpu_model() -> str:
    """The CPU's model name and widest vector extension, e.g. ``"AMD EPYC, AVX2"`` (Linux's ``/proc/cpuinfo``; else
    ``platform.processor()``): timings and wall-clock-capped runs depend on both."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                  "")
    return ", ".join(part for part in (name or platform.machine(), vector) if part)


def device_description(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {os.cpu_count()} logical cores"


def make_mirror(kind: str, path: Path, name: str) -> Any:
    """A TorchRL logger writing under ``path`` (``csv``, ``tensorboard``, or ``wandb`` offline), or ``None``."""
    if kind == "none":
        return None
    from torchrl.record.loggers import CSVLogger, TensorboardLogger, WandbLogger

    try:
        if kind == "csv":
            return CSVLogger(name, log_dir=str(path))
        if kind == "tensorboard":
            return TensorboardLogger(name, log_dir=str(path))
        if kind == "wandb":
            return WandbLogger(name, offline=True, save_dir=str(path), project="research")
    except ImportError as err:
        raise ValueError(f"logger={kind!r} needs its package ({err}); install it or use logger='csv'") from None
    raise ValueError(f"logger must be one of 'none', 'csv', 'tensorboard', 'wandb', got {kind!r}")


class RunWriter:
    """Writes one run's files. The harness calls :meth:`log` as it goes and :meth:`finish` once at the end."""

    def __init__(self, path: str | os.PathLike, algo: str, config: Any, experiment: str = "", label: str = "") -> None:
        """``algo`` is the registered trainer; ``label`` the name the run is reported under when it differs (a variant
        table of an experiment file, e.g. ``[bptt_squash]`` with ``algo = "bptt"``): both files then hold
        ``"label"``, which the scripts group by."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        stale = self.path / SUMMARY
        self.finished_before = stale.exists()
        """Whether the directory held a finished run: the harness then trains again from scratch, not from the run's
        final checkpoint (rerunning a finished run means training it again, e.g. after a code change)."""
        if stale.exists():
            stale.unlink()  # a run being (re)written is unfinished until finish() writes it again
        self.algo = algo
        self.label = {"label": label} if label and label != algo else {}
        self.seed = getattr(config, "seed", None)
        self.config_hash = config_hash(config)
        self.git_commit = git_commit()
        self.rows: list[dict[str, Any]] = []
        self.mirror = make_mirror(getattr(config, "logger", "none"), self.path / "logs",
                                  f"{experiment or 'run'}-{algo}-seed_{self.seed}")
        atomic_write_json(self.path / CONFIG, {
            "algo": algo,
            **self.label,
            "experiment": experiment,
            "seed": self.seed,
            "config": to_dict(config),
            "config_hash": self.config_hash,
            "git_commit": self.git_commit,
            "versions": library_versions(),
            "device": device_description(getattr(config, "device", "cpu")),
        })

    def log(self, row: Mapping[str, Any]) -> None:
        """Appends a row; it must hold ``iteration``, ``env_steps`` and ``wall_time_s``."""
        missing = [c for c in FIXED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"a metrics row needs {list(FIXED_COLUMNS)}; missing {missing}")
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.mirror is not None:
            step = int(row["env_steps"])
            for key, value in row.items():
                if key not in FIXED_COLUMNS and isinstance(value, (int, float)) and value == value:
                    self.mirror.log_scalar(key, float(value), step=step)

    def flush(self) -> None:
        atomic_write_text(self.path / METRICS, metrics_csv(self.rows))

    @property
    def checkpoint_path(self) -> Path:
        """Where the harness keeps the run's checkpoint (``<run dir>/checkpoint.pt``)."""
        return self.path / CHECKPOINT

    def state_dict(self) -> dict[str, Any]:
        """The rows logged so far (what a checkpoint keeps of the writer)."""
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues from a checkpoint's rows: ``metrics.csv`` is rewritten to hold exactly those (the rows logged
        after the checkpoint by the process that was stopped are dropped; their iterations run again). A mirror
        logger keeps what it was sent (it may see those iterations twice)."""
        self.rows = [dict(row) for row in state["rows"]]
        self.flush()

    def finish(self, policy: torch.nn.Module, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Writes ``metrics.csv``, ``policy.pt`` and, last, ``summary.json`` (with the config hash); returns it."""
        from research.policies import save_policy

        self.flush()
        save_policy(policy, self.path / POLICY)
        rest = {k: v for k, v in summary.items() if k not in ("algo", "seed", "config_hash")}
        summary = {"algo": self.algo, **self.label, "seed": self.seed, **rest, "config_hash": self.config_hash}
        atomic_write_json(self.path / SUMMARY, summary)
        return summary
