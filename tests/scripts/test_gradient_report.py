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
    assert "| " + " | ".join(CSV_COLUMNS) + " |" in report
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
