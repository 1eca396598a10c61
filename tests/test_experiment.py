"""The experiment runner: planning, parallel runs, resume, errors, the Ray backend, and the scripts end to end."""

import csv
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import research.experiment as experiment_module
from research.config import ConfigError, config_hash
from research.experiment import load_experiment, main, run_experiment, run_status

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.toml"
#: What a finished run's directory holds (checkpoint.pt: the state when training ended).
FINISHED_FILES = {"config.json", "metrics.csv", "summary.json", "policy.pt", "checkpoint.pt"}


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
    assert {run.seed for run in plan.runs} == {0, 1} and len(plan.runs) == 2 * len({(r.physics, r.algo) for r in plan.runs})
    for run in plan.runs:
        assert {p.name for p in run.run_dir.iterdir()} == FINISHED_FILES
        assert run_status(run) == "done"
    manifest = json.loads((results / "smoke" / "experiment.json").read_text())
    assert [(r["algo"], r["seed"]) for r in manifest["runs"]] == [(r.algo, r.seed) for r in plan.runs]

    exp_dir = results / "smoke"
    for name in ("aggregate", "plot", "report"):
        done = run_script(name, exp_dir)
        assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((exp_dir / "summary.csv").open()))
    assert sorted((row["physics"], row["algo"]) for row in rows) == sorted(
        (physics, algo) for physics in manifest["physics"] for algo in manifest["algos"])
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
    (killed.run_dir / "checkpoint.pt").unlink()  # killed before its first checkpoint
    (killed.run_dir / "stale.tmp").write_text("left by a killed run")
    kept_mtime = (kept.run_dir / "summary.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="research.experiment"):
        outcome = run_experiment(SMOKE, smoke_copy, jobs=1, cpus_per_run=1, quiet=True)
    assert list(outcome.completed) == [killed.name] and len(outcome.skipped) == len(plan.runs) - 1
    assert f"{killed.name}: unfinished run" in caplog.text
    assert not (killed.run_dir / "stale.tmp").exists() and run_status(killed) == "done"
    assert (kept.run_dir / "summary.json").stat().st_mtime_ns == kept_mtime
    # moved aside, not deleted
    [aside] = (smoke_copy / "smoke" / "superseded").glob(f"unfinished-*/{killed.name}")
    assert (aside / "stale.tmp").read_text() == "left by a killed run" and not (aside / "summary.json").exists()


def test_resume_continues_a_killed_run_in_place_from_its_checkpoint(finished_smoke, smoke_copy, caplog, capsys):
    from research.algos.bptt import BPTT
    from research.harness import train
    from research.runs import RunWriter

    plan = load_experiment(SMOKE, smoke_copy)
    killed = next(run for run in plan.runs if run.algo == "bptt")
    other = next(run for run in plan.runs if run.algo == "shac")
    reference = json.loads((killed.run_dir / "summary.json").read_text())
    shutil.rmtree(killed.run_dir)

    def dies_at_iteration_4(config, run):
        algo = BPTT(config, run)
        step = algo.step
        algo.step = lambda i: (_ for _ in ()).throw(KeyboardInterrupt) if i == 4 else step(i)
        return algo

    # checkpoints after every iteration: checkpoint_every_s is not part of the config hash, so the runner resumes it
    config = dataclasses.replace(killed.config, checkpoint_every_s=1e-9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runner's process (cpus_per_run=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, dies_at_iteration_4, RunWriter(killed.run_dir, "bptt", config, "smoke"), quiet=True,
                  name="bptt")
    finally:
        torch.set_num_threads(threads)
    (other.run_dir / "summary.json").unlink()  # unfinished, with a checkpoint of another config: moved aside
    config_path = other.run_dir / "config.json"
    stale = torch.load(other.run_dir / "checkpoint.pt", weights_only=True)
    stale["config_hash"] = "0" * 16
    torch.save(stale, other.run_dir / "checkpoint.pt")
    assert run_status(killed) == "resumable" and run_status(other) == "incomplete" and config_path.exists()
    assert main([str(SMOKE), "--results", str(smoke_copy), "--dry-run"]) == 0
    assert "resumable" in capsys.readouterr().out

    with caplog.at_level(logging.INFO, logger="research.experiment"):
        outcome = run_experiment(SMOKE, smoke_copy, jobs=1, cpus_per_run=1, quiet=True)
    assert sorted(outcome.completed) == sorted([killed.name, other.name])
    assert f"{killed.name}: unfinished: resuming in place from its checkpoint after iteration 3" in caplog.text
    assert f"{other.name}: unfinished run" in caplog.text
    summary = outcome.completed[killed.name]
    assert summary["resumed_after"] == [3]
    clocks = {"wall_time_s", "eval_time_s", "checkpoint_time_s", "resumed_after"}
    assert {k: v for k, v in summary.items() if k not in clocks} == {
        k: v for k, v in reference.items() if k not in clocks}
    assert not list((smoke_copy / "smoke" / "superseded").glob(f"*/{killed.name}"))
    assert list((smoke_copy / "smoke" / "superseded").glob(f"unfinished-*/{other.name}"))


def test_changed_config_reruns_and_says_so(smoke_copy, tmp_path, caplog):
    changed = tmp_path / "smoke.toml"  # same experiment name, one seed and another bptt budget
    changed.write_text(SMOKE.read_text().replace("seeds = [0, 1]", "seeds = [0]")
                       .replace("iterations = 5", "iterations = 3"))
    with caplog.at_level(logging.INFO, logger="research.experiment"):
        outcome = run_experiment(changed, smoke_copy, jobs=2, cpus_per_run=1, quiet=True)
    assert "default/bptt/seed_0" in outcome.completed and outcome.completed["default/bptt/seed_0"]["iterations"] == 3
    assert "default/bptt/seed_0: the config changed" in caplog.text
    assert "no longer plans" in caplog.text and "default/bptt/seed_1" in caplog.text
    exp_dir = smoke_copy / "smoke"
    old_hash = config_hash(load_experiment(SMOKE, smoke_copy).runs[0].config)
    aside = exp_dir / "superseded" / old_hash / "default" / "bptt" / "seed_0"  # the finished run, moved aside whole
    assert json.loads((aside / "summary.json").read_text())["config_hash"] == old_hash
    assert {p.name for p in aside.iterdir()} == FINISHED_FILES
    done = run_script("aggregate", exp_dir)
    assert done.returncode == 0 and "not planned" in done.stderr and "superseded" not in done.stderr
    rows = {row["algo"]: row for row in csv.DictReader((exp_dir / "summary.csv").open())}
    assert rows["bptt"]["n_seeds"] == "1"

    caplog.clear()  # the config changed back: the run moved aside returns, nothing trains
    with caplog.at_level(logging.INFO, logger="research.experiment"):
        again = run_experiment(SMOKE, smoke_copy, jobs=2, cpus_per_run=1, quiet=True)
    assert again.ok and not again.completed and "moved back from" in caplog.text
    assert run_status(again.plan.runs[0]) == "done" and not aside.exists()
    new_hash = outcome.completed["default/bptt/seed_0"]["config_hash"]
    assert (exp_dir / "superseded" / new_hash / "default" / "bptt" / "seed_0" / "summary.json").is_file()
    assert "superseded" not in "".join(experiment_module._unplanned_run_dirs(again.plan))


def test_set_overrides_values_and_moves_the_changed_runs_aside(smoke_copy, capsys):
    exp_dir = smoke_copy / "smoke"
    before = json.loads((exp_dir / "default" / "bptt" / "seed_0" / "summary.json").read_text())["config_hash"]
    assert main([str(SMOKE), "--results", str(smoke_copy), "--quiet", "--jobs", "2", "--cpus-per-run", "1",
                 "--set", "bptt.iterations=3", "--set", "experiment.seeds=[0]"]) == 0
    plan = load_experiment(SMOKE, smoke_copy, overrides=["bptt.iterations=3", "experiment.seeds=[0]"])
    assert [run.seed for run in plan.runs] == [0] * len(plan.runs)
    config = json.loads((exp_dir / "default" / "bptt" / "seed_0" / "config.json").read_text())
    assert config["config"]["iterations"] == 3 and config["config_hash"] != before
    assert (exp_dir / "superseded" / before / "default" / "bptt" / "seed_0" / "summary.json").is_file()
    assert all(run_status(run) == "done" for run in plan.runs)  # the other algorithms' seed 0: unchanged, kept
    manifest = json.loads((exp_dir / "experiment.json").read_text())
    assert manifest["overrides"] == ["bptt.iterations=3", "experiment.seeds=[0]"]
    # an override of every algorithm's runs, and the mistakes
    every = load_experiment(SMOKE, smoke_copy, overrides=["max_wall_time_s=30"])
    assert {run.config.max_wall_time_s for run in every.runs} == {30.0}
    for overrides, match in ((["td3.lr=1e-3"], "unknown config key 'td3.lr'"), (["bptt=3"], "name a field of"),
                             (["bptt.lr=nan"], "bptt.lr must be a finite number, got nan")):
        with pytest.raises(ConfigError, match=match):
            load_experiment(SMOKE, smoke_copy, overrides=overrides)
    only_bptt = smoke_copy / "only_bptt.toml"
    only_bptt.write_text("[bptt]\niterations = 2\n")
    with pytest.raises(ConfigError, match="the experiment runs no 'td3'"):
        load_experiment(only_bptt, smoke_copy, overrides=["td3.policy_delay=3"])


TINY = ("[experiment]\nseeds = [0, 1, 2, 3]\n[bptt]\niterations = 2\nnum_envs = 8\nhorizon = 10\nhidden_sizes = [8]\n"
        "[bptt.eval]\nepisodes = 20\n")


def test_a_run_that_raises_dies_or_cannot_start_fails_alone_and_is_retried(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    planned, spawned = experiment_module.load_experiment, experiment_module.process_context

    def broken_plan(*args, **kwargs):  # seed 0 raises in its process: a zero-width layer that skipped validation
        plan = planned(*args, **kwargs)
        plan.runs[0].config.hidden_sizes = [0]
        return plan

    def cannot_start():
        raise EOFError("the fork server hung up")

    def hostile_context(runs):  # seed 1 is SIGKILLed once started (as the OOM killer does); seed 2 cannot start
        context = spawned(runs)

        class Hostile:
            Pipe = staticmethod(context.Pipe)

            @staticmethod
            def Process(**kwargs):
                process = context.Process(**kwargs)
                start = process.start

                def start_then_kill():
                    del process.start  # the process object is pickled to the child: no local function on it
                    start()
                    os.kill(process.pid, signal.SIGKILL)

                if kwargs["name"] == "bptt/seed_1":
                    process.start = start_then_kill
                if kwargs["name"] == "bptt/seed_2":
                    process.start = cannot_start
                return process

        return Hostile()

    monkeypatch.setattr(experiment_module, "load_experiment", broken_plan)
    monkeypatch.setattr(experiment_module, "process_context", hostile_context)
    outcome = run_experiment(path, tmp_path / "results", jobs=2, cpus_per_run=1, quiet=True)
    assert sorted(outcome.failed) == ["bptt/seed_0", "bptt/seed_1", "bptt/seed_2"]
    assert list(outcome.completed) == ["bptt/seed_3"]
    assert outcome.failed["bptt/seed_0"].startswith("ValueError: hidden_sizes")
    assert "killed by SIGKILL" in outcome.failed["bptt/seed_1"] and "out-of-memory" in outcome.failed["bptt/seed_1"]
    assert outcome.failed["bptt/seed_2"] == "its process could not start: EOFError: the fork server hung up"
    runs = {run.name: run for run in outcome.plan.runs}
    for name, reason in outcome.failed.items():
        assert run_status(runs[name]) == "failed"
        assert json.loads((runs[name].run_dir / "failure.json").read_text())["reason"] == reason
    manifest = json.loads((tmp_path / "results" / "tiny" / "experiment.json").read_text())
    invocation = manifest["invocations"][-1]
    assert invocation["runs_failed"] == 3 and invocation["runs_completed"] == 1
    assert invocation["failures"]["bptt/seed_2"] == outcome.failed["bptt/seed_2"]
    monkeypatch.undo()
    assert main([str(path), "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    assert "failed" in capsys.readouterr().out

    again = run_experiment(path, tmp_path / "results", jobs=2, cpus_per_run=1, quiet=True)  # the next invocation
    assert again.ok and sorted(again.completed) == sorted(outcome.failed) and len(again.skipped) == 1
    aside = sorted(p.relative_to(tmp_path / "results" / "tiny" / "superseded").parts[1:]
                   for p in (tmp_path / "results" / "tiny" / "superseded").glob("failed-*/bptt/seed_*"))
    assert aside == [("bptt", "seed_0"), ("bptt", "seed_1"), ("bptt", "seed_2")]


def test_unknown_experiment_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"not found; available in .*'pendulum_compare'.*'smoke'"):
        run_experiment(ROOT / "experiments" / "nope.toml", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(ROOT / "experiments" / "nope.toml"), "--results", str(tmp_path)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("text, match", [
    ('[experiment]\nalgos = ["bptt", "nope"]\n[bptt]\n', r"unknown algorithm 'nope'.*valid: \['bptt', 'bptt_blend', 'bptt_finetune', 'ddpg'"),
    ('[bptt_x]\nalgo = "nope"\n', r"\[bptt_x\].algo must be one of \['bptt'"),
    ('[bptt_x]\nalgo = "bptt"\nlrr = 1.0\n', "unknown config key 'bptt.lrr'"),
    ('[fast]\nalgo = "bptt"\n', r"variant \[fast\] of 'bptt' must be named 'bptt_<suffix>', e.g. \[bptt_fast\]"),
    ("[experiment]\nseeds = [0]\n", "no algorithm to run"),
    ("[bptt]\n[bptt_typo]\n", r"unknown table \[bptt_typo\]"),
    ("[experiment]\nseeds = [1, 1]\n[bptt]\n", "distinct seeds"),
    ("[bptt]\nlrr = 1.0\n", "unknown config key 'bptt.lrr'"),
    ('[experiment]\nphysics = ["default", "icy"]\n[bptt]\n', r"experiment.physics must list presets .* unknown \['icy'\]"),
    ('[experiment]\nphysics = ["wall", "wall"]\n[bptt]\n', "experiment.physics must not repeat a preset"),
    ('[experiment]\nphysics = ["wall"]\n[bptt.env]\nphysics = "noisy"\n', r"\[bptt.env\] sets physics while"),
    ('[experiment]\nphysics = ["default"]\n[bptt]\n[bptt.by_physics.wall]\nlr = 0.1\n',
     r"\[bptt.by_physics.wall\] is not in experiment.physics \['default'\]"),
    ("[bptt]\n[bptt.by_physics.wall]\nlr = 0.1\n", r"\[bptt.by_physics\] needs experiment.physics"),
    ("[experiment]\nenv_steps = -1\n[bptt]\n", r"experiment.env_steps and experiment.wall_time_s must be >= 0"),
    ("[experiment]\nevaluations = 10\n[bptt]\n", r"experiment.evaluations = 10 needs a common budget to divide"),
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


def test_variant_tables_run_an_algorithm_under_their_own_name(tmp_path):
    path = tmp_path / "variants.toml"
    path.write_text("[bptt]\niterations = 2\nnum_envs = 8\nhorizon = 10\nhidden_sizes = [8]\n[bptt.eval]\nepisodes = 20\n"
                    '[bptt_slow]\nalgo = "bptt"\nlr = 1e-4\niterations = 2\nnum_envs = 8\nhorizon = 10\n'
                    "hidden_sizes = [8]\n[bptt_slow.eval]\nepisodes = 20\n")
    plan = load_experiment(path, tmp_path / "res", overrides=["bptt_slow.iterations=3"])
    assert [(run.algo, run.name) for run in plan.runs] == [("bptt", "bptt/seed_0"), ("bptt", "bptt_slow/seed_0")]
    assert (plan.runs[1].config.lr, plan.runs[1].config.iterations) == (1e-4, 3)
    assert plan.runs[0].config.iterations == 2 and plan.runs[1].run_dir.parent.name == "bptt_slow"

    outcome = run_experiment(path, tmp_path / "res", jobs=1, cpus_per_run=1, quiet=True,
                             overrides=["bptt_slow.iterations=3"])
    assert outcome.ok and len(outcome.completed) == 2
    summary = json.loads((tmp_path / "res" / "variants" / "bptt_slow" / "seed_0" / "summary.json").read_text())
    assert (summary["algo"], summary["label"], summary["iterations"]) == ("bptt", "bptt_slow", 3)
    manifest = json.loads((tmp_path / "res" / "variants" / "experiment.json").read_text())
    assert manifest["algos"] == ["bptt", "bptt_slow"] and manifest["runs"][1]["trainer"] == "bptt"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from _rundata import load_runs
    finally:
        sys.path.pop(0)
    assert [run.algo for run in load_runs(tmp_path / "res" / "variants")] == ["bptt", "bptt_slow"]


def test_by_physics_tables_set_one_row_per_task(tmp_path):
    path = tmp_path / "race.toml"
    path.write_text('[experiment]\nphysics = ["default", "weak", "cartpole"]\n'
                    "[bptt]\nlr = 0.01\n[bptt.eval]\nepisodes = 20\n"
                    '[bptt_tuned]\nalgo = "bptt"\nlr = 0.02\n[bptt_tuned.eval]\nepisodes = 20\n'
                    "[bptt_tuned.by_physics.weak]\nlr = 0.003\n[bptt_tuned.by_physics.weak.eval]\nepisodes = 30\n"
                    "[bptt_tuned.by_physics.cartpole]\nwindow = 16\n")
    runs = {(run.physics, run.label or run.algo): run.config for run in load_experiment(path, tmp_path).runs}
    assert runs["default", "bptt_tuned"].lr == 0.02 and runs["default", "bptt_tuned"].window == 0
    assert (runs["weak", "bptt_tuned"].lr, runs["weak", "bptt_tuned"].eval.episodes) == (0.003, 30)
    assert runs["weak", "bptt_tuned"].env.physics == "weak"  # the axis still sets the physics
    assert (runs["cartpole", "bptt_tuned"].window, runs["cartpole", "bptt_tuned"].lr) == (16, 0.02)
    assert all(runs[p, "bptt"].lr == 0.01 for p in ("default", "weak", "cartpole"))


def test_tables_from_reuses_settings_tuned_on_one_entry(tmp_path):
    """experiment.tables_from runs another file's tables, as on its tables_at entry (tuned once on default physics,
    reused on the presets); the file's own table of that name wins; bad references are one-line errors."""
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "race.toml").write_text(
        '[experiment]\nphysics = ["default", "cartpole"]\n[bptt]\n'
        '[bptt_tuned]\nalgo = "bptt"\nlr = 0.02\nhorizon = 32\n[bptt_tuned.by_physics.default]\nlr = 0.004\n'
        '[bptt_tuned.by_physics.cartpole]\nlr = 0.05\n[shac_tuned]\nalgo = "shac"\nlr = 0.003\n')
    path = tmp_path / "presets.toml"
    body = ('[experiment]\nphysics = ["wall", "weak"]\nseeds = [0]\nalgos = ["bptt_tuned", "shac_tuned"]\n'
            'tables_from = "tuned/race.toml"\n{at}{own}')
    path.write_text(body.format(at='tables_at = "default"\n', own=""))
    runs = {(run.physics, run.label): run.config for run in load_experiment(path, tmp_path).runs}
    assert {p: (runs[p, "bptt_tuned"].lr, runs[p, "bptt_tuned"].horizon) for p in ("wall", "weak")} == {
        "wall": (0.004, 32), "weak": (0.004, 32)}  # default's tuned settings, on each preset
    assert runs["wall", "bptt_tuned"].env.physics == "wall" and runs["weak", "shac_tuned"].lr == 0.003
    path.write_text(body.format(at='tables_at = "default"\n', own='[shac_tuned]\nalgo = "shac"\nlr = 0.001\n'))
    assert {run.config.lr for run in load_experiment(path, tmp_path).runs if run.label == "shac_tuned"} == {0.001}
    path.write_text(body.format(at="", own=""))
    with pytest.raises(ConfigError, match=r"experiment.tables_at must name .*\[bptt_tuned.by_physics\]"):
        load_experiment(path, tmp_path)
    path.write_text(body.format(at='tables_at = "wall"\n', own=""))
    with pytest.raises(ConfigError, match=r"tables_at = 'wall' is not in .*\['default', 'cartpole'\]"):
        load_experiment(path, tmp_path)
    path.write_text(body.format(at="", own="").replace("tuned/race.toml", "tuned/nothing.toml"))
    with pytest.raises(ConfigError, match=r"tables_from = 'tuned/nothing.toml': no experiment file at"):
        load_experiment(path, tmp_path)


def test_common_budget_cuts_every_method_alike(tmp_path):
    """experiment.env_steps / wall_time_s: every run cut to the same env steps (iterations or total_env_steps, as the
    tuning driver cuts its trials) and capped at the same training seconds; a bad value is a one-line error."""
    path = tmp_path / "budget.toml"
    path.write_text("[experiment]\nseeds = [0]\nenv_steps = 40_000\nwall_time_s = 30\n[bptt]\nnum_envs = 32\n"
                    "horizon = 25\n[ddpg]\n[ppo]\nnum_envs = 64\nunroll_length = 16\n")
    runs = {run.algo: run.config for run in load_experiment(path, tmp_path).runs}
    assert runs["bptt"].iterations == 40_000 // (32 * 25) and runs["ddpg"].total_env_steps == 40_000
    assert runs["ppo"].total_env_steps == 40_000 // 1024 * 1024
    assert {(c.max_env_steps, c.max_wall_time_s) for c in runs.values()} == {(40_000, 30.0)}
    assert {c.eval.interval_s for c in runs.values()} == {0.0} and runs["ddpg"].eval.interval_env_steps == 2_000
    path.write_text(path.read_text().replace("wall_time_s = 30\n", "wall_time_s = 30\nevaluations = 8\n"))
    runs = {run.algo: run.config for run in load_experiment(path, tmp_path).runs}
    assert {(c.eval.interval_env_steps, c.eval.interval_s) for c in runs.values()} == {(5_000, 3.75)}


def test_order_algos_runs_each_method_on_every_physics_first(tmp_path):
    path = tmp_path / "order.toml"
    body = '[experiment]\nphysics = ["default", "weak"]\nseeds = [0]\n{order}[bptt]\n[shac]\n'
    path.write_text(body.format(order=""))
    cells = [(run.physics, run.algo) for run in load_experiment(path, tmp_path).runs]
    assert cells == [("default", "bptt"), ("default", "shac"), ("weak", "bptt"), ("weak", "shac")]
    path.write_text(body.format(order='order = "algos"\n'))
    runs = load_experiment(path, tmp_path).runs
    assert [(run.physics, run.algo) for run in runs] == [("default", "bptt"), ("weak", "bptt"), ("default", "shac"),
                                                          ("weak", "shac")]
    assert runs[1].run_dir == tmp_path / "order" / "weak" / "bptt" / "seed_0"  # the same directories either way
    path.write_text(body.format(order='order = "seeds"\n'))
    with pytest.raises(ConfigError, match=r"experiment.order must be one of \['physics', 'algos'\], got 'seeds'"):
        load_experiment(path, tmp_path)


COMMITTED = sorted((ROOT / "experiments").glob("*.toml")) + sorted((ROOT / "experiments" / "tuned").glob("*.toml"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_every_committed_experiment_file_loads(path, tmp_path):
    """Every experiment, tuning and gradient-study file in the repository parses into runs (or searches, or a
    measurement) with its defaults resolved: a renamed field or a missing imported file fails here, not hours into a
    make target."""
    import tomllib

    data = tomllib.loads(path.read_text())
    if "gradient_study" in data:
        from research.analysis.gradients import load_study_config

        assert load_study_config(path).physics
    elif "tune" in data:
        from research.tune import load_tune

        assert load_tune(path, tmp_path, tuned_dir=tmp_path / "tuned").searches
    else:
        assert load_experiment(path, tmp_path).runs


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
        assert {p.name for p in run.run_dir.iterdir()} == FINISHED_FILES
    again = run_experiment(SMOKE, tmp_path, jobs=2, backend="ray", cpus_per_run=1, quiet=True)
    assert not again.completed and len(again.skipped) == len(outcome.plan.runs)
