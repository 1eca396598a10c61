"""scripts/gradient_report.py: figures and REPORT.md of a gradient study, from its CSV and config.json alone."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the plots extra (pip install -e '.[plots]')")

from research.analysis.gradients import CSV_COLUMNS, ESTIMATORS, rows_to_csv  # noqa: E402
from research.experiment import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gradient_report.py"
TINY_STUDY = """
[gradient_study]
horizons = [1, 5]
samples = 24
chunk = 10
likelihood_ratio_baseline = "reward_to_go"
hidden_sizes = [8, 8]
seed = 3
[gradient_study.trained.config]
iterations = 2
num_envs = 8
window = 4
[gradient_study.trained.config.eval]
episodes = 20
"""


def run_report(exp_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(exp_dir)], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def report_module(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("gradient_report")


def test_tiny_study_end_to_end_writes_every_output(tmp_path):
    path = tmp_path / "tiny_study.toml"
    path.write_text(TINY_STUDY)
    result = run_experiment(path, tmp_path / "results", quiet=True)  # the measurement: CSV and config.json
    out = tmp_path / "results" / "tiny_study"
    done = run_report(out)
    assert done.returncode == 0, done.stderr
    for name in ("gradient_study.csv", "config.json", "REPORT.md", "figures/gradient_norm.png",
                 "figures/gradient_variance.png", "figures/cosine.png", "trained_policy/policy.pt"):
        assert (out / name).is_file(), name

    report = (out / "REPORT.md").read_text()
    assert "make experiment EXP=tiny_study" in report
    trained_eval = result["policies"]["trained"]["training_eval"]["return_mean"]
    assert f"eval.return_mean = {trained_eval:.1f}" in report
    assert "## Findings" in report and "![" in report
    # One preset: the table as before the physics column (the preset is in the text), one line per CSV row.
    assert "| " + " | ".join(c for c in CSV_COLUMNS if c != "physics") + " |" in report and "| physics |" not in report
    assert report.count("\n| random |") + report.count("\n| trained |") == 8  # one table line per CSV row


def synthetic_study(exp_dir: Path, first_order_variance: float) -> None:
    """A study whose likelihood-ratio variance is 1 at every horizon and first order's ``first_order_variance * H``."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"policy": "random", "horizon": h, "estimator": e, "lr_baseline": "reward_to_go_baseline",
             "grad_norm": 1.0, "mean_sample_norm": 2.0, "median_sample_norm": 1.0,
             "variance_mean": 0.01, "variance_total": first_order_variance * h if e == "first_order" else 1.0,
             "relative_se": 0.01, "cosine": 0.99, "cosine_se": 0.001, "return_mean": -3.0 * h, "samples": 100}
            for h in (1, 10, 100) for e in ESTIMATORS]
    (exp_dir / "gradient_study.csv").write_text(rows_to_csv(rows))
    config = {"description": "synthetic", "horizons": [1, 10, 100], "samples": 100, "chunk": 50, "dtype": "float64",
              "action_noise": 0.3, "likelihood_ratio_baseline": "reward_to_go_baseline"}
    policies = {"random": {"source": "made up", "parameters": 5, "training_eval": None,
                           "eval": {"return_mean": -1200.0, "success_rate": 0.0}}}
    (exp_dir / "config.json").write_text(json.dumps({
        "experiment": exp_dir.name, "source": f"experiments/{exp_dir.name}.toml", "config": config,
        "policies": policies, "jackknife_groups": 20, "wall_time_s": 1.0, "git_commit": "abc", "device": "cpu"}))


