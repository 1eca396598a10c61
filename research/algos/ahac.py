"""Contact-aware SHAC, in the spirit of AHAC (Georgiev et al., ICML 2024, "Adaptive Horizon Actor-Critic for policy
learning in contact-rich differentiable simulation"): the backpropagated window is cut where the dynamics turn stiff.

SHAC (:mod:`research.algos.shac`) backpropagates through every step of its ``K``-step window; across a contact (the
pendulum's wall, the cart-pole's track limit) one step's Jacobian is stiff or discontinuous, and chained with the
smooth steps around it the window's gradient turns large and erratic (SHAC fails 3 of 5 seeds on the hard ``wall``
preset). Here the physics says where the contacts are (:meth:`research.systems.System.contact`, asked each step by
``fused_rollout(cut_at_contact=...)``) and the gradient is cut there, so each gradient path spans smooth dynamics only:

- the state after a contact step is detached (nothing after the contact reaches anything before it);
- the actor objective's piece that the contact interrupts ends there and is bootstrapped with the target critic,
  exactly as SHAC ends a piece at an episode's truncation (:func:`research.algos.shac.actor_loss` with the cuts added
  to the truncations); the critic's TD(lambda) targets are SHAC's (the episode goes on through a contact, so the
  recursion does too).

``cut = "before"`` (AHAC's choice, the default): a contact at step ``t`` ends the piece after step ``t - 1`` with
the value of ``s_t``, the last state reached through smooth dynamics, and the contact step itself runs from the
detached ``s_t``: no gradient path crosses the contact at all (the contact step's action keeps the gradient of its
own torque cost only). ``cut = "after"``: the piece ends after the contact step with the value of ``s_{t+1}``,
differentiated through that one contact step (and no further), the way SHAC treats a truncation.

Of AHAC this implements the truncation at stiff contact with a critic bootstrap (the paper's "AHAC-1"-style
per-trajectory horizon), with the contact read from the simulator's own contact test rather than from a threshold
on the contact forces' Jacobian norm. Not implemented: AHAC's adaptive window length (the dual-ascent update of the
horizon ``H`` against a stiffness budget), its double critic, and its learned exploration noise; the window stays
``K`` and only the gradient paths inside it get shorter. Logged per window: ``train/contact_fraction`` (steps that
touched a contact), ``train/cut_fraction`` (steps after which a piece ended at a contact) and
``train/effective_horizon`` (the mean number of steps a piece of the actor objective spans: ``N * K`` over the
number of pieces, split at truncations, cuts and the window's end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from research import harness
from research.algos.shac import SHAC, SHACConfig
from research.config import ConfigError
from research.harness import Writer
from research.rollout import Rollout, fused_rollout


@dataclass
class AHACConfig(SHACConfig):
    """SHAC with the actor's gradient cut at contacts (AHAC-style truncation at stiff dynamics)."""

    cut: Literal["before", "after"] = "before"
    """Where a contact ends the gradient path: 'before' the contact step (bootstrap with the value of the last state
    reached through smooth dynamics; no gradient crosses the contact; AHAC's choice) or 'after' it (bootstrap with the
    value of the state after the contact, differentiated through that one step)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cut not in ("before", "after"):
            raise ConfigError(f"cut must be 'before' or 'after', got {self.cut!r}")


class AHAC(SHAC):
    """SHAC's state and step (:class:`research.algos.shac.SHAC`) with the window's gradient cut at contacts."""

    config: AHACConfig

    def window_rollout(self) -> Rollout:
        """SHAC's window, with ``system.contact`` asked each step and the gradient cut at contacts
        (``rollout.contact [N, K]``)."""
        config = self.config
        return fused_rollout(self.behaviour, self.carried, self.params, config.window,
                             episode_length=config.env.episode_length, generator=self.run.generator,
                             keep_trajectory=True, system=self.system, cut_at_contact=config.cut)

    def piece_ends(self, rollout: Rollout) -> Tensor:
        """``[N, K]`` bool: SHAC's truncations plus the cuts (:func:`contact_cuts`)."""
        return rollout.truncated | contact_cuts(rollout.contact, self.config.cut)

    def window_metrics(self, rollout: Rollout, ends: Tensor) -> dict[str, Tensor | float]:
        cuts = contact_cuts(rollout.contact, self.config.cut)
        pieces = ends.clone()
        pieces[..., -1] = True
        return {"train/contact_fraction": rollout.contact.float().mean(), "train/cut_fraction": cuts.float().mean(),
                "train/effective_horizon": ends.numel() / pieces.sum()}


def contact_cuts(contact: Tensor, cut: str) -> Tensor:
    """``[N, K]`` bool: the steps after which the actor objective's piece ends at a contact.

    ``contact [N, K]``: the step touched a contact. ``"after"``: the contact steps themselves. ``"before"``: the
    step before each contact step (a contact at the window's first step cuts nothing more: the window's start is
    already cut).
    """
    if cut == "after":
        return contact
    cuts = contact.new_zeros(contact.shape)
    cuts[..., :-1] = contact[..., 1:]
    return cuts


def train_ahac(config: AHACConfig, writer: Writer | None = None, quiet: bool = False) -> dict:
    """Trains a policy with contact-aware SHAC; returns the summary (and writes the run files through ``writer``)."""
    return harness.train(config, AHAC, writer, quiet, name="ahac")
