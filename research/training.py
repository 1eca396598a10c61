"""Pieces every trainer shares: device and dtype resolution, budget accounting, evaluation schedule, the guard that
keeps non-finite updates away from the parameters, and the progress bar."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from research.evaluation import evaluate_policy

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NonFiniteUpdateError(RuntimeError):
    """Raised after too many consecutive updates had a non-finite loss or gradient."""


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available; use device='cpu'")
    return device


class SkipGuard:
    """Checks a loss and gradients before an optimizer step; skips (and counts) non-finite updates.

    Call :meth:`ok` after ``backward()`` and before ``optimizer.step()``: it returns ``False`` (and zeroes the
    gradients) when the loss or any gradient is NaN/inf. After ``max_consecutive`` skips in a row it raises
    :class:`NonFiniteUpdateError`.
    """

    def __init__(self, max_consecutive: int, name: str = "update") -> None:
        self.max_consecutive = max_consecutive
        self.name = name
        self.skipped = 0
        self.consecutive = 0

    def ok(self, loss: torch.Tensor, parameters: Iterable[nn.Parameter]) -> bool:
        grads = [p.grad for p in parameters if p.grad is not None]
        finite = torch.isfinite(loss).all()
        if grads:
            finite = finite & torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            self.consecutive = 0
            return True
        for p in parameters:
            p.grad = None
        self.skipped += 1
        self.consecutive += 1
        log.warning("skipped %s: non-finite loss or gradient (%d in a row)", self.name, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdateError(
                f"{self.consecutive} consecutive {self.name}s had a non-finite loss or gradient "
                f"(max_consecutive_skips={self.max_consecutive}); the parameters were left untouched. "
                "Lower the learning rate, tighten gradient clipping or shorten the horizon."
            )
        return False


class Budget:
    """Environment steps and wall-clock since the run started, counted the same way for every method.

    ``wall_time_s`` is training time: the seconds spent inside the shared evaluator (timed by :class:`Evaluator`)
    are kept apart in ``eval_time_s``, so a method that is evaluated more often, or whose policy network is larger,
    is not charged for it, and time-to-threshold does not depend on the evaluation interval.
    """

    def __init__(self, max_wall_time_s: float = 0.0) -> None:
        self.start = time.perf_counter()
        self.env_steps = 0
        self.eval_time_s = 0.0
        self.max_wall_time_s = max_wall_time_s

    def add_steps(self, n: int) -> None:
        self.env_steps += int(n)

    @property
    def wall_time_s(self) -> float:
        """Seconds since the run started, less the time spent evaluating."""
        return time.perf_counter() - self.start - self.eval_time_s

    def out_of_time(self) -> bool:
        return self.max_wall_time_s > 0 and self.wall_time_s >= self.max_wall_time_s


class Evaluator:
    """Runs the shared evaluator every ``interval_env_steps`` and remembers the latest score.

    With a ``budget``, the time each evaluation takes is added to ``budget.eval_time_s`` (and so left out of its
    training wall-clock).
    """

    def __init__(self, eval_config: Any, device: torch.device, dtype: torch.dtype, budget: Budget | None = None) -> None:
        self.config = eval_config
        self.device = device
        self.dtype = dtype
        self.budget = budget
        self.next_at = 0
        self.latest: dict[str, float] | None = None

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next_at

    def __call__(self, policy: nn.Module, env_steps: int) -> dict[str, float]:
        start = time.perf_counter()
        self.latest = evaluate_policy(
            policy, self.config.episodes, self.config.seed, device=self.device, dtype=self.dtype
        )
        if self.budget is not None:
            self.budget.eval_time_s += time.perf_counter() - start
        interval = self.config.interval_env_steps
        self.next_at = (env_steps // interval + 1) * interval
        return self.latest

    @staticmethod
    def as_metrics(result: dict[str, float]) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in result.items() if k != "episodes"}


def log_evaluation(writer: Any, iteration: int, budget: Budget, evaluation: dict[str, float]) -> None:
    """Appends an evaluation row (budget so far and ``eval/...`` metrics) to ``writer`` and flushes ``metrics.csv``."""
    if writer is None:
        return
    writer.log({"iteration": iteration, "env_steps": budget.env_steps, "wall_time_s": budget.wall_time_s,
                "eval_time_s": budget.eval_time_s, **Evaluator.as_metrics(evaluation)})
    writer.flush()


def progress_bar(total: int, quiet: bool, unit: str, desc: str) -> tqdm:
    return tqdm(total=total, disable=quiet, unit=unit, desc=desc, dynamic_ncols=True, leave=False)


def describe(train_return: float | None, evaluation: dict[str, float] | None) -> dict[str, str]:
    """Short postfix for the progress bar."""
    out = {}
    if train_return is not None and math.isfinite(train_return):
        out["train"] = f"{train_return:.1f}"
    if evaluation is not None:
        out["eval"] = f"{evaluation['return_mean']:.1f}"
    return out
