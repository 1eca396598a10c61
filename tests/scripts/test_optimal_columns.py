"""The optimum columns of scripts/aggregate.py and scripts/report.py, on synthetic runs and a synthetic
results/optimal/summary.csv (no DP solve)."""

import csv
import importlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
OPTIMUM, ZERO = -137.0, -1222.0


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return SimpleNamespace(**{name: importlib.import_module(name) for name in ("aggregate", "report")})


def write_run(exp_dir: Path, algo: str, seed: int, final: float, env: dict | None = None, evaluation: dict | None = None
              ) -> None:
    path = exp_dir / algo / f"seed_{seed}"
    path.mkdir(parents=True)
    config = {"algo": algo, "seed": seed, "git_commit": "abc", "versions": {}, "device": "cpu",
              "config": {"seed": seed, "env": env or {"physics": "default"}, "eval": evaluation or {"episodes": 1000}}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.csv").write_text(f"iteration,env_steps,wall_time_s,eval/return_mean\n0,100,1.0,{final}\n")
    summary = {"algo": algo, "seed": seed, "env_steps": 100, "wall_time_s": 1.0, "config_hash": "h",
               "eval": {"return_mean": final, "return_iqm": final, "return_median": final, "return_min": final,
                        "success_rate": 1.0, "episodes": 1000}}
    (path / "summary.json").write_text(json.dumps(summary))


def write_optimal(results: Path) -> None:
    (results / "optimal").mkdir(parents=True)
    rows = [("default", "401x401", -137.5, 0), ("default", "801x801", OPTIMUM, 1), ("weak", "801x801", -243.0, 1)]
    lines = ["physics,grid,actions,return_mean,zero_torque_return_mean,episodes,optimum"]
    lines += [f"{p},{g},11,{r},{ZERO if p == 'default' else -1500.0},1000,{o}" for p, g, r, o in rows]
    (results / "optimal" / "summary.csv").write_text("\n".join(lines) + "\n")


def read(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_gap_and_normalized_score_per_run_and_per_algorithm(scripts, tmp_path):
    exp = tmp_path / "exp"
    write_optimal(tmp_path)
    for seed, final in enumerate([-150.0, -160.0]):
        write_run(exp, "good", seed, final)
    write_run(exp, "weak_env", 0, -300.0, env={"physics": "weak"})
    write_run(exp, "tweaked", 0, -150.0, env={"physics": "default", "params": {"damping": 0.2}})
    write_run(exp, "few_states", 0, -150.0, evaluation={"episodes": 100})
    write_run(exp, "other_noise", 0, -150.0, evaluation={"episodes": 1000, "noise_seed": 7})
    write_run(exp, "scored_on_weak", 0, -250.0, env={"physics": "default"}, evaluation={"physics": "weak"})
    write_run(exp, "old_config", 0, -150.0, env={})
    assert scripts.aggregate.main([str(exp)]) == 0
    runs = {(r["algo"], r["seed"]): r for r in read(exp / "runs.csv")}
    good = runs[("good", "0")]
    assert float(good["optimum"]) == OPTIMUM and good["physics"] == "default"
    assert float(good["gap_to_optimum"]) == pytest.approx(OPTIMUM + 150.0)
    assert float(good["normalized_score"]) == pytest.approx((-150.0 - ZERO) / (OPTIMUM - ZERO))
    assert float(runs[("weak_env", "0")]["optimum"]) == -243.0
    assert float(runs[("scored_on_weak", "0")]["optimum"]) == -243.0  # eval.physics decides
    assert float(runs[("old_config", "0")]["optimum"]) == OPTIMUM  # no env.physics: the default physics
    for algo in ("tweaked", "few_states", "other_noise"):  # no protocol evaluation on a preset: no optimum
        assert runs[(algo, "0")]["optimum"] == runs[(algo, "0")]["normalized_score"] == ""
    summary = {r["algo"]: r for r in read(exp / "summary.csv")}
    assert float(summary["good"]["gap_to_optimum"]) == pytest.approx(OPTIMUM + 155.0)
    mean_score = sum((f - ZERO) / (OPTIMUM - ZERO) for f in (-150.0, -160.0)) / 2
    assert float(summary["good"]["normalized_score"]) == pytest.approx(mean_score)
    assert summary["tweaked"]["gap_to_optimum"] == ""

    assert scripts.report.main([str(exp)]) == 0  # the report's consistency check sees the same optimum
    report = (exp / "REPORT.md").read_text()
    assert "| gap to optimum | normalized score |" in report
    assert f"| {OPTIMUM + 155.0:.1f} | {mean_score:.3f} |" in report
    assert "n/a" in report and "`default` -137.0" in report and "../optimal/REPORT.md" in report


def test_no_yardstick_leaves_the_columns_empty_and_the_report_unchanged(scripts, tmp_path):
    exp = tmp_path / "exp"
    write_run(exp, "good", 0, -150.0)
    assert scripts.aggregate.main([str(exp)]) == 0
    row = read(exp / "runs.csv")[0]
    assert row["optimum"] == row["gap_to_optimum"] == row["normalized_score"] == ""
    assert scripts.report.main([str(exp)]) == 0
    assert "gap to optimum" not in (exp / "REPORT.md").read_text()
    # a yardstick written after the aggregation makes the report ask for a new one (the numbers would disagree)
    write_optimal(tmp_path)
    with pytest.raises(SystemExit, match="no longer matches"):
        scripts.report.main([str(exp)])
    assert math.isnan(scripts.aggregate.optimum_columns(-150.0, "noisy", {})["optimum"])
