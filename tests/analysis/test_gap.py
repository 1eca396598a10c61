"""The gap decomposition (research/analysis/gap.py): parts that add up, a distilled student that follows its teacher,
and a discounted-DP part that vanishes at the protocol's discount. Tiny grids and budgets (the whole file < 20 s)."""

import math

import pytest
import torch

from research.analysis.gap import (
    PARTS,
    DistillConfig,
    decompose,
    defined_sum,
    distill,
    dp_returns,
    learner_rows,
    objective_discount,
    observation_teacher,
    protocol_return,
    solve_discounted,
    visited_states,
)
from research.analysis.optimal import resolve_physics
from research.config import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: a tiny MLP fit on a shared machine is many times slower with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("chain", [(-137.3, -137.2, -141.9, -150.3, -146.9), (-1.0e3 / 3, -200.1, -200.1, -180.7,
                                                                             -190.123456789)])
def test_parts_add_up_to_the_gap(chain):
    parts = decompose(*chain)
    assert parts["gap"] == chain[0] - chain[-1]
    assert math.isclose(defined_sum(parts), parts["gap"], rel_tol=0, abs_tol=1e-9)
    assert parts["representation"] == chain[2] - chain[3]  # a part keeps its sign (negative here in the 2nd chain)


def test_undefined_objective_part_is_skipped_and_the_rest_still_adds_up():
    parts = decompose(-489.0, -576.0, None, -600.0, -575.0)
    assert math.isnan(parts["objective"])
    assert math.isclose(defined_sum(parts), parts["gap"], abs_tol=1e-9)
    assert parts["optimisation"] < 0  # the learner beat the distilled reference: reported as a negative part


def test_discounted_part_vanishes_at_the_protocols_discount():
    physics = resolve_physics("default")
    dp = dp_returns(physics, [1.0, 0.9], grid=(31, 31), actions=5, episodes=64)
    assert dp.discounted[1.0] == dp.stationary
    # the discounted path run at discount 1 is the undiscounted DP: the same stationary policy, the same return
    same = solve_discounted(physics, 1.0, grid=(31, 31), actions=5).policy
    assert protocol_return(same, physics, 64) == dp.stationary
    parts = decompose(dp.optimum, dp.stationary, dp.discounted[1.0], -150.0, -160.0)
    assert parts["objective"] == 0.0
    assert dp.discounted[0.9] < dp.stationary  # a short-sighted objective costs return on the protocol


@pytest.mark.slow
def test_distilled_student_reproduces_the_teacher_on_visited_states():
    physics = resolve_physics("default")
    dp = dp_returns(physics, [1.0], grid=(31, 31), actions=5, episodes=64)
    teacher = observation_teacher(physics, dp.policies[1.0])
    result = distill(physics, teacher, DistillConfig(rounds=1, starts=32, steps=150, batch=512, lr=5e-3), episodes=64)
    states = visited_states(physics, lambda s: result.policy(physics.observe(s)), 32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        error = (result.policy(physics.observe(states)) - teacher(states)).abs() / physics.max_action
    # a bang-bang teacher (5 torques): the student matches it closely on most visited states, misses at switches
    assert float(error.median()) < 0.05 and float((error < 0.25).float().mean()) > 0.7
    assert result.mae < 0.3 and float(error.mean()) < 0.3
    assert result.returns[-1] > -400  # it swings up (never pushing scores about -1200)


def test_discount_is_read_from_the_last_stage_of_a_config():
    assert objective_discount({"discount": 0.98, "finetune": {"discount": 1.0}}) == 1.0
    assert objective_discount({"gamma": 0.99}) == 0.99
    assert objective_discount({"lr": 1e-3}) is None


def test_learner_rows_carry_each_runs_discount(tmp_path):
    root = tmp_path / "exp"
    for algo, config in (("bptt", {"discount": 0.98}), ("sac", {"gamma": 0.99})):
        (root / algo / "seed_0").mkdir(parents=True)
        (root / algo / "seed_0" / "config.json").write_text(__import__("json").dumps({"config": config}))
    (root / "experiment.json").write_text('{"runs": [{"algo": "bptt", "path": "bptt/seed_0"},'
                                          ' {"algo": "sac", "path": "sac/seed_0"}]}')
    (root / "summary.csv").write_text("physics,algo,n_seeds,final_return_mean,final_return_median\n"
                                      "default,bptt,1,-147.0,-147.0\ndefault,sac,1,-150.0,-150.0\n")
    rows = {row["algo"]: row for row in learner_rows(root)}
    assert rows["bptt"]["discount"] == 0.98 and rows["sac"]["discount"] == 0.99
    assert rows["sac"]["learner_return"] == -150.0


def test_bad_distill_config_names_the_field():
    with pytest.raises(ConfigError, match="distill.steps"):
        DistillConfig(steps=0)
    with pytest.raises(ConfigError, match="discount"):
        solve_discounted("default", 0.0, grid=(5, 5), actions=3)


def test_parts_are_the_documented_chain():
    assert PARTS == ("stationarity", "objective", "representation", "optimisation")
