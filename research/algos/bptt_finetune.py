"""BPTT, then fine-tuned on the evaluation's own objective: a continuation from the short discounted problem.

Default BPTT (:mod:`research.algos.bptt`) optimises the first 64 steps of an episode, discounted by 0.98. Its
optimum is easy to reach from a random policy, but it is not the evaluation's objective (the undiscounted return of
200 steps), and a 64-step window ends before the slowest swing-ups, from near hanging down, are over. Optimising the
200-step undiscounted return from scratch lands in poor local optima (``experiments/bptt_undiscounted.toml``). This
algorithm does both in one run: ``iterations`` updates of BPTT as configured, then ``finetune.iterations`` updates of
full-horizon BPTT with the stage's batch, horizon and discount and a fresh Adam whose learning rate decays by a
cosine from ``finetune.lr`` to 0. Env steps and seconds of both stages count in the run's budget.

The stage's defaults are the best of those tried on default physics (seed 0, after the 1000 default BPTT updates
that end at -147.0): at H = 200 undiscounted, lr 1e-3 (B = 256, 500 updates) fell to -450 and lr 3e-4 to -200 (the
long-horizon gradient is mostly variance, and Adam's step has the learning rate's size whatever the gradient's), lr
1e-4 with B = 512 for 300 updates rose to -145.6; discount 0.995 with lr 3e-4 reached -146.0, and H = 128 at
discount 0.98, -146.7.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from research import harness
from research.algos.bptt import BPTT, BPTTConfig
from research.config import ConfigError
from research.harness import RunContext, Writer, make_scheduler


@dataclass
class FinetuneConfig:
    """The ``[bptt_finetune.finetune]`` table: the second stage."""

    iterations: int = 300
    """Updates of the stage."""
    num_envs: int = 512
    """Pendulums per update."""
    horizon: int = 200
    """Steps per rollout (200: the evaluation's episode)."""
    discount: float = 1.0
    """Discount inside a rollout (1: the evaluation's undiscounted return)."""
    lr: float = 1e-4
    """Adam learning rate at the start of the stage, decayed by a cosine to 0 over the stage."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.num_envs <= 0 or self.horizon <= 0:
            raise ConfigError(f"finetune.iterations must be >= 0 and finetune.num_envs, finetune.horizon > 0, got "
                              f"{self.iterations}, {self.num_envs}, {self.horizon}")
        if not 0.0 < self.discount <= 1.0 or self.lr <= 0:
            raise ConfigError(f"finetune.discount must be in (0, 1] and finetune.lr > 0, got {self.discount}, "
                              f"{self.lr}")


@dataclass
class BPTTFinetuneConfig(BPTTConfig):
    """BPTT's config and the fine-tuning stage."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The second stage (after ``iterations`` updates of BPTT)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune.iterations and self.rollout == "env":
            raise ConfigError("finetune.iterations > 0 needs rollout='fused'")


class BPTTFinetune(BPTT):
    """:class:`research.algos.bptt.BPTT` that switches to the fine-tuning stage after ``config.iterations``."""

    def __init__(self, config: BPTTFinetuneConfig, run: RunContext) -> None:
        super().__init__(config, run)
        self.iterations = config.iterations + config.finetune.iterations
        self.stage = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage": self.stage}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint of the second stage first switches to it (its batch, horizon and fresh Adam), then loads."""
        if state["stage"] and not self.stage:
            self.start_finetuning()
        super().load_state_dict(state)

    def start_finetuning(self) -> None:
        """The stage's batch (fresh parameters for it), horizon and discount, full-horizon rollouts, a fresh Adam."""
        stage, run = self.config.finetune, self.run
        self.stage = 1
        self.horizon, self.discount, self.full_horizon = stage.horizon, stage.discount, True
        self.batch = (stage.num_envs,)
        self.params = self.system.params(self.batch, run.generator, run.device, run.dtype)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=stage.lr)
        self.scheduler = make_scheduler(self.optimizer, "cosine", stage.iterations, 0.0)

    def step(self, iteration: int) -> dict:
        if iteration == self.config.iterations + 1:
            self.start_finetuning()
        return {**super().step(iteration), "train/stage": float(iteration > self.config.iterations)}


def train_bptt_finetune(config: BPTTFinetuneConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy by BPTT and then fine-tunes it (see the module docstring); returns the summary."""
    return harness.train(config, BPTTFinetune, writer, quiet, name="bptt_finetune")
