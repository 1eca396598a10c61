"""The scripts on an experiment with a physics axis (``<exp>/<physics>/<algo>/seed_<k>``): the rows per preset and
method, the time to a normalized score of 0.9, the per-preset figures and heat maps, and the findings section of
the report (who wins on each preset, decided by research.findings). Synthetic runs, no training."""

import csv
import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
OPTIMA = {"default": (-137.0, -1222.0), "weak": (-240.0, -1300.0)}  # (R_opt, R_zero)


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return SimpleNamespace(**{name: importlib.import_module(name) for name in ("aggregate", "plot", "report")})


def write_run(exp_dir: Path, physics: str, algo: str, seed: int, curve: list[tuple[int, float, float]]) -> None:
    """A finished run on ``physics`` whose evaluations are ``curve`` = [(env_steps, wall_time_s, return_mean)]."""
    path = exp_dir / physics / algo / f"seed_{seed}"
    path.mkdir(parents=True)
    config = {"algo": algo, "seed": seed, "git_commit": "abc", "versions": {}, "device": "cpu",
              "config": {"seed": seed, "env": {"physics": physics}, "eval": {"episodes": 1000}}}
    (path / "config.json").write_text(json.dumps(config))
    rows = "".join(f"{i},{steps},{wall},{ret}\n" for i, (steps, wall, ret) in enumerate(curve))
    (path / "metrics.csv").write_text("iteration,env_steps,wall_time_s,eval/return_mean\n" + rows)
    steps, wall, final = curve[-1]
    summary = {"algo": algo, "seed": seed, "env_steps": steps, "wall_time_s": wall, "config_hash": "h",
               "eval": {"return_mean": final, "return_iqm": final, "return_median": final, "return_min": final,
                        "success_rate": 1.0, "episodes": 1000}}
    (path / "summary.json").write_text(json.dumps(summary))


def write_optimal(results: Path) -> None:
    (results / "optimal").mkdir(parents=True)
    lines = ["physics,grid,actions,return_mean,zero_torque_return_mean,episodes,optimum"]
    lines += [f"{name},801x801,11,{best},{zero},1000,1" for name, (best, zero) in OPTIMA.items()]
    (results / "optimal" / "summary.csv").write_text("\n".join(lines) + "\n")


def synthetic_study(results: Path) -> Path:
    """Two presets x (bptt, ddpg) x 3 seeds. default: a tie near -147, bptt at 90% after 2 s, ddpg after 30 s.
    weak: bptt ends at -260 +- 1, ddpg at -400 +- 1 and never reaches 90% (-346)."""
    exp = results / "study"
    write_optimal(results)
    for seed in range(3):
        write_run(exp, "default", "bptt", seed, [(0, 0.0, -1200.0), (1000, 2.0, -200.0), (2000, 4.0, -147.0 + seed)])
        write_run(exp, "default", "ddpg", seed, [(0, 0.0, -1200.0), (500, 30.0, -240.0), (900, 60.0, -148.0 + seed)])
        write_run(exp, "weak", "bptt", seed, [(0, 0.0, -1300.0), (1000, 5.0, -300.0), (3000, 9.0, -259.0 - seed)])
        write_run(exp, "weak", "ddpg", seed, [(0, 0.0, -1300.0), (900, 60.0, -399.0 - seed)])
    return exp


def read(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_rows_per_preset_and_method_with_time_to_90(scripts, tmp_path):
    exp = synthetic_study(tmp_path)
    assert scripts.aggregate.main([str(exp)]) == 0
    rows = {(row["physics"], row["algo"]): row for row in read(exp / "summary.csv")}
    assert list(rows) == [("default", "bptt"), ("default", "ddpg"), ("weak", "bptt"), ("weak", "ddpg")]
    assert all(row["n_seeds"] == "3" for row in rows.values())
    # 90% of the way from R_zero to R_opt: default -245.5, weak -346
    assert float(rows["default", "bptt"]["return_at_90"]) == pytest.approx(-1222 + 0.9 * 1085)
    assert float(rows["weak", "ddpg"]["return_at_90"]) == pytest.approx(-1300 + 0.9 * 1060)
    assert float(rows["default", "bptt"]["wall_time_s_to_90"]) == 2.0
    assert float(rows["default", "ddpg"]["wall_time_s_to_90"]) == 30.0
    assert float(rows["default", "ddpg"]["env_steps_to_90"]) == 500.0
    assert float(rows["weak", "bptt"]["wall_time_s_to_90"]) == 5.0 and rows["weak", "bptt"]["seeds_reaching_90"] == "3"
    assert rows["weak", "ddpg"]["wall_time_s_to_90"] == "" and rows["weak", "ddpg"]["seeds_reaching_90"] == "0"
    assert float(rows["weak", "bptt"]["normalized_score"]) == pytest.approx((-260 + 1300) / 1060)
    per_run = read(exp / "runs.csv")
    assert len(per_run) == 12 and per_run[0]["physics"] == "default" and per_run[0]["wall_time_s_to_90"] == "2"


def test_per_preset_figures_and_heatmaps(scripts, tmp_path):
    exp = synthetic_study(tmp_path)
    assert scripts.aggregate.main([str(exp)]) == 0
    assert scripts.plot.main([str(exp)]) == 0
    for name in ("return_vs_env_steps.png", "return_vs_wall_time.png", *scripts.plot.HEATMAPS):
        assert (exp / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scripts.report.main([str(exp)]) == 0
    report = (exp / "REPORT.md").read_text()
    assert "| physics | algorithm |" in report and "## Findings" in report


def test_the_findings_section_answers_from_the_runs(scripts, tmp_path):
    exp = synthetic_study(tmp_path)
    assert scripts.aggregate.main([str(exp)]) == 0 and scripts.report.main([str(exp)]) == 0
    section = (exp / "REPORT.md").read_text().split("## Findings")[1].split("\n## ")[0]
    # weak: every bptt seed ends above every ddpg seed; default: overlapping seeds (a tie at 3 seeds)
    assert "better final normalized score on 1 (`weak`) of 2 tasks, the worse on 0 and level on 1 (`default`)" in section
    rows = [line for line in section.splitlines() if line.startswith("| `weak` |")]
    assert any("`bptt` ends better than `ddpg`" in line and line.endswith("| `bptt` |") for line in rows)
    assert any("`ddpg` fails 3 of 3 seeds" in line for line in rows)
