"""The rliable columns of scripts/aggregate.py (summary.csv, runs.csv, overall.csv), their report section and the two
figures of scripts/plot.py, on synthetic runs and a synthetic results/optimal/summary.csv (no training)."""

import csv
import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
OPTIMUM, ZERO = -100.0, -1100.0  # a normalized score s is the return -1100 + 1000 s


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return SimpleNamespace(**{name: importlib.import_module(name) for name in ("aggregate", "plot", "report")})


def write_run(exp: Path, algo: str, seed: int, curve: list[tuple[int, float, float]]) -> None:
    """A finished run on default physics whose evaluations are ``curve`` = [(env_steps, wall_time_s, score)]."""
    path = exp / algo / f"seed_{seed}"
    path.mkdir(parents=True)
    config = {"algo": algo, "seed": seed, "git_commit": "abc", "versions": {}, "device": "cpu",
              "config": {"seed": seed, "env": {"physics": "default"}, "eval": {"episodes": 1000}}}
    (path / "config.json").write_text(json.dumps(config))
    rows = "".join(f"{i},{steps},{wall},{ZERO + 1000 * score}\n" for i, (steps, wall, score) in enumerate(curve))
    (path / "metrics.csv").write_text("iteration,env_steps,wall_time_s,eval/return_mean\n" + rows)
    steps, wall, score = curve[-1]
    final = ZERO + 1000 * score
    summary = {"algo": algo, "seed": seed, "env_steps": steps, "wall_time_s": wall, "config_hash": "h",
               "eval": {"return_mean": final, "return_iqm": final, "return_median": final, "return_min": final,
                        "success_rate": 1.0, "episodes": 1000}}
    (path / "summary.json").write_text(json.dumps(summary))


def synthetic(results: Path) -> Path:
    """bptt: 4 seeds end at 0.995 (0.99 reached at 200 steps, 1 s); ddpg: seeds end at 0.95-0.98, seed 3 at 0.5."""
    (results / "optimal").mkdir(parents=True)
    (results / "optimal" / "summary.csv").write_text(
        f"physics,grid,actions,return_mean,zero_torque_return_mean,episodes,optimum\n"
        f"default,801x801,11,{OPTIMUM},{ZERO},1000,1\n")
    exp = results / "exp"
    for seed in range(4):
        write_run(exp, "bptt", seed, [(0, 0.0, 0.0), (100, 0.5, 0.9), (200, 1.0, 0.992), (300, 1.5, 0.995)])
        final = 0.5 if seed == 3 else 0.95 + 0.01 * seed
        write_run(exp, "ddpg", seed, [(0, 0.0, 0.0), (1000, 10.0, 0.985), (2000, 20.0, final)])
    return exp


def read(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_rliable_columns_report_section_and_figures(scripts, tmp_path):
    exp = synthetic(tmp_path)
    assert scripts.aggregate.main([str(exp)]) == 0
    rows = {row["algo"]: row for row in read(exp / "summary.csv")}
    bptt, ddpg = rows["bptt"], rows["ddpg"]
    assert float(bptt["normalized_score_iqm"]) == pytest.approx(0.995)
    assert float(ddpg["normalized_score_iqm"]) == pytest.approx(0.955)  # the middle two of 0.5, 0.95, 0.96, 0.97
    low, high = float(ddpg["normalized_score_iqm_ci_low"]), float(ddpg["normalized_score_iqm_ci_high"])
    assert low <= 0.955 <= high and low < high
    assert bptt["failed_seeds"] == "0" and float(bptt["failure_rate_ci_high"]) == pytest.approx(1 - 0.025 ** 0.25)
    assert ddpg["failed_seeds"] == "1" and float(ddpg["failure_rate"]) == 0.25
    assert float(ddpg["failure_rate_ci_low"]) < 0.25 < float(ddpg["failure_rate_ci_high"])
    # bptt beats every ddpg seed: the best method, probability 1 with a degenerate interval
    assert bptt["best_algo"] == ddpg["best_algo"] == "bptt" and bptt["prob_best_improves"] == ""
    assert ddpg["prob_best_improves"] == ddpg["prob_best_improves_ci_low"] == ddpg["prob_best_improves_ci_high"] == "1"
    assert float(bptt["return_at_99"]) == pytest.approx(ZERO + 990)
    assert (bptt["seeds_reaching_99"], bptt["env_steps_to_99"], bptt["wall_time_s_to_99"]) == ("4", "200", "1")
    assert ddpg["seeds_reaching_99"] == "0" and ddpg["env_steps_to_99"] == ""
    # best gap 0.005: within twice it is a score of 0.99; ddpg's 0.985 at 1000 steps does not reach it
    assert float(bptt["return_at_2x_best_gap"]) == pytest.approx(ZERO + 990)
    assert bptt["seeds_reaching_2x_best_gap"] == "4" and ddpg["seeds_reaching_2x_best_gap"] == "0"
    per_run = {(r["algo"], r["seed"]): r for r in read(exp / "runs.csv")}
    assert per_run[("ddpg", "3")]["failed"] == "1" and per_run[("ddpg", "0")]["failed"] == "0"
    assert per_run[("bptt", "0")]["env_steps_to_2x_best_gap"] == "200"
    overall = {row["algo"]: row for row in read(exp / "overall.csv")}
    assert overall["bptt"]["family"] == "backprop" and overall["bptt"]["opponent"] == "ddpg"
    assert overall["bptt"]["prob_improvement"] == "1" and overall["ddpg"]["prob_improvement"] == "0"
    assert overall["ddpg"]["failed_runs"] == "1" and overall["ddpg"]["runs"] == "4"

    assert scripts.plot.main([str(exp)]) == 0
    for name in scripts.plot.STAT_FIGURES:
        assert (exp / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scripts.report.main([str(exp)]) == 0
    section = (exp / "REPORT.md").read_text().split("## Statistics over seeds")[1]
    assert "| `ddpg` | 4 | 0.955 [" in section and "1/4, 25.0% [" in section and "0/4, 0.0% [0.0%, 60.2%]" in section
    assert "1.000 [1.000, 1.000] (`bptt`)" in section and "200 / 1.0 s (4/4)" in section and "never" in section
    assert "Clopper-Pearson" in section and "**Best backprop against best model-free**: `bptt`" in section
    assert "figures/performance_profile.png" in section and "figures/probability_of_improvement.png" in section
    (exp / "overall.csv").unlink()
    with pytest.raises(SystemExit, match="aggregate.py"):
        scripts.report.main([str(exp)])
