"""The experiment runner: planning, parallel runs, resume, errors, the Ray backend, and the scripts end to end."""

import csv
import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from research.config import ConfigError
from research.experiment import load_experiment, main, run_experiment, run_status

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.toml"


@pytest.fixture(scope="module")
def finished_smoke(tmp_path_factory):
    """The smoke experiment run once (two processes at a time); tests copy it before changing anything."""
    results = tmp_path_factory.mktemp("results")
    outcome = run_experiment(SMOKE, results, jobs=2, cpus_per_run=1, quiet=True)
    return results, outcome


@pytest.fixture
def smoke_copy(finished_smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(finished_smoke[0], results)
    return results


def run_script(name, exp_dir):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), str(exp_dir)],
                          capture_output=True, text=True, check=False)


def test_smoke_experiment_end_to_end(finished_smoke):
    results, outcome = finished_smoke
    plan = outcome.plan
    assert outcome.ok and not outcome.skipped, outcome.failed
    assert sorted(outcome.completed) == sorted(run.name for run in plan.runs)
    assert {run.seed for run in plan.runs} == {0, 1} and len(plan.runs) == 2 * len({r.algo for r in plan.runs})
    for run in plan.runs:
        assert {p.name for p in run.run_dir.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt"}
        assert run_status(run) == "done"
    manifest = json.loads((results / "smoke" / "experiment.json").read_text())
    assert [(r["algo"], r["seed"]) for r in manifest["runs"]] == [(r.algo, r.seed) for r in plan.runs]

    exp_dir = results / "smoke"
    for name in ("aggregate", "plot", "report"):
        done = run_script(name, exp_dir)
        assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((exp_dir / "summary.csv").open()))
    assert [row["algo"] for row in rows] == manifest["algos"]
    for row in rows:
        assert row["n_seeds"] == "2"
        assert float(row["final_return_mean_ci_low"]) <= float(row["final_return_mean"]) <= float(
            row["final_return_mean_ci_high"])
        assert float(row["env_steps"]) > 0 and float(row["wall_time_s"]) > 0
    for figure in ("return_vs_env_steps.png", "return_vs_wall_time.png"):
        assert (exp_dir / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (exp_dir / "REPORT.md").read_text()
    for row in rows:
        assert f"{float(row['final_return_mean']):.1f} [" in report
    assert "figures/return_vs_env_steps.png" in report and "make experiment EXP=smoke" in report
    assert "torch" in report and "git commit" in report


def test_resume_skips_finished_runs(smoke_copy):
    outcome = run_experiment(SMOKE, smoke_copy, jobs=2, cpus_per_run=1, quiet=True)
    assert outcome.ok and not outcome.completed and len(outcome.skipped) == len(outcome.plan.runs)


def test_resume_reruns_an_unfinished_run_cleanly(smoke_copy, caplog):
    plan = load_experiment(SMOKE, smoke_copy)
    killed, kept = plan.runs[1], plan.runs[0]
    (killed.run_dir / "summary.json").unlink()
    (killed.run_dir / "stale.tmp").write_text("left by a killed run")
    kept_mtime = (kept.run_dir / "summary.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="research.experiment"):
        outcome = run_experiment(SMOKE, smoke_copy, jobs=1, cpus_per_run=1, quiet=True)
    assert list(outcome.completed) == [killed.name] and len(outcome.skipped) == len(plan.runs) - 1
    assert f"{killed.name}: unfinished run" in caplog.text
    assert not (killed.run_dir / "stale.tmp").exists() and run_status(killed) == "done"
    assert (kept.run_dir / "summary.json").stat().st_mtime_ns == kept_mtime


def test_changed_config_reruns_and_says_so(smoke_copy, tmp_path, caplog):
    changed = tmp_path / "smoke.toml"  # same experiment name, one seed and another bptt budget
    changed.write_text(SMOKE.read_text().replace("seeds = [0, 1]", "seeds = [0]")
                       .replace("iterations = 5", "iterations = 3"))
    with caplog.at_level(logging.INFO, logger="research.experiment"):
        outcome = run_experiment(changed, smoke_copy, jobs=2, cpus_per_run=1, quiet=True)
    assert "bptt/seed_0" in outcome.completed and outcome.completed["bptt/seed_0"]["iterations"] == 3
    assert "bptt/seed_0: the config changed" in caplog.text
    assert "no longer plans" in caplog.text and "bptt/seed_1" in caplog.text
    exp_dir = smoke_copy / "smoke"
    done = run_script("aggregate", exp_dir)
    assert done.returncode == 0 and "not planned" in done.stderr
    rows = {row["algo"]: row for row in csv.DictReader((exp_dir / "summary.csv").open())}
    assert rows["bptt"]["n_seeds"] == "1"


def test_failed_run_is_reported_and_the_others_finish(tmp_path):
    experiment = tmp_path / "failing.toml"
    # a policy with a zero-width layer passes the config's checks and fails when the run builds it
    experiment.write_text(SMOKE.read_text().replace("hidden_sizes = [16, 16]\n[bptt.eval]", "hidden_sizes = [0]\n[bptt.eval]")
                          .replace("seeds = [0, 1]", "seeds = [0]"))
    outcome = run_experiment(experiment, tmp_path / "results", jobs=2, cpus_per_run=1, quiet=True)
    assert not outcome.ok and list(outcome.failed) == ["bptt/seed_0"]
    assert set(outcome.completed) == {run.name for run in outcome.plan.runs} - {"bptt/seed_0"}
    assert run_status(outcome.plan.runs[0]) == "incomplete"


def test_unknown_experiment_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"not found; available in .*'pendulum_compare'.*'smoke'"):
        run_experiment(ROOT / "experiments" / "nope.toml", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(ROOT / "experiments" / "nope.toml"), "--results", str(tmp_path)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("text, match", [
    ('[experiment]\nalgos = ["bptt", "ppo"]\n[bptt]\n', r"unknown algorithm 'ppo'.*valid: \['bptt', 'bptt_finetune', 'ddpg'"),
    ("[experiment]\nseeds = [0]\n", "no algorithm to run"),
    ("[bptt]\n[bptt_typo]\n", r"unknown table \[bptt_typo\]"),
    ("[experiment]\nseeds = [1, 1]\n[bptt]\n", "distinct seeds"),
    ("[bptt]\nlrr = 1.0\n", "unknown config key 'bptt.lrr'"),
    ('[experiment]\nphysics = ["default", "icy"]\n[bptt]\n', r"experiment.physics must list presets .* unknown \['icy'\]"),
    ('[experiment]\nphysics = ["wall", "wall"]\n[bptt]\n', "experiment.physics must not repeat a preset"),
    ('[experiment]\nphysics = ["wall"]\n[bptt.env]\nphysics = "noisy"\n', r"\[bptt.env\] sets physics while"),
])
def test_bad_experiment_files_are_rejected(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_experiment(path, tmp_path)


def test_plan_defaults_and_device_override(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text("[experiment]\nseeds = [3, 4]\n[bptt]\niterations = 2\n")
    plan = load_experiment(path, tmp_path / "res")
    assert [(r.algo, r.seed) for r in plan.runs] == [("bptt", 3), ("bptt", 4)]
    assert plan.runs[0].run_dir == tmp_path / "res" / "plan" / "bptt" / "seed_3"
    if not torch.cuda.is_available():  # planning for a GPU that is not there fails before anything runs
        with pytest.raises(ConfigError, match="bptt.device is 'cuda' but no CUDA GPU is available here"):
            load_experiment(path, tmp_path / "res", device="cuda")
        return
    on_gpu = load_experiment(path, tmp_path / "res", device="cuda")
    assert on_gpu.runs[0].config.device == "cuda" and on_gpu.runs[0].config_hash != plan.runs[0].config_hash


def test_physics_axis_crosses_presets_with_algorithms_and_seeds(tmp_path):
    path = tmp_path / "axis.toml"
    path.write_text('[experiment]\nseeds = [0, 1]\nphysics = ["wall", "noisy"]\n'
                    "[bptt]\niterations = 2\nnum_envs = 8\nhorizon = 10\nhidden_sizes = [8]\n"
                    "[bptt.eval]\nepisodes = 20\n")
    plan = load_experiment(path, tmp_path / "res")
    assert [run.name for run in plan.runs] == ["wall/bptt/seed_0", "wall/bptt/seed_1",
                                               "noisy/bptt/seed_0", "noisy/bptt/seed_1"]
    assert [run.config.env.physics for run in plan.runs] == ["wall", "wall", "noisy", "noisy"]
    assert plan.runs[2].run_dir == tmp_path / "res" / "axis" / "noisy" / "bptt" / "seed_0"
    assert len({run.config_hash for run in plan.runs}) == 4

    outcome = run_experiment(path, tmp_path / "res", jobs=1, cpus_per_run=1, quiet=True)
    assert outcome.ok and len(outcome.completed) == 4
    manifest = json.loads((tmp_path / "res" / "axis" / "experiment.json").read_text())
    assert manifest["physics"] == ["wall", "noisy"]
    assert [(r["physics"], r["path"]) for r in manifest["runs"]][2] == ("noisy", "noisy/bptt/seed_0")
    assert len(manifest["invocations"]) == 1 and manifest["invocations"][0]["runs_completed"] == 4
    assert manifest["invocations"][0]["wall_time_s"] > 0
    run_experiment(path, tmp_path / "res", jobs=1, cpus_per_run=1, quiet=True)  # nothing to run: no new entry
    manifest = json.loads((tmp_path / "res" / "axis" / "experiment.json").read_text())
    assert len(manifest["invocations"]) == 1


def test_dry_run_lists_runs(finished_smoke, capsys):
    assert main([str(SMOKE), "--results", str(finished_smoke[0]), "--dry-run"]) == 0
    assert "bptt/seed_0" in capsys.readouterr().out


def test_gradient_study_files_go_to_their_own_runner(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("research.analysis.gradients")
    fake.run_gradient_study = lambda path, results, device=None, quiet=False: calls.append((path, results, device))
    monkeypatch.setitem(sys.modules, "research.analysis.gradients", fake)
    path = tmp_path / "grads.toml"
    path.write_text("[gradient_study]\nhorizons = [10, 20]\n")
    run_experiment(path, tmp_path / "res", device="cpu", quiet=True)
    assert calls == [(path, tmp_path / "res", "cpu")]


def test_scripts_skip_an_experiment_without_runs(tmp_path):
    exp_dir = tmp_path / "gradient_study"
    exp_dir.mkdir()
    for name in ("aggregate", "plot", "report"):
        done = run_script(name, exp_dir)
        assert done.returncode == 0 and "no finished training runs" in done.stdout
    missing = run_script("aggregate", tmp_path / "nope")
    assert missing.returncode != 0 and "no experiment directory" in missing.stderr


@pytest.mark.ray
def test_smoke_experiment_on_a_local_ray_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    outcome = run_experiment(SMOKE, tmp_path, jobs=2, backend="ray", cpus_per_run=1, quiet=True)
    assert outcome.ok and sorted(outcome.completed) == sorted(run.name for run in outcome.plan.runs)
    for run in outcome.plan.runs:
        assert run_status(run) == "done"
        assert {p.name for p in run.run_dir.iterdir()} == {"config.json", "metrics.csv", "summary.json", "policy.pt"}
    again = run_experiment(SMOKE, tmp_path, jobs=2, backend="ray", cpus_per_run=1, quiet=True)
    assert not again.completed and len(again.skipped) == len(outcome.plan.runs)
