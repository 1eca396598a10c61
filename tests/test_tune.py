"""research.tune: a tiny BPTT search end to end (record, trials.csv, the written experiment file, resume after a kill),
equal budgets, the disjoint tuning seeds and start states, and one-line errors for bad tables."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from research.algos import ALGOS, get_algo  # noqa: E402
from research.algos.bptt import BPTTConfig  # noqa: E402
from research.config import ConfigError, config_hash, from_dict  # noqa: E402
from research.evaluation import EVAL_NOISE_SEED, EVAL_PARAMS_SEED, EVAL_SEED  # noqa: E402
from research.experiment import load_experiment  # noqa: E402
from research.runs import cpu_model  # noqa: E402
from research.tune import (  # noqa: E402
    JOURNAL,
    SEARCH,
    TRIALS_CSV,
    _optuna,
    fit_budget,
    load_tune,
    objective_value,
    run_tune,
    write_tuned,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 2048  # 16 pendulums x 16 steps = 256 per iteration: 8 iterations (4 with 32 pendulums)

TINY = """
[tune]
trials = {trials}
env_steps = 2048
wall_time_s = 60
seeds = [1000, 1001]
report_seeds = [0, 1, 2]
eval_episodes = 16
startup_trials = 1
hidden_sizes = [16, 16]

[tune.space.bptt]
lr = {{low = 1e-3, high = 3e-2, log = true}}
num_envs = {{choices = [16, 32]}}