def test_findings_are_computed_from_the_data(tmp_path, report_module):
    low, high = tmp_path / "results" / "low", tmp_path / "results" / "high"
    synthetic_study(low, 1e-3)  # first order below zeroth order at every horizon
    synthetic_study(high, 0.04)  # ... at H = 1 and 10 only (ratios 0.04, 0.4, 4)
    assert run_report(low).returncode == 0 and run_report(high).returncode == 0
    low_text, high_text = ((d / "REPORT.md").read_text() for d in (low, high))
    assert "First order has the lower variance at H = 1, 10, 100 and the higher one at H = none" in low_text
    assert "First order has the lower variance at H = 1, 10 and the higher one at H = 100" in high_text
    assert "from H = 100 on it is no longer below half the zeroth-order variance" in high_text
    assert "grows by a factor 100 (log-log slope 1.00)" in low_text  # variance_total = c * H from H = 1 to 100

    columns, rows, info = report_module.load_study(low)
    assert columns == list(CSV_COLUMNS) and rows[0]["horizon"] == 1 and isinstance(rows[0]["grad_norm"], float)
    assert report_module.study_findings(rows, 100) == [
        f[2:] for f in low_text.split("## Findings\n\n")[1].split("\n\n")[0].splitlines()]
    with (low / "gradient_study.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_a_directory_without_a_study_is_an_error_naming_the_files(tmp_path):
    done = run_report(tmp_path)
    assert done.returncode != 0 and "gradient_study.csv" in done.stderr
    missing = run_report(tmp_path / "nope")
    assert missing.returncode != 0 and "no experiment directory" in missing.stderr


def scaled_rows(scale: dict[str, float]) -> list[dict]:
    """Rows of every task of ``scale``, two policies, H = 1, 10, 100: zeroth-order variance 1, first order
    ``scale[task] * H``."""
    return [{"physics": ph, "policy": p, "horizon": h, "estimator": e, "lr_baseline": "reward_to_go_baseline",
             "grad_norm": 1.0, "mean_sample_norm": 2.0, "median_sample_norm": 1.0, "variance_mean": 0.01,
             "variance_total": scale[ph] * h if e == "first_order" else 1.0, "relative_se": 0.01, "cosine": 0.99,
             "cosine_se": 0.001, "return_mean": -3.0 * h, "samples": 100}
            for ph in scale for p in ("random", "trained") for h in (1, 10, 100) for e in ESTIMATORS]


def multi_preset_study(exp_dir: Path) -> None:
    """Two presets, two policies: zeroth-order variance 1 everywhere, first order ``c * H`` with ``c`` = 1e-3 on
    default physics (below at every horizon) and 0.04 on the wall (ratios 0.04, 0.4, 4: above from H = 100 on)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    scale = {"default": 1e-3, "wall": 0.04}
    (exp_dir / "gradient_study.csv").write_text(rows_to_csv(scaled_rows(scale)))
    config = {"description": "synthetic", "horizons": [1, 10, 100], "samples": 100, "chunk": 50, "dtype": "float64",
              "action_noise": 0.3, "likelihood_ratio_baseline": "reward_to_go_baseline", "physics": list(scale)}
    policy = {"source": "made up", "parameters": 5, "training_eval": None,
              "eval": {"return_mean": -1200.0, "success_rate": 0.0}}
    (exp_dir / "config.json").write_text(json.dumps({
        "experiment": exp_dir.name, "source": f"experiments/{exp_dir.name}.toml", "config": config,
        "physics": {"default": {"description": "Gymnasium"}, "wall": {"description": "a hard wall"}},
        "physics_policies": {ph: {"random": policy, "trained": policy} for ph in scale},
        "jackknife_groups": 20, "wall_time_s": 1.0, "git_commit": "abc", "device": "cpu"}))


def test_a_multi_preset_study_gets_cross_preset_figures_and_tables(tmp_path, report_module, capsys):
    out = tmp_path / "results" / "multi"
    multi_preset_study(out)
    assert report_module.main([str(out)]) == 0
    for name in report_module.PHYSICS_FIGURES:
        assert (out / "figures" / name).stat().st_size > 10_000, name
    for preset in ("default", "wall"):
        for name in report_module.FIGURES:
            assert (out / "figures" / preset / name).is_file(), (preset, name)
    assert not (out / "figures" / "cosine.png").exists()  # the single-preset figures live per preset here
    report = (out / "REPORT.md").read_text()
    assert "### Across presets" in report and "### default" in report and "### wall" in report
    assert "(figures/physics_variance_ratio.png)" in report and "(figures/wall/cosine.png)" in report
    assert "wall: from H = 100 on (ratio 0.4 at H = 10, 4 at H = 100)" in report
    assert "default: below at H = 100 (ratio 0.1)" in report
    assert "relative to default (0.1): wall 40x, default 1x" in report
    assert "- **wall**: a hard wall" in report
    # Per-preset tables at the measured horizons nearest to 1, 20, 64 and 200: here 1, 10 (for 20) and 100.
    assert "\n| wall | 10 | 1 | 0.4 | 0.01 | 1 | 1 | 0.01 | 0.4 | 0.99 ± 0.00 | -30 |" in report
    assert report.count("\n| default | 100 |") == 2  # one per policy table
    # The full results table keeps the physics column: one line per CSV row.
    assert report.count("\n| default | random |") + report.count("\n| wall | trained |") == 12


def test_table_horizons_and_csvs_without_a_physics_column(tmp_path, report_module):
    assert report_module.table_horizons([1, 5, 20, 64, 100, 200]) == [1, 20, 64, 200]
    assert report_module.table_horizons([1, 2, 5, 10, 20, 50, 100, 200]) == [1, 20, 50, 200]
    assert report_module.table_horizons([5, 1]) == [1, 5]
    old = tmp_path / "old"
    synthetic_study(old, 1e-3)
    lines = (old / "gradient_study.csv").read_text().splitlines()  # as written before the physics column existed
    (old / "gradient_study.csv").write_text("\n".join(line.split(",", 1)[1] for line in lines) + "\n")
    columns, rows, _ = report_module.load_study(old)
    assert "physics" not in columns and {r["physics"] for r in rows} == {"default"}
    assert run_report(old).returncode == 0
    assert "\n| random | 1 | first_order |" in (old / "REPORT.md").read_text()


def test_a_pendulum_study_reads_the_same_with_the_tasks_recorded(tmp_path, report_module):
    # config.json now records each task's system, preset, time step, action bound and sigma; on the pendulum alone the
    # report is the one written from a config.json without them (the committed studies').
    out = tmp_path / "results" / "multi"
    multi_preset_study(out)
    assert report_module.main([str(out)]) == 0
    before = (out / "REPORT.md").read_text()
    info = json.loads((out / "config.json").read_text())
    info["config"]["action_noise_scale"] = "absolute"
    for name, preset in info["physics"].items():
        preset.update(system="pendulum", preset=name, time_step=0.05, max_action=2.0, sigma=0.3)
    (out / "config.json").write_text(json.dumps(info))
    assert report_module.main([str(out)]) == 0
    assert (out / "REPORT.md").read_text() == before
    assert report_module.horizon_label(info, ["default", "wall"]) == report_module.XLABEL == \
        "horizon H (steps of 0.05 s)"


def system_study(exp_dir: Path) -> None:
    """The pendulum, the cart-pole and the acrobot, two policies, sigma = 0.15 x each one's max action: zeroth-order
    variance 1 everywhere, first order ``c * H`` (``c`` = 1e-3, 0.04 and 0.5)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    scale = {"default": 1e-3, "cartpole": 0.04, "acrobot": 0.5}
    (exp_dir / "gradient_study.csv").write_text(rows_to_csv(scaled_rows(scale)))
    config = {"description": "synthetic", "horizons": [1, 10, 100], "samples": 100, "chunk": 50, "dtype": "float64",
              "action_noise": 0.15, "action_noise_scale": "max_action",
              "likelihood_ratio_baseline": "reward_to_go_baseline", "physics": list(scale)}
    tasks = {"default": ("pendulum", 0.05, 2.0, "Gymnasium Pendulum-v1"), "cartpole": ("cartpole", 0.02, 10.0, "a cart"),
             "acrobot": ("acrobot", 0.2, 2.0, "two links")}
    physics = {name: {"description": text, "fixed": {}, "ranges": {}, "system": system, "preset": "default",
                      "time_step": dt, "max_action": bound, "sigma": 0.15 * bound}
               for name, (system, dt, bound, text) in tasks.items()}
    policy = {"source": "made up", "parameters": 5, "training_eval": None,
              "eval": {"return_mean": -1200.0, "success_rate": 0.0}}
    (exp_dir / "config.json").write_text(json.dumps({
        "experiment": exp_dir.name, "source": f"experiments/{exp_dir.name}.toml", "config": config, "physics": physics,
        "physics_policies": {ph: {"random": policy, "trained": policy} for ph in scale},
        "jackknife_groups": 20, "wall_time_s": 1.0, "git_commit": "abc", "device": "cpu"}))


def test_a_study_across_systems_speaks_of_each_system(tmp_path, report_module):
    out = tmp_path / "results" / "systems"
    system_study(out)
    assert report_module.main([str(out)]) == 0
    for name in report_module.PHYSICS_FIGURES:
        assert (out / "figures" / name).is_file(), name
    for task in ("default", "cartpole", "acrobot"):
        for name in report_module.FIGURES:
            assert (out / "figures" / task / name).is_file(), (task, name)
    _, _, info = report_module.load_study(out)
    assert report_module.horizon_label(info, ["default", "cartpole", "acrobot"]) == \
        "horizon H (steps: 0.05 s on default; 0.02 s on cartpole; 0.2 s on acrobot)"
    assert report_module.horizon_label(info, ["cartpole"]) == "horizon H (steps of 0.02 s)"
    report = (out / "REPORT.md").read_text()
    assert "initial state from each system's reset distribution, on each of 3 tasks (pendulum, cartpole, acrobot)" \
        in report
    assert "σ = 0.15 × each task's max action (default: 0.3, cartpole: 1.5, acrobot: 0.3)" in report
    assert "- **cartpole** (cartpole, 0.02 s per step, σ = 1.5): a cart" in report
    for pendulum_only in ("Gymnasium's reset", " N m", "research/envs/presets.py", "steps of 0.05 s"):
        assert pendulum_only not in report, pendulum_only
    # Variances are compared within a system only (each has its own cost); the crossings are per task.
    assert "**random policy, first-order variance on cartpole:** 4 at the largest horizon (H = 100)" in report
    assert "relative to default" not in report
    assert "cartpole: from H = 100 on (ratio 0.4 at H = 10, 4 at H = 100)" in report
    assert "acrobot: from H = 10 on (ratio 0.5 at H = 1, 5 at H = 10)" in report
