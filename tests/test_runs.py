"""The run-directory contract: what a writer leaves on disk, atomically, and what readers may rely on."""

import csv
import json
import subprocess
import sys

import torch

import research
from research.algos.bptt import BPTTConfig
from research.policies import make_policy
from research.rundir import (
    CONFIG,
    FIXED_COLUMNS,
    METRICS,
    POLICY,
    SUMMARY,
    atomic_write_text,
    is_finished,
    metrics_csv,
    read_metrics_rows,
    run_dir,
)
from research.runs import RunWriter


def test_the_contract_module_needs_only_the_standard_library():
    code = "import sys, research.rundir; sys.exit(int('torch' in sys.modules or 'numpy' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_writer_leaves_config_metrics_policy_and_summary_last(tmp_path):
    config = BPTTConfig(iterations=3)
    writer = RunWriter(tmp_path, "bptt", config, experiment="exp")
    assert json.loads((tmp_path / CONFIG).read_text())["config"]["iterations"] == 3
    assert not is_finished(tmp_path)
    writer.log({"iteration": 0, "env_steps": 0, "wall_time_s": 0.0, "eval/return_mean": -1000.0})
    writer.log({"iteration": 1, "env_steps": 10, "wall_time_s": 0.5, "train/loss": torch.tensor(2.0)})
    writer.flush()
    rows = list(csv.DictReader((tmp_path / METRICS).open()))
    assert list(rows[0])[:3] == list(FIXED_COLUMNS) and rows[1]["eval/return_mean"] == "" and rows[1]["train/loss"] == "2.0"
    summary = writer.finish(make_policy([4]), {"algo": "ignored", "env_steps": 10, "eval": {"return_mean": -900.0}})
    assert is_finished(tmp_path) and (tmp_path / POLICY).is_file()
    on_disk = json.loads((tmp_path / SUMMARY).read_text())
    assert on_disk == summary and on_disk["algo"] == "bptt" and on_disk["seed"] == 0 and on_disk["config_hash"]
    assert research.load_policy(tmp_path / POLICY)(torch.zeros(3)).shape == (1,)


def test_a_rewritten_run_is_unfinished_until_it_finishes_again(tmp_path):
    config = BPTTConfig(iterations=3)
    RunWriter(tmp_path, "bptt", config).finish(make_policy([4]), {"env_steps": 0, "eval": {}})
    assert is_finished(tmp_path)
    RunWriter(tmp_path, "bptt", config)
    assert not is_finished(tmp_path)


def test_metrics_csv_round_trip_and_empty_cells(tmp_path):
    text = metrics_csv([{"iteration": 1, "env_steps": 2, "wall_time_s": 0.1, "train/x": None},
                        {"iteration": 2, "env_steps": 4, "wall_time_s": 0.2, "eval/y": 3.5}])
    atomic_write_text(tmp_path / METRICS, text)
    rows = read_metrics_rows(tmp_path / METRICS)
    assert rows[0]["train/x"] is None and rows[1]["eval/y"] == 3.5 and rows[1]["train/x"] is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_dir_layout():
    assert str(run_dir("results", "exp", "sac", 4)) == "results/exp/sac/seed_4"


def test_a_torchrl_logger_mirrors_the_rows(tmp_path):
    config = BPTTConfig(iterations=3, logger="csv")
    writer = RunWriter(tmp_path, "bptt", config, experiment="exp")
    writer.log({"iteration": 1, "env_steps": 10, "wall_time_s": 0.5, "train/loss": 2.0, "train/none": None})
    writer.log({"iteration": 2, "env_steps": 20, "wall_time_s": 0.9, "train/loss": 1.5})
    mirrored = sorted((tmp_path / "logs").rglob("*.csv"))
    assert mirrored, "the CSV logger wrote nothing"
    text = "".join(p.read_text() for p in mirrored)
    assert "2.0" in text and "1.5" in text
