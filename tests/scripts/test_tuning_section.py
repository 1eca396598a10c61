"""scripts/tuning.py: the race report's tuning section, from search.json records alone."""

import importlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def search(task, algo, runs, best=-150.0):
    """A search record as research.tune writes it: one tuning seed, ``runs`` = [(env steps, training s), ...]."""
    trials = [{"number": i, "state": "COMPLETE", "value": -200.0 + i, "seconds": seconds + 8.0, "cpu": "AMD EPYC, AVX2",
               "runs": {"1000": {"env_steps": steps, "wall_time_s": seconds}}} for i, (steps, seconds) in enumerate(runs)]
    trials.append({"number": len(runs), "state": "FAIL", "value": None, "seconds": 3.0, "cpu": "Intel Xeon, AVX-512",
                   "runs": {}})
    return {"source": "experiments/race.toml", "task": task, "algo": algo, "trials_planned": 4,
            "trials_finished": len(runs), "budget": {"env_steps": 1_000_000, "wall_time_s": 30.0},
            "sampler": {"name": "TPESampler", "seed": 0}, "seeds": {"tuning": [1000], "reported": [0, 1]},
            "eval": {"tuning": {"seed": 2000003}, "reported": {"seed": 1000003}},
            "architecture": {"policy_hidden_sizes": [64, 64]}, "trials": trials,
            "best": {"number": 1, "value": best}}


def test_tuning_section_says_what_bound_each_method(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    tuning = importlib.import_module("tuning")
    exp_dir = tmp_path / "race"
    assert tuning.tuning_section(exp_dir) == []  # no searches beside it: no section
    for task, algo, runs in [("default", "bptt", [(1_000_000, 4.0), (1_000_000, 6.0)]),
                             ("default", "ddpg", [(8_000, 30.2), (9_000, 30.5), (2_000, 12.0)])]:
        directory = tmp_path / "tune" / "race" / task / algo
        directory.mkdir(parents=True)
        (directory / "search.json").write_text(json.dumps(search(task, algo, runs)))
    text = "\n".join(tuning.tuning_section(exp_dir))
    assert "capped at 1,000,000 env steps and 30 s of training" in text and "seeds [1000]" in text
    rows = [line for line in text.splitlines() if line.startswith("| `default`")]
    assert rows[0] == ("| `default` | `bptt` | 2/4 | -150.0 (trial 1) | 1,000,000 | 5.0 | 0/2 | "
                       "AMD EPYC, AVX2, Intel Xeon, AVX-512 |")
    assert rows[1].startswith("| `default` | `ddpg` | 3/4 | -150.0 (trial 1) | 8,000 | 30.2 | 2/3 |")
    assert "5 of 8 trials, 0.04 CPU-hours" in text  # 82.7 s of training + 5 x 8 s start-up + 2 failed x 3 s
