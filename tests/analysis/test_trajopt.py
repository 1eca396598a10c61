"""The per-start trajectory-optimisation reference (research/analysis/trajopt.py) on tiny budgets: a few starts, a
short horizon, a few Adam steps."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from research.analysis.trajopt import (
    STABILISERS,
    LQRFeedback,
    feedback_of,
    main,
    play,
    reference_controller_of,
    restart_kinds,
    rollout_actions,
    trajopt_reference,
)
from research.evaluation import evaluation_params, evaluation_states
from research.systems import SYSTEMS, get_system

HORIZON = 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cartpole():
    torch.manual_seed(0)
    return trajopt_reference("cartpole", num_episodes=4, restarts=3, iterations=6, lr=0.15, horizon=HORIZON,
                             quiet=True)


def test_optimised_return_is_never_below_its_warm_starts(cartpole):
    r = cartpole
    assert r.result.kinds == ["feedback", "feedback+0.3", "feedback+0.1"]
    assert r.warm_rollout.shape == (3, 4)
    assert (r.trajopt >= r.warm_rollout.max(0).values).all()
    assert (r.best >= torch.maximum(r.trajopt, r.controller)).all()
    assert (r.best == torch.where(r.controller > r.trajopt, r.controller, r.trajopt)).all()
    # the budget is tiny, but the stabilised restarts still improve on the controller here
    assert r.trajopt.mean() > r.controller.mean()


def test_final_rollout_in_the_exact_physics_reproduces_the_optimiser(cartpole):
    r = cartpole
    system = get_system("cartpole")
    params = evaluation_params(system, 4)
    state = evaluation_states(4, physics=system, params=params)
    assert r.result.actions.shape == (4, HORIZON, 1) and r.result.actions.dtype == torch.float32
    assert r.result.actions.abs().max() <= system.max_action
    returns, final, rewards = rollout_actions(system, state, r.result.actions, params)
    assert torch.equal(returns, r.result.returns)  # the optimiser's own number, bit for bit
    assert torch.equal(returns, r.trajopt) and r.optimiser_mismatch == 0.0
    assert rewards.shape == (4, HORIZON)
    torch.testing.assert_close(r.trajopt_float64, r.trajopt.double(), rtol=1e-4, atol=1e-3)


def test_feedback_restart_at_zero_replays_the_reference_controller():
    """A feedback restart with a zero residual is the controller itself (to U_CLAMP's rounding of saturated
    actions), and its actions replayed open-loop are the same rollout."""
    system = get_system("cartpole")
    state = evaluation_states(3, physics=system)
    controller = reference_controller_of(system)
    feedback, text = feedback_of(system, controller)
    assert text == "reference controller"
    rows = torch.ones(3, 1)
    rewards, final, actions = play(system, state, torch.zeros(3, HORIZON, 1), None, None, feedback, rows)
    from research.analysis.trajopt import controller_rollout

    ctrl_returns, _, ctrl_actions, states = controller_rollout(system, controller, state, HORIZON)
    assert states.shape == (3, HORIZON, 4)
    torch.testing.assert_close(actions, ctrl_actions, rtol=0, atol=1e-3)
    torch.testing.assert_close(rewards.sum(-1), ctrl_returns, rtol=1e-4, atol=1e-2)
    assert torch.equal(rollout_actions(system, state, actions)[0], rewards.sum(-1))


def test_restart_kinds_follow_what_the_system_offers():
    assert restart_kinds(5, True, True) == ["feedback", "feedback+0.3", "feedback+0.1", "feedback+1.0", "reference"]
    assert all(not k.startswith("feedback") for k in restart_kinds(6, True, False))
    assert restart_kinds(3, False, False)[0] == "random" and "reference" not in restart_kinds(8, False, False)


def test_a_system_without_a_controller_gets_open_loop_restarts():
    r = trajopt_reference("pendulum", num_episodes=3, restarts=2, iterations=3, horizon=20, quiet=True)
    assert r.settings["reference_controller"] is False and r.settings["feedback"] == "none"
    assert all(not k.startswith("feedback") for k in r.result.kinds)
    assert torch.isnan(r.controller).all() and torch.equal(r.best, r.trajopt)
    assert (r.trajopt >= r.warm_rollout.max(0).values).all()


@pytest.mark.skipif("acrobot" not in SYSTEMS, reason="the acrobot is not registered")
def test_acrobot_lqr_feedback_holds_the_upright():
    system = get_system("acrobot")
    feedback = STABILISERS["acrobot"]
    assert isinstance(feedback, LQRFeedback)
    assert feedback_of(system, reference_controller_of(system))[0] is feedback
    near = torch.tensor([[math.pi + 0.003, -0.003, 0.0, 0.0], [3 * math.pi - 0.002, 0.002, 0.01, 0.0]])
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(feedback(system, far), torch.zeros(1, 1))
    _, final, _ = play(system, near, torch.zeros(2, 25, 1), None, None, feedback, torch.ones(2, 1))
    assert system.is_success(final).all()


def test_cli_writes_summary_and_returns(tmp_path, capsys):
    out = tmp_path / "cartpole"
    assert main(["--system", "cartpole", "--out", str(out), "--episodes", "3", "--restarts", "2", "--iterations",
                 "2", "--horizon", "20", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("return_mean", "return_median", "return_iqm", "return_min", "success_rate", "episodes"):
        assert key in summary["reference"] and key in summary["trajopt"] and key in summary["controller"]
    assert summary["reference"]["episodes"] == 3 and summary["method"] == "trajopt"
    assert summary["settings"]["iterations"] == 2 and summary["settings"]["horizon"] == 20
    assert "git_commit" in summary and summary["wall_clock_s"] > 0
    assert "research/analysis/trajopt.py" in summary["code_sha256"]
    with (out / "returns.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        best = float(row["best_return"])
        assert best == pytest.approx(max(float(row["controller_return"]), float(row["trajopt_return"])))
    assert "cartpole: reference mean" in capsys.readouterr().out
    # the report shows a row for the system beside the pendulum's DP rows
    for name in ("summary.csv", "config.json"):
        shutil.copy(ROOT / "results" / "optimal" / name, tmp_path / name)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "optimal_report.py"), str(tmp_path)], check=True,
                   capture_output=True)
    report = (tmp_path / "REPORT.md").read_text()
    assert "per-start trajectory optimisation" in report and "| `cartpole` | best of trajopt" in report
    assert "make optimal-systems" in report


def test_cli_refuses_an_unknown_system(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--system", "nope", "--out", str(tmp_path)])
    assert info.value.code == 2 and "unknown system" in capsys.readouterr().err
