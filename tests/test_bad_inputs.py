"""One line for every bad input: each is a clean error that names the field and what is expected.

The Python API raises a one-line ``ConfigError``/``ValueError``; the command lines print one line on stderr (no
traceback) and exit with code 2.
"""

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

import research
import research.config
from research import experiment, train
from research.algos.bptt import BPTTConfig
from research.config import ConfigError
from research.policies import make_policy, save_policy
from research.train import resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_one_line(message: str, *names: str) -> None:
    assert message and "\n" not in message.strip() and "Traceback" not in message, message
    for name in names:
        assert name in message, (name, message)


@pytest.mark.parametrize("algo, override, names", [
    ("bptt", "lr=nan", ["bptt.lr", "finite", "nan"]),
    ("ddpg", "actor_lr=nan", ["ddpg.actor_lr", "finite"]),
    ("bptt", "lr=inf", ["bptt.lr", "finite", "inf"]),
    ("shac", "lr=-inf", ["shac.lr", "finite"]),
    ("bptt", "grad_clip=nan", ["bptt.grad_clip", "finite"]),
    ("sac", "max_wall_time_s=nan", ["sac.max_wall_time_s", "finite"]),
    ("ddpg", "noise_std=nan", ["ddpg.noise_std", "finite"]),
    ("td3", "tau=inf", ["td3.tau", "finite"]),
    ("bptt", "hidden_sizes=[0]", ["bptt.hidden_sizes", "positive", "[0]"]),
    ("td3", "hidden_sizes=[-4]", ["td3.hidden_sizes", "positive", "[-4]"]),
    ("ddpg", "critic_hidden_sizes=[8, 0]", ["ddpg.critic_hidden_sizes", "positive"]),
    ("bptt", "hidden_sizes=[]", ["bptt.hidden_sizes", "non-empty"]),
    ("bptt", "num_threads=100000", ["bptt.num_threads", f"{4 * os.cpu_count()}", "100000"]),
    ("bptt", "num_threads=-1", ["bptt.num_threads", "between 0"]),
])
def test_bad_config_values_name_their_field(algo, override, names):
    with pytest.raises(ConfigError) as err:
        resolve_config(algo, {}, overrides=[override])
    assert_one_line(str(err.value), *names)


def test_a_config_built_in_python_is_checked_too():
    with pytest.raises(ConfigError) as err:
        BPTTConfig(lr=math.nan)
    assert_one_line(str(err.value), "lr must be a finite number")
    with pytest.raises(ConfigError) as err:
        BPTTConfig(hidden_sizes=[0])
    assert_one_line(str(err.value), "hidden_sizes")


def test_a_logger_without_its_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(research.config.importlib.util, "find_spec",
                        lambda name, *args: None if name in ("tensorboard", "wandb") else real(name, *args))
    with pytest.raises(ConfigError) as err:
        resolve_config("bptt", {}, overrides=['logger="tensorboard"'])
    assert_one_line(str(err.value), "bptt.logger", "tensorboard", ".[logging]")
    with pytest.raises(ConfigError) as err:
        resolve_config("ddpg", {"logger": "wandb"})
    assert_one_line(str(err.value), "ddpg.logger", "pip install wandb")


def unwritable_folder(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: take a folder no one may create
        return "/sys/research-results"
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    return str(folder)


@pytest.mark.parametrize("cli", ["train", "experiment"])
@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_results_that_cannot_hold_runs_is_one_line(cli, where, tmp_path, capsys):
    if where == "file":
        results = tmp_path / "results.txt"
        results.write_text("not a folder")
        expected = "is a file, not a folder"
    else:
        results, expected = unwritable_folder(tmp_path), "is not a writable folder"
    argv = (["--algo", "bptt", "--set", "iterations=1"] if cli == "train"
            else [os.path.join(ROOT, "experiments", "smoke.toml"), "--quiet"])
    main = train.main if cli == "train" else experiment.main
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--results", str(results)])
    assert exit_info.value.code == 2
    assert_one_line(capsys.readouterr().err, "--results", expected)


@pytest.mark.parametrize("main, argv, names", [
    (train.main, ["--algo", "bptt", "--set", "lr=nan"], ["bptt.lr", "finite"]),
    (train.main, ["--algo", "ddpg", "--set", "hidden_sizes=[0]"], ["ddpg.hidden_sizes"]),
    (experiment.main, [os.path.join(ROOT, "experiments", "smoke.toml"), "--set", "bptt.grad_clip=nan"],
     ["bptt.grad_clip", "finite"]),
    (experiment.main, [os.path.join(ROOT, "experiments", "smoke.toml"), "--set", "num_threads=100000"],
     ["num_threads"]),
])
def test_command_lines_print_one_line(main, argv, names, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--results", str(tmp_path)])
    assert exit_info.value.code == 2
    assert_one_line(capsys.readouterr().err, *names)


def test_the_train_command_line_in_a_process():
    done = subprocess.run([sys.executable, "-m", "research.train", "--algo", "ddpg", "--set", "actor_lr=nan"],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 2 and not done.stdout
    assert_one_line(done.stderr, "ddpg.actor_lr must be a finite number, got nan")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "truncated", "not a policy"])
def test_a_corrupt_policy_file_is_one_line(content, tmp_path):
    path = tmp_path / "policy.pt"
    if content == "truncated":
        save_policy(make_policy((8,)), path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "not a policy":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        research.load_policy(path)
    assert_one_line(str(err.value), str(path), "not a policy file")


@pytest.mark.parametrize("shape", [(4,), (16, 2), (2, 5, 4), ()])
def test_a_policy_on_the_wrong_observation_size_says_what_it_expects(shape):
    policy = make_policy((8,))
    with pytest.raises(ValueError) as err:
        policy(torch.zeros(shape))
    assert_one_line(str(err.value), "observation must have size 3", f"got shape {list(shape)}")
    assert policy(torch.zeros(16, 3)).shape == (16, 1)
