"""scripts/gap_report.py on the committed decomposition (results/gap): every physics gets its section, and the
provenance says which invocation computed the DP and students and which only decomposed learners against them."""

import importlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_provenance_names_the_invocations_that_reused_the_references(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    gap_report = importlib.import_module("gap_report")
    for name in ("summary.csv", "dp.csv"):
        shutil.copy(ROOT / "results" / "gap" / name, tmp_path / name)
    full = {"physics": ["default"], "git_commit": "aaa", "grid": 401, "coarse_grid": 201, "distill": {"rounds": 3},
            "value_distill": None, "device": "cpu: test", "seconds": 360.0}
    reuse = {**full, "physics": ["default", "wall"], "git_commit": "bbb", "seconds": 9.0,
             "references": "reused: the learners decomposed against the reference rows of the invocations above"}
    (tmp_path / "config.json").write_text(json.dumps({"horizon": 200, "experiments": [], "invocations": [full, reuse]}))
    text = gap_report.report(tmp_path)
    assert "## default" in text and "## wall" in text and "## cartpole" in text
    lines = text.split("## Provenance", 1)[1].strip().splitlines()
    assert lines[0].startswith("- default: commit `aaa`, grid 401 (coarse 201)")
    assert lines[1].startswith("- default wall: commit `bbb`: the learner rows only (reused") and "grid" not in lines[1]
