"""The gap decomposition (research/analysis/gap.py): parts that add up, a distilled student that follows its teacher,
a value-based student that beats it through a loss differentiable end to end, and a discounted-DP part that vanishes
at the protocol's discount. Tiny grids and budgets."""

import csv
import io
import math

import pytest
import torch

from research.analysis.gap import (
    COLUMNS,
    PARTS,
    DistillConfig,
    GridValue,
    ValueDistillConfig,
    decompose,
    defined_sum,
    distill,
    dp_returns,
    dp_value,
    learner_rows,
    objective_discount,
    observation_teacher,
    pendulum_gap,
    protocol_return,
    reused_gap,
    solve_discounted,
    to_csv,
    value_distill,
    value_loss,
    visited_states,
)
from research.analysis.optimal import resolve_physics
from research.config import ConfigError
from research.policies import make_policy


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


def test_an_experiment_not_run_yet_gives_no_learners_and_says_so(tmp_path, caplog):
    assert learner_rows(tmp_path / "not_run") == []
    assert "has no summary.csv" in caplog.text


def test_bad_distill_config_names_the_field():
    with pytest.raises(ConfigError, match="distill.steps"):
        DistillConfig(steps=0)
    with pytest.raises(ConfigError, match="value_distill.horizons"):
        ValueDistillConfig(horizons=(1, 0))
    with pytest.raises(ConfigError, match="value_distill.lr"):
        ValueDistillConfig(lr=0.0)
    with pytest.raises(ConfigError, match="discount"):
        solve_discounted("default", 0.0, grid=(5, 5), actions=3)


def test_parts_are_the_documented_chain():
    assert PARTS == ("stationarity", "objective", "representation", "optimisation")


@pytest.fixture(scope="module")
def small_dp():
    """The default physics' DP at discount 0.98 on a 41 x 41 grid with 5 torques (about a second)."""
    torch.set_num_threads(1)
    physics = resolve_physics("default")
    return physics, dp_returns(physics, [1.0, 0.98], grid=(41, 41), actions=5, episodes=128)


def test_grid_value_interpolates_the_table_and_wraps_the_angle(small_dp):
    physics, dp = small_dp
    value = dp_value(dp.policies[0.98])
    solution = dp.policies[0.98].solution
    assert isinstance(value, GridValue) and value.table is solution.value(0)
    i, j = 7, 23
    node = torch.stack((solution.grid.th[i], solution.grid.thdot[j]))[None]
    assert torch.allclose(value(node), solution.value(0)[i, j].reshape(1))
    states = physics.initial_state((64,), generator=torch.Generator().manual_seed(3))
    turned = states + torch.tensor([2 * math.pi, 0.0])  # the same physical states one turn on
    assert torch.allclose(value(states), value(turned), atol=1e-3)
    assert float(value(torch.zeros(1, 2))) > float(value(torch.tensor([[math.pi, 0.0]]))) + 10  # upright beats hanging


def test_value_loss_is_differentiable_end_to_end(small_dp):
    physics, dp = small_dp
    value, teacher = dp_value(dp.policies[0.98]), dp.policies[0.98]
    torch.manual_seed(0)
    student = make_policy((16, 16), "tanh", physics.max_action)
    states = physics.initial_state((32,), generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    for horizon in (1, 4):
        student.zero_grad()
        states.grad = None
        loss = value_loss(physics, student, value, states, horizon, 0.98)
        loss.backward()
        grads = [p.grad for p in student.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0  # through physics and the interpolated value
        assert float(states.grad.abs().sum()) > 0  # the value table's interpolation carries a gradient in the state
    with torch.no_grad():  # K = 1 is -(r + g V(s_1)) of the step, here at the DP's own greedy policy
        start = states.detach()
        next_state, reward = physics.step(start, teacher(physics.observe(start)))
        expected = -(reward + 0.98 * value(next_state)).mean()
        assert torch.allclose(value_loss(physics, teacher, value, start, 1, 0.98), expected)
        # K steps of the teacher roll its own value forward: the K-step loss stays within the grid's error of K = 1
        assert abs(float(value_loss(physics, teacher, value, start, 8, 0.98)) - float(expected)) < 5.0


@pytest.mark.slow
def test_value_based_student_scores_at_least_as_well_as_the_mse_one(small_dp):
    physics, dp = small_dp
    teacher = observation_teacher(physics, dp.policies[0.98])
    mse = distill(physics, teacher, DistillConfig(rounds=1, starts=16, steps=60, batch=256, lr=5e-3), episodes=128)
    before = [p.detach().clone() for p in mse.policy.parameters()]
    config = ValueDistillConfig(horizons=(1, 16), rounds=0, starts=32, steps=40, batch=64, lr=3e-3)
    valued = value_distill(physics, dp_value(dp.policies[0.98]), 0.98, mse.policy, config, episodes=128,
                           warm_return=mse.returns[-1])
    assert all(torch.equal(a, b) for a, b in zip(before, mse.policy.parameters(), strict=True))  # warm start untouched
    assert set(valued.by_horizon) == {1, 16} and valued.returns == valued.by_horizon[valued.horizon]
    assert valued.returns[-1] == max(r[-1] for r in valued.by_horizon.values())  # the best K is kept
    # a tiny MSE budget leaves a student that does not swing up; 80 steps on the DP's objective make one that does
    assert valued.returns[-1] >= mse.returns[-1]
    assert valued.returns[-1] > -300 > mse.returns[-1]


def test_learners_added_later_reuse_the_reference_rows():
    """--reuse-references: a learner decomposed against summary.csv's reference rows and dp.csv's grids (no DP, no
    distillation) gets the parts a full run gives it; a discount without reference rows is a one-line error."""
    learner = {"experiment": "exp", "physics": "default", "algo": "bptt", "n_seeds": 3, "learner_return": -160.5,
               "learner_median": -158.0, "discount": 0.98}
    rows, dp = pendulum_gap("default", [learner], grid=31, coarse=21, actions=5, episodes=64, quiet=True,
                            distill_config=DistillConfig(rounds=1, starts=8, steps=5, batch=128))

    def through_csv(table, columns):
        return list(csv.DictReader(io.StringIO(to_csv(table, columns))))

    summary = through_csv(rows, COLUMNS)
    dp_csv = through_csv(dp, list(dict.fromkeys(k for row in dp for k in row)))
    again = reused_gap("default", [learner], summary, dp_csv)
    references = [row for row in summary if row["role"] == "reference"]
    assert again[:len(references)] == references  # the reference rows stand as they were
    full, reused = rows[-1], again[-1]
    assert reused["role"] == "learner" and reused["reference"] == full["reference"]
    for key in ("gap", *PARTS, *(f"{p}_dp_error" for p in PARTS), "distilled", "optimum", "stationary"):
        assert reused[key] == full[key], key  # floats survive the CSV exactly (repr)
    with pytest.raises(ValueError, match="discount 0.95.*PHYSICS=default"):
        reused_gap("default", [{**learner, "discount": 0.95}], summary, dp_csv)
    with pytest.raises(ValueError, match="no reference rows for 'wall'"):
        reused_gap("wall", [], summary, dp_csv)
