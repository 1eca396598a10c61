"""scripts/policy_maps.py on a synthetic experiment: 5 x 5 maps of untrained policies, with and without an optimum."""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from research.envs.physics import observation
from research.policies import make_policy, save_policy

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def maps(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module("policy_maps")


def synthetic_experiment(exp: Path) -> None:
    torch.manual_seed(0)
    for algo in ("bptt", "shac"):
        run = exp / algo / "seed_0"
        run.mkdir(parents=True)
        save_policy(make_policy((8,)), run / "policy.pt")
        (run / "summary.json").write_text(json.dumps({"algo": algo, "seed": 0, "eval": {"return_mean": -500.0}}))


def test_five_by_five_maps(maps, tmp_path):
    exp = tmp_path / "exp"
    synthetic_experiment(exp)
    written = maps.make_maps(exp, grid=5, value_grid=5, optimal=False, num_episodes=20)
    assert [p.name for p in written] == [*maps.FIGURES, maps.FRAGMENT]
    assert all(p.stat().st_size > 0 for p in written)
    text = (exp / "figures" / maps.FRAGMENT).read_text()
    assert ("not in this checkout" in text) or ("left out" in text) and "save only `policy.pt`" in text
    assert text.count("| `") == 2  # one table row per method

    controller = maps.experiment_controllers(exp)[0]
    th, thdot = maps.state_grid(5, 5)
    torque = maps.torque_map(controller, th, thdot)
    assert torque.shape == (5, 5)
    obs = observation(torch.tensor(th[3], dtype=torch.float32), torch.tensor(thdot[1], dtype=torch.float32))
    assert torque[1, 3] == pytest.approx(controller.policy(obs).item(), abs=1e-6)  # rows: thdot, columns: th


def test_optimal_column_when_a_solution_exists(maps, tmp_path, monkeypatch):
    """With a DP solution (a stand-in with the research.optimal API), it gets a panel and becomes the gap reference."""
    exp = tmp_path / "exp"
    synthetic_experiment(exp)
    grid = torch.linspace(-3.0, 3.0, 4)
    fake = SimpleNamespace(
        policy=lambda obs: torch.zeros(*obs.shape[:-1], 1),
        value=lambda t: -torch.ones(4, 4),
        th_grid=grid,
        thdot_grid=grid,
        rollout=lambda th, thdot: torch.zeros_like(th),
    )
    monkeypatch.setattr(maps, "optimal_solution", lambda: fake)
    maps.make_maps(exp, grid=5, value_grid=5, num_episodes=20)
    text = (exp / "figures" / maps.FRAGMENT).read_text()
    assert "mean gap to DP" in text and "optimal (DP)" not in text.split("| method")[1]  # no DP row in the gap table
    gaps = [float(row.split("|")[3]) for row in text.splitlines() if row.startswith("| `")]
    assert len(gaps) == 2 and all(g > 0 for g in gaps)  # reference return 0 beats every real return
    assert np.isfinite(gaps).all()


def test_a_physics_axis_maps_the_default_presets_runs(maps, tmp_path):
    exp = tmp_path / "axis"
    synthetic_experiment(exp / "default")
    synthetic_experiment(exp / "wall")
    assert maps.runs_directory(exp)[0] == exp / "default" and "default" in maps.runs_directory(exp)[1]
    flat = tmp_path / "flat"
    synthetic_experiment(flat)
    assert maps.runs_directory(flat) == (flat, "")
    written = maps.make_maps(exp, grid=5, value_grid=5, optimal=False, num_episodes=20)
    assert (exp / "figures" / "policy_map.png").is_file() and written
    assert "several physics presets" in (exp / "figures" / maps.FRAGMENT).read_text()
