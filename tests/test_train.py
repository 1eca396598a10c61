"""The one-run command line: config resolution, overrides and one-line errors for bad input."""

import tomllib

import pytest
import torch

from research.algos import ALGOS
from research.config import ConfigError
from research.train import main, resolve_config


def test_every_registered_algorithm_resolves_its_defaults():
    for algo in ALGOS:
        config = resolve_config(algo, {}, seed=3)
        assert config.seed == 3 and config.device == "cpu"


def test_overrides_reach_nested_tables():
    config = resolve_config("bptt", {"iterations": 7}, overrides=["env.param_ranges.g=[8, 12]", "lr=1e-3"])
    assert config.iterations == 7 and config.lr == 1e-3 and config.env.param_ranges == {"g": [8.0, 12.0]}


def test_a_bad_range_names_its_field_once():
    with pytest.raises(ConfigError) as err:
        resolve_config("bptt", {}, overrides=["env.param_ranges.g=[12, 8]"])
    message = str(err.value)
    assert message.startswith("bptt.env.param_ranges.g must be [low, high]") and "env.env" not in message


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'td3\.polcy_delay'; valid keys are .*policy_delay"):
        resolve_config("td3", {"polcy_delay": 3})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--algo", "bptt", "--device", "cuda", "--show-config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("device is 'cuda' but no CUDA GPU is available here; use device='cpu'")
    assert not any("Traceback" in line for line in err)


def test_bad_device_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--algo", "sac", "--set", 'device="tpu"', "--show-config"])
    assert "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in capsys.readouterr().err


def test_show_config_prints_every_field(capsys):
    assert main(["--algo", "td3", "--show-config"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)["td3"]  # a TOML table for an experiment file
    assert shown["policy_delay"] == 2 and shown["env"]["episode_length"] == 200


def test_show_config_gives_each_field_its_meaning(capsys):
    assert main(["--algo", "bptt", "--show-config", "--set", "lr=1e-3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[bptt]  # Backpropagation through the simulator")
    fields = {line.split(" = ")[0]: line for line in lines if " = " in line and not line.startswith("#")}
    assert fields["lr"].startswith("lr = 0.001") and fields["lr"].endswith("# Adam learning rate.")
    assert "# Widths of the policy MLP's hidden layers." in fields["hidden_sizes"]
    assert any(line.startswith("[bptt.env]  # ") for line in lines) and "cuda:N" in fields["device"]
    undocumented = [line for line in lines if " = " in line and "  # " not in line]
    assert not undocumented, undocumented
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--show-config" in capsys.readouterr().out
