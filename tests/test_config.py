import pytest

from research.algos.bptt import BPTTConfig
from research.config import ConfigError, apply_overrides, config_hash, from_dict
from research.train import experiment_table, resolve_config


def test_defaults_and_nested_tables():
    config = from_dict(BPTTConfig, {"lr": 1e-3, "env": {"param_ranges": {"g": [9.0, 11.0]}}, "eval": {"episodes": 10}})
    assert config.lr == 1e-3 and config.env.param_ranges == {"g": [9.0, 11.0]} and config.eval.episodes == 10
    assert config.horizon == BPTTConfig().horizon


def test_unknown_key_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'.*'lr'"):
        from_dict(BPTTConfig, {"lrr": 1.0})
    with pytest.raises(ConfigError, match=r"unknown config key 'eval.epsiodes'.*'episodes'"):
        from_dict(BPTTConfig, {"eval": {"epsiodes": 3}})


@pytest.mark.parametrize(
    "data, match",
    [
        ({"lr": "fast"}, "lr must be a number"),
        ({"num_envs": 2.5}, "num_envs must be an integer"),
        ({"compile": 1}, "compile must be true or false"),
        ({"lr_schedule": "linear"}, r"lr_schedule must be one of \['constant', 'cosine'\]"),
        ({"hidden_sizes": 64}, "hidden_sizes must be a list"),
        ({"discount": 1.5}, "discount must be in"),
        ({"seed": 1_000_003}, "seed must differ from eval.seed"),
        ({"env": {"backend": "gymnasium"}}, "backend must be 'simulator'"),
    ],
)
def test_bad_values_are_rejected(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(BPTTConfig, data)


def test_overrides_parse_toml_values():
    data = apply_overrides({"env": {}}, ["lr=1e-3", "env.episode_length=50", "rollout=env", "hidden_sizes=[8, 8]"])
    assert data == {"lr": 1e-3, "env": {"episode_length": 50}, "rollout": "env", "hidden_sizes": [8, 8]}
    config = resolve_config("bptt", {}, seed=3, overrides=["iterations=7"])
    assert config.seed == 3 and config.iterations == 7


def test_config_hash_changes_with_config():
    assert config_hash(BPTTConfig()) == config_hash(BPTTConfig())
    assert config_hash(BPTTConfig()) != config_hash(BPTTConfig(lr=1e-4))


def test_experiment_table_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        experiment_table(tmp_path / "nope.toml", "bptt")
    bad = tmp_path / "bad.toml"
    bad.write_text("[bpt]\nlr = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown table \[bpt\]"):
        experiment_table(bad, "bptt")
    with pytest.raises(ValueError, match="unknown algorithm"):
        resolve_config("nope", {})