[bptt]
horizon = 16
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 1-trial search, then a trial left running (a kill), then the same file planning 2 trials: resumed."""
    root = tmp_path_factory.mktemp("tune")
    path = root / "tiny.toml"
    results, tuned = root / "results", root / "tuned"
    path.write_text(TINY.format(trials=1))
    first = run_tune(path, results, jobs=2, quiet=True, tuned_dir=tuned)["default/bptt"]
    directory = results / "tune" / "tiny" / "default" / "bptt"
    finished = directory / "trials" / "trial_0000" / "seed_1000" / "summary.json"
    mtime = finished.stat().st_mtime_ns

    plan = load_tune(path, results, tuned_dir=tuned)
    optuna = _optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="tiny/default/bptt",
                              storage=JournalStorage(JournalFileBackend(str(directory / JOURNAL))))
    stale = study.ask()  # asked, never told: what a kill in the middle of a trial leaves
    stale_params = {p.name: p.suggest(stale) for p in plan.searches[0].params}
    study.ask()  # asked, killed before its parameters were drawn: never runs, never counts

    path.write_text(TINY.format(trials=2))
    record = run_tune(path, results, jobs=2, quiet=True, tuned_dir=tuned)["default/bptt"]
    return {"first": first, "record": record, "directory": directory, "tuned": tuned / "tiny.toml",
            "mtime": mtime, "finished": finished, "stale": stale_params}


def test_search_record_and_resume(search):
    first, record, directory = search["first"], search["record"], search["directory"]
    assert first["trials_finished"] == 1
    assert record["trials_finished"] == 2 and [t["number"] for t in record["trials"]] == [0, 1, 2]
    assert record["trials"][2]["state"] == "FAIL" and "never ran" in record["trials"][2]["failure"]
    record = {**record, "trials": record["trials"][:2]}
    assert all(t["state"] == "COMPLETE" and math.isfinite(t["value"]) for t in record["trials"])
    # trial 0 was kept, not run again; the trial left running was finished with the parameters it was asked with
    assert record["trials"][0]["value"] == first["trials"][0]["value"]
    assert search["finished"].stat().st_mtime_ns == search["mtime"]
    assert record["trials"][1]["params"] == search["stale"]
    for trial in record["trials"]:
        assert 1e-3 <= trial["params"]["lr"] <= 3e-2 and trial["params"]["num_envs"] in (16, 32)
        returns = [trial["runs"][str(s)]["return"] for s in (1000, 1001)]
        assert trial["value"] == pytest.approx(sum(returns) / 2)  # objective = mean over the tuning seeds
    best = max(record["trials"], key=lambda t: t["value"])
    assert record["best"]["number"] == best["number"] and record["best"]["value"] == best["value"]
    assert record["architecture"]["policy_hidden_sizes"] == [16, 16]
    assert json.loads((directory / SEARCH).read_text())["best"] == record["best"]
    rows = list(csv.DictReader((directory / TRIALS_CSV).open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2] and float(rows[1]["value"]) == record["trials"][1]["value"]
    assert rows[0]["cpu"] == record["trials"][0]["cpu"] == cpu_model()  # which CPU the wall-clock cap ran on


def test_equal_budget_in_env_steps(search):
    for trial in search["record"]["trials"][:2]:
        per_iteration = trial["params"]["num_envs"] * 16
        assert trial["budget"] == {"iterations": BUDGET // per_iteration}
        for run in trial["runs"].values():
            assert BUDGET - per_iteration < run["env_steps"] <= BUDGET


def test_tuning_seeds_and_states_are_disjoint_from_the_reported(search):
    record = search["record"]
    tuning = record["eval"]["tuning"]
    assert {tuning["seed"], tuning["noise_seed"], tuning["params_seed"]}.isdisjoint(
        {EVAL_SEED, EVAL_NOISE_SEED, EVAL_PARAMS_SEED})
    assert set(record["seeds"]["tuning"]).isdisjoint(record["seeds"]["reported"])
    config = json.loads((search["directory"] / "trials" / "trial_0001" / "seed_1001" / "config.json").read_text())
    assert config["config"]["seed"] == 1001
    assert {k: config["config"]["eval"][k] for k in ("seed", "noise_seed", "params_seed")} == {
        "seed": tuning["seed"], "noise_seed": tuning["noise_seed"], "params_seed": tuning["params_seed"]}


def test_written_experiment_file_runs_the_best_settings(search, tmp_path):
    record, path = search["record"], search["tuned"]
    text = path.read_text()
    assert "tiny/default/bptt" in text and "search.json" in text  # names the search that produced it
    data = tomllib.loads(text)
    # the race's two rows: the recipe (the trainer's defaults) and the tuned settings, a variant of the same trainer
    assert data["experiment"]["algos"] == ["bptt", "bptt_tuned"] and data["bptt"] == {}
    assert data["bptt_tuned"] == {"algo": "bptt", "horizon": 16, "hidden_sizes": [16, 16], **record["best"]["params"]}
    # the race runs at the tuning's budget, every row cut to it as the trials were: here the recipe's one iteration
    # (128 x 64 steps) is larger than the tiny budget, a one-line error naming the row; a larger budget runs
    assert (data["experiment"]["env_steps"], data["experiment"]["wall_time_s"]) == (BUDGET, 60)
    with pytest.raises(ConfigError, match=r"\[bptt\] under experiment.env_steps = 2048: one iteration simulates 8192"):
        load_experiment(path, tmp_path)
    plan = load_experiment(path, tmp_path, overrides=["experiment.env_steps=16384"])
    assert sorted({run.seed for run in plan.runs}) == [0, 1, 2]
    tuned = [run for run in plan.runs if run.label == "bptt_tuned"]
    recipe = [run for run in plan.runs if run.label == ""]
    assert len(tuned) == len(recipe) == 3 and all(run.algo == "bptt" for run in plan.runs)
    assert tuned[0].config.lr == record["best"]["params"]["lr"] and recipe[0].config.lr == BPTTConfig().lr
    assert tuned[0].config.eval.seed == EVAL_SEED  # reported runs are scored on the reported states
    per_iteration = record["best"]["params"]["num_envs"] * 16
    assert (tuned[0].config.iterations, tuned[0].config.max_env_steps) == (16384 // per_iteration, 16384)
    assert (recipe[0].config.iterations, recipe[0].config.max_wall_time_s) == (16384 // (128 * 64), 60)


def test_several_tasks_write_one_race_file_with_per_task_tables(tmp_path):
    """Two tasks: one file, the settings every task shares in [bptt_tuned], the rest per task; a method whose
    search has not finished on every task is left out (its tuned row would run untuned elsewhere)."""
    path = tmp_path / "race.toml"
    path.write_text(TINY.format(trials=2).replace("hidden_sizes = [16, 16]", 'tasks = ["default", "weak"]\n'
                                                  "hidden_sizes = [16, 16]"))
    plan = load_tune(path, tmp_path / "results", tuned_dir=tmp_path / "tuned")

    def record(task, lr, finished=2):
        table = {"horizon": 16, "hidden_sizes": [16, 16], "lr": lr, "num_envs": 16}
        return {"search": f"race/{task}/bptt", "best": {"number": 1, "value": -150.0, "table": table},
                "trials_finished": finished, "trials_planned": 2, "trials": [{"number": 1, "budget": {"iterations": 4}}]}

    assert write_tuned(plan, {"default": {"bptt": record("default", 0.01)},
                              "weak": {"bptt": record("weak", 0.002, finished=1)}}) is None
    written = write_tuned(plan, {"default": {"bptt": record("default", 0.01)}, "weak": {"bptt": record("weak", 0.002)}})
    data = tomllib.loads(written.read_text())
    assert data["experiment"]["physics"] == ["default", "weak"] and data["experiment"]["algos"] == ["bptt", "bptt_tuned"]
    assert data["experiment"]["evaluations"] == 20  # tune.evaluations: the race is scored every 1/20 of its budget
    assert data["bptt_tuned"] == {"algo": "bptt", "horizon": 16, "hidden_sizes": [16, 16], "num_envs": 16,
                                  "by_physics": {"default": {"lr": 0.01}, "weak": {"lr": 0.002}}}
    runs = {(run.physics, run.label or run.algo): run.config for run in load_experiment(written, tmp_path, overrides=["experiment.env_steps=16384"]).runs}
    assert runs["weak", "bptt_tuned"].lr == 0.002 and runs["default", "bptt_tuned"].lr == 0.01
    assert runs["weak", "bptt"].lr == BPTTConfig().lr and runs["weak", "bptt_tuned"].env.physics == "weak"


@pytest.mark.parametrize("order,expected", [
    ("rounds", [("default", [0]), ("weak", [0]), ("default", [1]), ("weak", [1])]),
    ("searches", [("default", [0]), ("default", [1]), ("weak", [0]), ("weak", [1])]),
])
def test_rounds_interleave_the_searches(tmp_path, monkeypatch, order, expected):
    """order = "rounds" runs one batch of each search in turn (a tuning spread over sessions gives every method the
    same CPUs); "searches" runs each to its end. Both finish every search and write the race file."""
    import research.tune as tune

    path = tmp_path / "rounds.toml"
    path.write_text(TINY.format(trials=2).replace("hidden_sizes = [16, 16]", f'tasks = ["default", "weak"]\n'
                                                  f'order = "{order}"\nhidden_sizes = [16, 16]'))
    calls = []

    def run_batch(plan, search, study, batch, *args):  # scheduling only: tell each trial a value, run nothing
        calls.append((search.task, [trial.number for trial, _ in batch]))
        for trial, _ in batch:
            study.tell(trial.number, -100.0 - trial.number)

    monkeypatch.setattr(tune, "_run_batch", run_batch)
    records = run_tune(path, tmp_path / "results", jobs=2, quiet=True, tuned_dir=tmp_path / "tuned")
    assert calls == expected  # jobs 2 over 2 tuning seeds: one trial at a time
    assert {name: r["trials_finished"] for name, r in records.items()} == {"default/bptt": 2, "weak/bptt": 2}
    assert tomllib.loads((tmp_path / "tuned" / "rounds.toml").read_text())["experiment"]["physics"] == ["default",
                                                                                                        "weak"]


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac", "shac", "ppo", "ptd3"])
def test_every_method_is_cut_to_the_budget(algo):
    if algo not in ALGOS:
        pytest.skip(f"{algo} is not registered")
    config_cls, _ = get_algo(algo)
    budget = 200_000
    data = {"total_env_steps": 409_600} if hasattr(config_cls, "total_env_steps") else {}
    config, cut = fit_budget(from_dict(config_cls, data), budget)
    steps = getattr(config, "total_env_steps", None)
    if steps is None:
        steps = config.iterations * config.steps_per_iteration
    assert cut and budget - max(getattr(config, "frames_per_batch", 0),
                                getattr(config, "steps_per_iteration", 0)) < steps <= budget


def test_harness_stops_before_passing_max_env_steps():
    from research.algos.bptt import BPTTConfig
    from research.train import train

    config = BPTTConfig(iterations=50, num_envs=8, horizon=16, hidden_sizes=[8], max_env_steps=1000)
    config.eval.episodes = 4
    summary = train(config, "bptt")
    assert summary["env_steps"] == 896 and summary["iterations"] == 7  # an 8th would reach 1024


def test_max_env_steps_keeps_recorded_hashes():
    run = ROOT / "results" / "tune_race" / "default" / "bptt" / "seed_0"  # the race's recipe BPTT
    if not (run / "summary.json").is_file():
        pytest.skip("no recorded tune_race run")
    config = json.loads((run / "config.json").read_text())["config"]
    rebuilt = from_dict(get_algo("bptt")[0], config)
    assert config_hash(rebuilt) == json.loads((run / "summary.json").read_text())["config_hash"]


def test_the_device_a_search_runs_on_is_its_fingerprint_not_how_it_was_named(tmp_path):
    """Without --device the trials run on the CPU, as with --device cpu: both resume the same studies (a fingerprint
    that differed moved a finished tuning aside and started it again); another device is another tuning."""
    from research.tune import _fingerprint

    path = tmp_path / "fp.toml"
    path.write_text(TINY.format(trials=2))

    def fingerprints(device):
        plan = load_tune(path, tmp_path / "results", device=device, tuned_dir=tmp_path / "tuned")
        return [_fingerprint(plan, search) for search in plan.searches]

    plan = load_tune(path, tmp_path / "results", device="cpu", tuned_dir=tmp_path / "tuned")
    assert fingerprints(None) == fingerprints("cpu") != [_fingerprint(dataclasses.replace(plan, device="cuda"), search)
                                                         for search in plan.searches]


def test_objective_iqm():
    assert objective_value([1.0, 2.0, 3.0, 100.0], "iqm") == 2.5
    assert objective_value([1.0, 2.0, 3.0, 100.0], "mean") == 26.5


def test_example_file_loads(tmp_path):
    text = (ROOT / "experiments" / "tune_pendulum.toml").read_text()
    data = tomllib.loads(text)
    missing = [algo for algo in data["tune"]["space"] if algo not in ALGOS]
    for algo in missing:  # being written elsewhere: skip them until they are registered
        text = text.replace(f"[tune.space.{algo}]", f"[unused_{algo}]")
        text = text.replace(f', "{algo}"', "")
    lines = [line for line in text.splitlines()]
    keep, skipping = [], False
    for line in lines:
        if line.startswith("["):
            skipping = line.startswith("[unused_")
        if not skipping:
            keep.append(line)
    path = tmp_path / "tune_pendulum.toml"
    path.write_text("\n".join(keep))
    plan = load_tune(path, tmp_path)
    assert {s.algo for s in plan.searches} >= {"bptt", "shac", "ddpg", "td3", "sac"}
    assert plan.settings.trials == 24


BAD = [
    ("[tune.space.bptt]\nlr = {low = 1e-2, high = 1e-3}", r"tune\.space\.bptt\.lr: low must be < high"),
    ("[tune.space.bptt]\nlr = {low = 0.0, high = 1e-3, log = true}", r"tune\.space\.bptt\.lr: log = true needs"),
    ("[tune.space.bptt]\nlr = {low = 1e-4, hi = 1e-3}", r"tune\.space\.bptt\.lr: unknown key 'hi'"),
    ("[tune.space.bptt]\nlearning_rate = {low = 1e-4, high = 1e-3}", r"tune\.space\.bptt\.learning_rate: unknown"),
    ("[tune.space.bptt]\niterations = {low = 1, high = 10}", r"tune\.space\.bptt\.iterations: set by the tuning"),
    ("[tune.space.bptt]\nnum_envs = {choices = [16, 0]}", r"tune\.space\.bptt\.num_envs = 0: .*num_envs must be > 0"),
    ("[tune.space.bptt]\nnum_envs = {choices = []}", r"tune\.space\.bptt\.num_envs\.choices must be a non-empty"),
    ("[tune.space.bptt]\nnum_envs = {low = 8.5, high = 32}", r"tune\.space\.bptt\.num_envs\.low must be an integer"),
    ("[tune.space.nope]\nlr = {low = 1e-4, high = 1e-3}", r"tune\.space\.nope: unknown algorithm"),
    ("[tune.space.bptt]\nlr = {low = 1e-4, high = 1e-3}\n[bptt]\niterations = 5", r"\[bptt\] sets iterations"),
]
BAD_TUNE = [
    ("trails = 3", r"unknown config key 'tune\.trails'"),
    ("seeds = [1, 1000]", r"tune\.seeds must be disjoint from tune\.report_seeds"),
    (f"eval_seed = {EVAL_SEED}", r"tune\.eval_seed: 1000003 is a seed of the reported evaluation"),
    ("tasks = ['moon']", r"tune\.tasks: unknown task 'moon'"),
    ("env_steps = 100", r"under tune\.env_steps = 100: one iteration simulates 8192 env steps, more than the budget"),
    ("wall_time_s = 0", r"tune\.wall_time_s must be > 0"),
    ("objective = 'median'", r"tune\.objective must be one of"),
]


@pytest.mark.parametrize("space, message", BAD)
def test_bad_space_is_one_line_naming_the_field(tmp_path, space, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[tune]\nenv_steps = 100000\n{space}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_tune(path, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("line, message", BAD_TUNE)
def test_bad_tune_table_is_one_line_naming_the_field(tmp_path, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[tune]\n{line}\n[tune.space.bptt]\nlr = {{low = 1e-4, high = 1e-3}}\n")
    with pytest.raises(ConfigError, match=message):
        load_tune(path, tmp_path)


def test_missing_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"the 'tune' extra: pip install -e '\.\[tune\]'"):
        _optuna()
