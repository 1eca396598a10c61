"""scripts/study.py: the second edition's report from its parts (training experiments and gradient studies), on
synthetic runs: findings from the tuned rows only, the axes from the registry, the code-version check, the gradient
table and findings.csv."""

import csv
import importlib
import json
from pathlib import Path

import pytest
import torch

from tests.scripts.test_physics_axis import write_optimal, write_run

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def study(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    module = importlib.import_module("study")
    monkeypatch.setattr(module, "research_tree", lambda commit: {"abc": "tree1", "def": "tree2"}.get(commit))
    return module


def parts(results: Path, aggregate) -> None:
    """A race on default physics (tuned and recipe rows) and a presets part on weak (tuned rows), 4 seeds each.
    default: bptt_tuned at 0.99 after 2 s, ddpg_tuned after 30 s, both end near -140; the recipe bptt fails.
    weak: bptt_tuned ends at -259 to -262, ddpg_tuned at -399 to -402 and never gets near."""
    write_optimal(results)
    for seed in range(4):
        write_run(results / "race", "default", "bptt_tuned", seed,
                  [(0, 0.0, -1200.0), (1000, 2.0, -140.0), (2000, 4.0, -139.0 - seed)])
        write_run(results / "race", "default", "ddpg_tuned", seed,
                  [(0, 0.0, -1200.0), (500, 30.0, -140.0), (900, 60.0, -139.5 - seed)])
        write_run(results / "race", "default", "bptt", seed, [(0, 0.0, -1200.0), (2000, 4.0, -900.0 - seed)])
        write_run(results / "presets", "weak", "bptt_tuned", seed,
                  [(0, 0.0, -1300.0), (1000, 5.0, -300.0), (3000, 9.0, -259.0 - seed)])
        write_run(results / "presets", "weak", "ddpg_tuned", seed, [(0, 0.0, -1300.0), (900, 60.0, -399.0 - seed)])
    for name in ("race", "presets"):
        assert aggregate.main([str(results / name)]) == 0


def gradients(results: Path) -> None:
    """A gradient study of default and weak: at H = 64 first order has 0.1 x the likelihood-ratio variance on the
    trained policy; at the random policy it loses from H = 100 on default, never on weak."""
    directory = results / "grads"
    directory.mkdir()
    columns = ["physics", "policy", "horizon", "estimator", "variance_total", "cosine", "samples"]
    rows = []
    for physics in ("default", "weak"):
        for horizon in (20, 64, 100):
            for policy in ("random", "trained"):
                loses = physics == "default" and policy == "random" and horizon >= 100
                rows.append([physics, policy, horizon, "first_order", 3.0 if loses else 1.0, 0.9, 100])
                rows.append([physics, policy, horizon, "likelihood_ratio", 10.0 if policy == "trained" else 2.0, "nan",
                             100])
    with (directory / "gradient_study.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([columns, *rows])
    (directory / "config.json").write_text(json.dumps({"git_commit": "abc", "wall_time_s": 360.0, "device": "cpu: t",
                                                        "physics": {"weak": {"time_step": 0.05}}}))


def test_the_study_reports_findings_of_the_tuned_rows_with_axes_and_gradients(study, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    parts(tmp_path, importlib.import_module("aggregate"))
    gradients(tmp_path)
    assert study.main([str(tmp_path / "study"), "--experiments", "race", "presets", "--gradients", "grads"]) == 0
    text = (tmp_path / "study" / "REPORT.md").read_text()
    assert "2 tasks (`default`, `weak`), 2 methods at their tuned settings (`bptt_tuned`, `ddpg_tuned`), 16 runs" in text
    assert "`bptt` |" not in text  # the recipe row stays in the race's own report
    answer = text.split("## Answer")[1].split("##")[0]
    assert "better final normalized score on 1 (`weak`) of 2 tasks" in answer and "level on 1 (`default`)" in answer
    assert "0.99 sooner in training seconds on 1 (`default`) of 2, 15-15x sooner by the median" in answer
    assert "- **horizon** (" in text and "`weak`: `bptt_tuned` ends better than `ddpg_tuned`" in text
    table = {line.split("|")[1].strip(" `"): line for line in text.split("## Why")[1].splitlines()
             if line.startswith("| `")}
    assert table["default"].endswith("| 64 (3.2 s) | 0.1 | 0.90 | 100 (5 s) |")
    assert table["weak"].endswith("| never |")
    assert "**Not one code version**" not in text and "one version of `research/` (git tree `tree1`)" in text
    with (tmp_path / "study" / "findings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    weak = [r for r in rows if r["task"] == "weak" and r["kind"] == "final score"]
    assert len(weak) == 1 and weak[0]["verdict"] == "subject" and float(weak[0]["low"]) > 0.5
    assert (tmp_path / "study" / "figures" / "heatmap_normalized_score.png").is_file()
    assert "## Discussion" not in text
    (tmp_path / "study" / "NOTES.md").write_text("Weak is a horizon story.\n")
    assert study.main([str(tmp_path / "study"), "--experiments", "race", "presets", "--gradients", "grads"]) == 0
    text = (tmp_path / "study" / "REPORT.md").read_text()
    assert text.index("## Findings") < text.index("## Discussion (written by hand") < text.index("## Code version")
    assert "\nWeak is a horizon story.\n" in text


def test_the_study_says_when_its_parts_ran_on_different_code(study, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    parts(tmp_path, importlib.import_module("aggregate"))
    gradients(tmp_path)
    config = json.loads((tmp_path / "grads" / "config.json").read_text())
    (tmp_path / "grads" / "config.json").write_text(json.dumps({**config, "git_commit": "def"}))
    assert study.main([str(tmp_path / "study"), "--experiments", "race", "presets", "--gradients", "grads"]) == 0
    text = (tmp_path / "study" / "REPORT.md").read_text()
    assert "> **Not one code version**" in text and "the parts ran on 2 `research/` tree(s)" in text
    (tmp_path / "presets" / "runs.csv").unlink()
    with pytest.raises(SystemExit, match=r"presets has no runs.csv and summary.csv; run `python scripts/aggregate.py"):
        study.main([str(tmp_path / "study"), "--experiments", "race", "presets"])


def test_media_animates_each_tasks_best_of_both_families(study, tmp_path, monkeypatch, capsys):
    """--media: per task, the median seed of its best backpropagation and best model-free method in one GIF."""
    from research.policies import make_policy, save_policy

    monkeypatch.syspath_prepend(str(SCRIPTS))
    parts(tmp_path, importlib.import_module("aggregate"))
    for label in ("bptt_tuned", "ddpg_tuned"):
        for seed in range(4):
            torch.manual_seed(seed)
            save_policy(make_policy([8]), tmp_path / "race" / "default" / label / f"seed_{seed}" / "policy.pt")
    assert study.median_seed_policy([study.load_part(tmp_path / "race")], "default", "bptt_tuned") == (
        tmp_path / "race" / "default" / "bptt_tuned" / "seed_2" / "policy.pt")  # returns -139, -140, -141, -142
    assert study.main([str(tmp_path / "study"), "--experiments", "race", "presets", "--media"]) == 0
    text = (tmp_path / "study" / "REPORT.md").read_text()
    assert (tmp_path / "study" / "media" / "default.gif").read_bytes()[:6] == b"GIF89a"
    assert "- `default`: ![default](media/default.gif)" in text and "media/weak.gif" not in text  # weak: no policies

    def broken(argv):
        raise ValueError("noise must be a standard-normal sample")

    import research.render
    (tmp_path / "study" / "media" / "default.gif").unlink()
    monkeypatch.setattr(research.render, "main", broken)  # a task the renderer cannot draw loses only its animation
    assert study.main([str(tmp_path / "study"), "--experiments", "race", "presets", "--media"]) == 0
    assert "## Animations" not in (tmp_path / "study" / "REPORT.md").read_text()
    assert "no animation for default: the renderer failed (noise must be" in capsys.readouterr().err
