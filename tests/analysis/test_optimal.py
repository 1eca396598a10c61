"""The DP yardstick (research/analysis/optimal.py) on coarse grids: interpolation, backups, tables, the greedy
rollout as a lower bound, refinement, checkpointing, the command line."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from research.analysis.optimal import (
    SUMMARY_COLUMNS,
    Backup,
    Solve,
    StateGrid,
    clairvoyant_returns,
    default_plan,
    evaluate_solution,
    evaluation_setup,
    gauss_hermite,
    main,
    run_plan,
    solve_optimal,
    summary_csv,
    zero_torque_return,
)
from research.envs.physics import PendulumParams, angle_normalize, pendulum_step
from research.envs.presets import PRESETS
from research.evaluation import evaluate_policy, evaluation_states
from research.policies import load_policy

EPISODES = 200  # of the 1000 evaluation states: enough to compare policies, fast
TRAINED = Path(__file__).resolve().parents[2] / "results" / "tune_race" / "default"  # the race's pendulum runs
REPORT_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "optimal_report.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the small backups here are many short kernels, which a second thread only slows down on a
    shared machine (tens of times over when the other core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coarse(one_thread):
    return solve_optimal("default", grid=(51, 51), actions=11)


def hand_controller(observation: torch.Tensor) -> torch.Tensor:
    """Energy pumping far from upright, a PD law near it: a sensible controller anyone could write."""
    th = torch.atan2(observation[..., 1], observation[..., 0])
    thdot = observation[..., 2]
    energy = thdot**2 / 6.0 + 5.0 * (torch.cos(th) - 1.0)  # per unit m l^2: 0 at rest upright, -10 hanging
    direction = torch.where(thdot >= 0, 1.0, -1.0)
    pump = torch.where(energy < 0, 2.0 * direction, torch.zeros_like(thdot))
    pd = torch.clamp(-8.0 * th - 1.5 * thdot, -2.0, 2.0)
    return torch.where(th.abs() < 0.6, pd, pump)[..., None]


def test_interpolation_is_exact_on_nodes_and_bilinear_between():
    for th_range in (None, (-2.0, 3.0)):
        grid = StateGrid.make(17, 9, 8.0, th_range, dtype=torch.float64)
        th, thdot = torch.meshgrid(grid.th, grid.thdot, indexing="ij")
        table = torch.randn(grid.shape, dtype=torch.float64)
        torch.testing.assert_close(grid.interpolate(table, th, thdot), table, atol=1e-12, rtol=0)
        # a function bilinear in (th, thdot) is reproduced exactly inside the cells
        linear = 3.0 * th - 2.0 * thdot + 0.5 * th * thdot
        probe_th = grid.th[0] + (grid.th[-1] - grid.th[0]) * torch.rand(100, dtype=torch.float64)
        probe_v = 16.0 * torch.rand(100, dtype=torch.float64) - 8.0
        expected = 3.0 * probe_th - 2.0 * probe_v + 0.5 * probe_th * probe_v
        torch.testing.assert_close(grid.interpolate(linear, probe_th, probe_v), expected, atol=1e-10, rtol=0)
    # periodic: th and th + 2 pi k read the same value; the seam between the last node and node 0 is linear
    grid = StateGrid.make(16, 5, 8.0, dtype=torch.float64)
    table = torch.randn(grid.shape, dtype=torch.float64)
    th = torch.tensor([0.3, -3.1, 3.1, math.pi - 1e-9], dtype=torch.float64)
    v = torch.tensor([0.0, 7.9, -8.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(grid.interpolate(table, th + 4 * math.pi, v), grid.interpolate(table, th, v))
    seam = grid.th[-1] + 0.25 * grid.th_step
    assert grid.interpolate(table, seam.view(1), torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(
        0.75 * table[-1, 2].item() + 0.25 * table[0, 2].item())


def test_backup_matches_a_brute_force_bellman_step():
    params = PendulumParams.default((), dtype=torch.float64)
    grid = StateGrid.make(12, 7, 8.0, dtype=torch.float64)
    torques = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)
    following = torch.randn(grid.shape, dtype=torch.float64)
    value, greedy = Backup(grid, torques, params)(following)
    for i in range(12):
        for j in range(7):
            q = []
            for u in torques:
                th, v, r = pendulum_step(grid.th[i], grid.thdot[j], u, params)
                q.append(r + grid.interpolate(following, th, v))
            q = torch.stack(q)
            assert value[i, j].item() == pytest.approx(q.max().item(), abs=1e-12)
            assert q[greedy[i, j].long()].item() == pytest.approx(q.max().item(), abs=1e-12)


def test_tables_have_the_grid_shape(coarse):
    assert coarse.th_grid.shape == (51,) and coarse.thdot_grid.shape == (51,)
    assert coarse.horizon == 200
    for t in (0, 1, 199):
        assert coarse.value(t).shape == (51, 51) and coarse.torque(t).shape == (51, 51)
        assert coarse.value(t).dtype == torch.float32
    assert torch.equal(coarse.value(200), torch.zeros(51, 51))
    assert set(coarse.torque(0).unique().tolist()) <= set(coarse.torques.tolist())
    # the last step only pays the torque: the greedy torque there is 0 everywhere
    assert torch.equal(coarse.torque(199), torch.zeros(51, 51))
    # more steps to go can only cost more: V_t <= V_{t+1} (rewards are <= 0)
    assert (coarse.value(0) <= coarse.value(100) + 1e-3).all() and (coarse.value(100) <= coarse.value(199)).all()
    with pytest.raises(ValueError, match="t must be"):
        coarse.value(201)
    with pytest.raises(ValueError, match="t must be"):
        coarse.torque(200)


def test_greedy_rollout_is_its_reported_return_and_the_evaluators(coarse):
    th, thdot = evaluation_states(EPISODES).unbind(-1)
    returns = coarse.rollout(th, thdot)
    stats = evaluate_solution(coarse, EPISODES)
    assert returns.shape == (EPISODES,)
    assert stats["return_mean"] == pytest.approx(returns.double().mean().item(), abs=1e-9)
    assert stats["return_min"] == pytest.approx(returns.min().item(), abs=1e-9)
    # the shared evaluator, fed the same policy from observations, scores it the same
    via_evaluator = evaluate_policy(coarse.time_varying_policy(), num_episodes=EPISODES)
    assert via_evaluator["return_mean"] == pytest.approx(stats["return_mean"], abs=1e-2)


def test_dp_beats_simple_controllers_on_the_same_states(coarse):
    dp = evaluate_solution(coarse, EPISODES)["return_mean"]
    zero = zero_torque_return(num_episodes=EPISODES)["return_mean"]
    hand = evaluate_policy(hand_controller, num_episodes=EPISODES)["return_mean"]
    stationary = evaluate_policy(coarse.policy, num_episodes=EPISODES)["return_mean"]
    assert zero < hand < dp and zero < -1000
    for algo in ("bptt", "ddpg_tuned"):  # the race's committed seed-0 policies (-156.5, -148.0 on all 1000 states)
        path = TRAINED / algo / "seed_0" / "policy.pt"
        if path.is_file():
            assert evaluate_policy(load_policy(path), num_episodes=EPISODES)["return_mean"] < dp
    assert stationary == pytest.approx(dp, abs=1.0)  # greedy w.r.t. V_1 at every step: nearly the same policy


def test_refining_the_grid_improves_the_return(coarse):
    th, thdot = evaluation_states(EPISODES).unbind(-1)
    coarser = solve_optimal("default", grid=(25, 25), actions=11).rollout(th, thdot).mean().item()
    finer = solve_optimal("default", grid=(101, 101), actions=11).rollout(th, thdot).mean().item()
    mid = coarse.rollout(th, thdot).mean().item()
    assert coarser <= mid + 0.05 and mid <= finer + 0.05
    assert finer > coarser + 1.0


def test_checkpointed_tables_are_recomputed_bit_for_bit(coarse):
    checkpointed = solve_optimal("default", grid=(51, 51), actions=11, checkpoint_every=14)
    assert checkpointed.checkpoint_every == 14
    for t in (0, 13, 14, 15, 57, 199, 200, 3):
        assert torch.equal(checkpointed.value(t), coarse.value(t))
    assert torch.equal(checkpointed.torque(150), coarse.torque(150))
    th, thdot = evaluation_states(50).unbind(-1)
    assert torch.equal(checkpointed.rollout(th, thdot), coarse.rollout(th, thdot))
    automatic = solve_optimal("default", grid=(51, 51), actions=11, memory_mb=0.1)
    assert automatic.checkpoint_every == 15


def test_refined_torques_never_lower_the_greedy_q(coarse):
    th, thdot = evaluation_states(64).unbind(-1)
    plain, refined = coarse.greedy(10, th, thdot), coarse.greedy(10, th, thdot, refine=2)
    q = lambda u: coarse.q_values(10, th, thdot, u[:, None])[:, 0]  # noqa: E731
    assert (q(refined) >= q(plain) - 1e-5).all()
    assert refined.abs().max() <= 2.0


def test_every_preset_beats_zero_torque_and_the_evaluator_agrees():
    """On every preset, the greedy policy beats never pushing, and the shared evaluator, fed the same time-varying
    policy from observations, scores what :func:`evaluate_solution` reports (same states, draws and noise)."""
    for name in PRESETS:
        solution = solve_optimal(name, grid=(31, 31), actions=5, noise_nodes=3)
        th, thdot, params, noise = evaluation_setup(name, 50)
        has_wall = math.isfinite(float(params.wall_angle[0]))
        assert solution.grid.periodic != has_wall and (noise is not None) == (name == "noisy")
        if has_wall:
            assert (th >= solution.grid.th_lo - 1e-6).all() and (th <= solution.grid.th[-1] + 1e-6).all()
        stats = evaluate_solution(solution, 50)
        assert stats["return_mean"] > zero_torque_return(name, 50)["return_mean"], name
        if name != "wall_soft":  # an observation cannot tell a soft wall's penetration from the other face
            via_evaluator = evaluate_policy(solution.time_varying_policy(), num_episodes=50, physics=name)
            assert via_evaluator["return_mean"] == pytest.approx(stats["return_mean"], abs=0.05), name


def test_clairvoyant_policy_knows_each_draw():
    returns, th, thdot, seconds = clairvoyant_returns("randomized", grid=(31, 31), actions=5, bins=2,
                                                      num_episodes=40)
    assert returns.shape == th.shape == (40,) and seconds > 0
    nominal = evaluate_solution(solve_optimal("randomized", grid=(31, 31), actions=5), 40)["return_mean"]
    assert returns.double().mean().item() > nominal  # told the parameters, it does better than one nominal policy


def test_default_plan_and_the_optimum_rows(tmp_path):
    plan = default_plan()
    assert {item.physics for item in plan} == set(PRESETS)
    assert [item.grid[0] for item in plan if item.physics == "default" and item.role == "refinement"] == [
        101, 201, 401, 801, 1201]
    assert all(item.noise_nodes == 7 for item in plan if item.physics == "noisy" and item.role == "refinement")
    rows = run_plan([Solve("randomized", (15, 15), 5), Solve("randomized", (15, 15), 5, role="clairvoyant", bins=2),
                     Solve("randomized", (21, 21), 5, role="param_bins", bins=3),
                     Solve("randomized", (15, 15), 5, role="per_draw", draws=4),
                     Solve("noisy", (15, 15), 5, noise_nodes=3), Solve("noisy", (21, 21), 5, noise_nodes=3)],
                    num_episodes=20, quiet=True)
    assert [r["role"] for r in rows] == ["refinement", "clairvoyant", "param_bins", "best_of", "per_draw",
                                         "refinement", "refinement"]
    assert [r["bound"] for r in rows] == ["lower"] + ["clairvoyant"] * 4 + ["lower"] * 2
    assert [r["noise_nodes"] for r in rows] == [0, 0, 0, 0, 0, 3, 3]
    best_of, per_draw = rows[3], rows[4]
    assert best_of["return_mean"] >= max(rows[1]["return_mean"], rows[2]["return_mean"])
    assert best_of["grid"] == "best of 2" and per_draw["episodes"] == 4
    assert not math.isnan(per_draw["best_of_same_episodes"])
    optimum = {r["physics"]: r for r in rows if r["optimum"] == 1}
    assert optimum["randomized"]["role"] == "best_of"  # the yardstick of a randomised physics
    assert optimum["noisy"]["return_mean"] == max(r["return_mean"] for r in rows if r["physics"] == "noisy")
    assert math.isnan(optimum["randomized"]["dp_value_mean"])
    (tmp_path / "summary.csv").write_text(summary_csv(rows))
    subprocess.run([sys.executable, str(REPORT_SCRIPT), str(tmp_path)], check=True, capture_output=True)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| `randomized` | clairvoyant |" in report and "| `noisy` | lower bound |" in report
    assert "### `noisy`" in report and "Gauss-Hermite" in report and "**clairvoyant** policy is told" in report and "best of these 2 cell policies" in report


def test_gauss_hermite_integrates_normal_moments():
    x, w = gauss_hermite(5, dtype=torch.float64)
    assert (w * x**0).sum().item() == pytest.approx(1.0)
    assert (w * x**2).sum().item() == pytest.approx(1.0)
    assert (w * x**4).sum().item() == pytest.approx(3.0)


def test_command_line_writes_the_summary(tmp_path):
    out = tmp_path / "optimal"
    assert main(["--physics", "default", "weak", "--grids", "15", "25", "--actions", "5", "--episodes", "20",
                 "--out", str(out), "--quiet"]) == 0
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [(r["physics"], r["grid"], r["actions"], r["role"]) for r in rows] == [
        ("default", "15x15", "5", "refinement"), ("default", "25x25", "5", "refinement"),
        ("weak", "15x15", "5", "refinement"), ("weak", "25x25", "5", "refinement")]
    assert sum(int(r["optimum"]) for r in rows) == 2
    best = max(rows[:2], key=lambda r: float(r["return_mean"]))
    assert best["optimum"] == "1"
    for row in rows:
        assert float(row["zero_torque_return_mean"]) < float(row["return_mean"]) <= 0
        assert float(row["return_min"]) <= float(row["return_median"]) and float(row["seconds"]) > 0
    assert (out / "config.json").is_file()
    subprocess.run([sys.executable, str(REPORT_SCRIPT), str(out)], check=True, capture_output=True)
    report = (out / "REPORT.md").read_text()
    assert "| `default` | lower bound | 25x25 x 5 |" in report or "| `default` | lower bound | 15x15 x 5 |" in report
    assert "python -m research.analysis.optimal --physics default weak --grids 15 25" in report
    assert "## Grid refinement" in report and "git commit" in report


@pytest.mark.cuda
def test_cuda_solve_matches_the_cpu():
    cpu = solve_optimal("default", grid=(51, 51), actions=11)
    gpu = solve_optimal("default", grid=(51, 51), actions=11, device="cuda")
    torch.testing.assert_close(gpu.value(0).cpu(), cpu.value(0), atol=1e-2, rtol=1e-5)
    th, thdot = evaluation_states(EPISODES, device="cuda").unbind(-1)
    assert gpu.rollout(th, thdot).mean().item() == pytest.approx(
        cpu.rollout(th.cpu(), thdot.cpu()).mean().item(), abs=0.5)
    assert angle_normalize(gpu.th_grid).device.type == "cuda"
