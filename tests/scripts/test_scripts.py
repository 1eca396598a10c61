"""The aggregation, plotting and report scripts on synthetic run directories (no training)."""

import csv
import importlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def scripts(monkeypatch):
    """The script modules, imported the way ``python scripts/<name>.py`` finds its siblings."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return SimpleNamespace(**{name.lstrip("_"): importlib.import_module(name)
                              for name in ("_rundata", "aggregate", "plot", "report")})


def write_run(exp_dir: Path, algo: str, seed: int, curve: list[tuple[int, float, float]], config_hash: str = "h",
              episodes: int = 100) -> Path:
    """A finished run whose evaluations are ``curve`` = [(env_steps, wall_time_s, return_mean), ...]."""
    path = exp_dir / algo / f"seed_{seed}"
    path.mkdir(parents=True)
    config = {"algo": algo, "seed": seed, "config": {"seed": seed, "lr": 1e-3, "eval": {"episodes": episodes}},
              "config_hash": config_hash, "git_commit": "abc123", "versions": {"torch": "2.13.0"},
              "device": "cpu: x86_64, 2 logical cores"}
    (path / "config.json").write_text(json.dumps(config))
    lines = ["iteration,env_steps,wall_time_s,train/return,eval/return_mean"]
    for i, (steps, wall, ret) in enumerate(curve):
        lines.append(f"{i},{steps},{wall},{ret - 10},")  # a training row without an evaluation
        lines.append(f"{i},{steps},{wall},,{ret}")
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    steps, wall, final = curve[-1]
    summary = {"algo": algo, "seed": seed, "env_steps": steps, "wall_time_s": wall, "config_hash": config_hash,
               "eval": {"return_mean": final, "return_iqm": final + 5, "return_median": final + 3,
                        "return_min": final - 300, "success_rate": 0.5, "episodes": episodes}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def synthetic_experiment(exp_dir: Path) -> dict[str, list[float]]:
    """Two algorithms, 5 seeds; ``fast`` crosses -200 for seeds 0-2 only; ``slow`` never does."""
    finals = {"fast": [-150.0, -160.0, -170.0, -400.0, -900.0], "slow": [-1200.0, -1100.0, -1000.0, -1300.0, -800.0]}
    for algo, values in finals.items():
        for seed, final in enumerate(values):
            curve = [(0, 0.1, -1400.0), (1000, 2.0 + seed, (final - 1400.0) / 2), (2000, 4.0 + seed, final)]
            if algo == "fast" and seed < 3:
                curve[1] = (1000, 2.0 + seed, -190.0)  # reaches -200 at the second evaluation
            write_run(exp_dir, algo, seed, curve)
    return finals


def test_iqm_drops_the_outer_quarters(scripts):
    assert scripts.rundata.iqm(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(3.0)
    assert scripts.rundata.iqm(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert scripts.rundata.iqm(np.array([7.0])) == 7.0


def test_bootstrap_ci_basic_properties(scripts):
    ci = scripts.rundata.bootstrap_ci
    values = np.array([-150.0, -160.0, -170.0, -400.0, -900.0])
    low, high = ci(values)
    assert values.min() <= low < values.mean() < high <= values.max()
    assert (low, high) == ci(values)  # fixed RNG seed: reproducible
    assert ci(np.full(5, -3.0)) == (-3.0, -3.0) and ci(np.array([-3.0])) == (-3.0, -3.0)
    assert all(np.isnan(ci(np.array([]))))
    with_outlier = np.append(np.linspace(-160.0, -140.0, 19), -3000.0)
    (iqm_low, iqm_high), (mean_low, mean_high) = ci(with_outlier, scripts.rundata.iqm), ci(with_outlier)
    assert iqm_high - iqm_low < (mean_high - mean_low) / 10  # the IQM shrugs off one failed seed, the mean does not
    columns = np.stack([values, values + 100.0], axis=1)  # [seeds, G]: one interval per column (resampled apart)
    col_low, col_high = ci(columns)
    assert np.all(col_low < columns.mean(axis=0)) and np.all(columns.mean(axis=0) < col_high)
    assert col_high[1] - col_low[1] == pytest.approx(high - low, rel=0.5)
    wide, narrow = ci(np.random.default_rng(1).normal(size=5)), ci(np.random.default_rng(1).normal(size=500))
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time(scripts):
    rng = np.random.default_rng(123)
    trials = 40  # rliable's bootstrap is a Python loop per resample: few trials and resamples, a loose bound
    covered = 0
    for trial in range(trials):
        sample = rng.normal(loc=-200.0, scale=50.0, size=20)
        low, high = scripts.rundata.bootstrap_ci(sample, resamples=250, seed=trial)
        covered += low <= -200.0 <= high
    assert 0.8 <= covered / trials < 1.0  # the percentile bootstrap slightly undercovers at n = 20


def test_aggregate_statistics_on_synthetic_runs(scripts, tmp_path):
    exp_dir = tmp_path / "synthetic"
    finals = synthetic_experiment(exp_dir)
    assert scripts.aggregate.main([str(exp_dir)]) == 0
    rows = {row["algo"]: row for row in csv.DictReader((exp_dir / "summary.csv").open())}
    assert list(rows) == ["fast", "slow"]
    fast, slow = rows["fast"], rows["slow"]
    assert fast["n_seeds"] == "5" and fast["seeds"] == "0 1 2 3 4"
    assert float(fast["final_return_mean"]) == pytest.approx(np.mean(finals["fast"]))
    assert float(fast["final_return_iqm"]) == pytest.approx(np.mean([-160.0, -170.0, -400.0]))
    assert float(fast["final_return_median"]) == pytest.approx(-170.0)
    assert float(fast["final_return_std"]) == pytest.approx(np.std(finals["fast"], ddof=1))
    low, high = scripts.rundata.bootstrap_ci(np.array(finals["fast"]))
    assert float(fast["final_return_mean_ci_low"]) == pytest.approx(low, rel=1e-9)
    assert float(fast["final_return_mean_ci_high"]) == pytest.approx(high, rel=1e-9)
    assert float(fast["success_rate"]) == 0.5 and float(fast["env_steps"]) == 2000
    assert float(fast["wall_time_s"]) == pytest.approx(np.mean([4.0 + s for s in range(5)]))
    # seeds 0-2 first reach -200 at 1000 steps, after 2, 3, 4 seconds: the median is 3 s
    assert fast["seeds_reaching_threshold"] == "3" and float(fast["env_steps_to_threshold"]) == 1000
    assert float(fast["wall_time_s_to_threshold"]) == pytest.approx(3.0)
    assert slow["seeds_reaching_threshold"] == "0" and slow["env_steps_to_threshold"] == ""
    per_run = list(csv.DictReader((exp_dir / "runs.csv").open()))
    assert len(per_run) == 10 and per_run[3]["env_steps_to_threshold"] == ""


def test_manifest_selects_the_planned_runs(scripts, tmp_path, capsys):
    exp_dir = tmp_path / "planned"
    write_run(exp_dir, "bptt", 0, [(0, 0.0, -1000.0), (10, 1.0, -300.0)], config_hash="new")
    write_run(exp_dir, "bptt", 1, [(0, 0.0, -1000.0), (10, 1.0, -100.0)], config_hash="old")
    write_run(exp_dir, "bptt", 7, [(0, 0.0, -1000.0), (10, 1.0, -100.0)], config_hash="new")
    (exp_dir / "bptt" / "seed_2").mkdir()  # started, never finished
    manifest = {"runs": [{"algo": "bptt", "seed": s, "config_hash": "new", "path": f"bptt/seed_{s}"} for s in range(3)]}
    (exp_dir / "experiment.json").write_text(json.dumps(manifest))
    runs = scripts.rundata.load_runs(exp_dir)
    assert [run.seed for run in runs] == [0]
    err = capsys.readouterr().err
    assert "bptt/seed_1 finished under another config" in err
    assert "not finished" in err and "bptt/seed_2" in err and "not planned" in err and "bptt/seed_7" in err


def test_plot_interpolates_onto_a_common_grid(scripts, tmp_path):
    exp_dir = tmp_path / "curves"
    write_run(exp_dir, "bptt", 0, [(0, 0.0, -1000.0), (100, 1.0, -500.0), (1000, 2.0, 0.0)])
    write_run(exp_dir, "bptt", 1, [(0, 0.0, -1000.0), (100, 1.5, -300.0), (800, 3.0, -100.0)])
    runs = scripts.rundata.load_runs(exp_dir)
    grid, mean, low, high = scripts.plot.mean_curve(runs, "env_steps", log_x=True)
    assert grid[0] == 100 and grid[-1] == pytest.approx(1000)  # both seeds' x-range, positive only on a log axis
    assert mean[0] == pytest.approx(-400.0) and np.all(low <= mean) and np.all(mean <= high)
    assert mean[-1] == pytest.approx(-50.0)  # seed 1 ended at 800 steps and keeps its final -100
    grid, mean, _, _ = scripts.plot.mean_curve(runs, "wall_time_s", log_x=False)
    assert grid[0] == 0.0 and grid[-1] == 3.0 and mean[0] == -1000.0 and mean[-1] == pytest.approx(-50.0)
    assert scripts.plot.main([str(exp_dir)]) == 0
    assert (exp_dir / "figures" / "return_vs_env_steps.png").stat().st_size > 10_000


def test_report_matches_the_aggregation_and_refuses_stale_csv(scripts, tmp_path):
    exp_dir = tmp_path / "synthetic"
    synthetic_experiment(exp_dir)
    with pytest.raises(SystemExit, match="aggregate.py"):
        scripts.report.main([str(exp_dir)])  # no summary.csv yet
    assert scripts.aggregate.main([str(exp_dir)]) == 0
    assert scripts.plot.main([str(exp_dir)]) == 0
    assert scripts.report.main([str(exp_dir)]) == 0
    report = (exp_dir / "REPORT.md").read_text()
    summary_lines = report.split("### Per run")[0].split("## Statistics over seeds")[0].splitlines()
    table = {cells[0].strip("`"): cells for cells in
             (re.split(r"\s*\|\s*", line.strip("| ")) for line in summary_lines if line.startswith("| `"))}
    for row in csv.DictReader((exp_dir / "summary.csv").open()):
        cells = table[row["algo"]]
        assert cells[1] == row["n_seeds"]
        expected = (f"{float(row['final_return_mean']):.1f} [{float(row['final_return_mean_ci_low']):.1f}, "
                    f"{float(row['final_return_mean_ci_high']):.1f}]")
        assert cells[2] == expected
    assert "3/5" in table["fast"][8] and table["slow"][9] == "never"
    assert "![evaluation return against environment steps (log scale)](figures/return_vs_env_steps.png)" in report
    assert "make experiment EXP=synthetic" in report and "abc123" in report and "torch 2.13.0" in report
    assert "## Discussion" not in report  # no NOTES.md: no hand-written section
    (exp_dir / "NOTES.md").write_text("Slow is slow because it is slow.\n")
    assert scripts.report.main([str(exp_dir)]) == 0
    report = (exp_dir / "REPORT.md").read_text()
    assert report.index("## Results") < report.index("## Discussion (written by hand") < report.index("### Per run")
    assert "\nSlow is slow because it is slow.\n" in report  # the notes survive regeneration

    summary = exp_dir / "slow" / "seed_0" / "summary.json"
    data = json.loads(summary.read_text())
    data["eval"]["return_mean"] = -10.0
    summary.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="no longer matches"):
        scripts.report.main([str(exp_dir)])
