"""Every trainer runs on every system, from the smoke experiment's tiny budgets (``experiments/smoke.toml``)."""

import math
import tomllib
from pathlib import Path

import pytest
import torch

from research.algos import ALGOS, get_algo
from research.config import ConfigError, from_dict, physics_entry
from research.experiment import load_experiment
from research.policies import load_policy
from research.runs import RunWriter
from research.systems import SYSTEMS, make

SMOKE = Path(__file__).parents[2] / "experiments" / "smoke.toml"
TABLES = tomllib.loads(SMOKE.read_text())


@pytest.mark.parametrize("system", [name for name in SYSTEMS if name != "pendulum"])
@pytest.mark.parametrize("algo", [a for a in ALGOS if a in TABLES])
def test_every_algorithm_trains_on_every_system(tmp_path, system, algo):
    config_cls, train = get_algo(algo)
    table = {**TABLES[algo], "seed": 3, "env": {"system": system}}
    table["eval"] = {**table.get("eval", {}), "episodes": 8}
    config = from_dict(config_cls, table)
    assert config.env.episode_length == make(system).horizon  # 0: the system's own horizon
    out = tmp_path / algo
    summary = train(config, RunWriter(out, algo, config), quiet=True)
    evaluation = summary["eval"]
    assert evaluation["episodes"] == 8 and math.isfinite(evaluation["return_mean"])
    assert summary["env_steps"] > 0
    policy = load_policy(out / "policy.pt")  # the saved policy acts on the system's observation
    sys_ = make(system)
    action = policy(sys_.observe(sys_.initial_state((4,), torch.Generator().manual_seed(0))))
    assert action.shape == (4, sys_.action_dim) and bool((action.abs() <= sys_.max_action).all())


def test_the_smoke_experiment_crosses_every_system():
    plan = load_experiment(SMOKE, results="unused")
    systems = {run.config.env.system for run in plan.runs}
    assert systems == set(SYSTEMS)
    folders = {run.run_dir.parent.parent.name for run in plan.runs}
    assert folders == {"default", "cartpole", "acrobot"}


def test_physics_entries_name_a_system_and_a_preset():
    assert physics_entry("wall") == ("pendulum", "wall", "wall")
    assert physics_entry("cartpole") == ("cartpole", "default", "cartpole")
    with pytest.raises(ConfigError, match="unknown physics entry 'cartpole:nope'"):
        physics_entry("cartpole:nope")
    with pytest.raises(ConfigError, match=r"env\.physics must be one of \['default'.*\(the cartpole's presets\)"):
        from_dict(get_algo("bptt")[0], {"env": {"system": "cartpole", "physics": "wall"}})
    with pytest.raises(ConfigError, match=r"env\.params\.wall_angle: unknown physical parameter 'wall_angle' of the "
                                          r"acrobot"):
        from_dict(get_algo("bptt")[0], {"env": {"system": "acrobot", "params": {"wall_angle": 1.0}}})
    with pytest.raises(ConfigError, match=r"env\.system must be one of \['pendulum'"):
        from_dict(get_algo("bptt")[0], {"env": {"system": "double_pendulum"}})
