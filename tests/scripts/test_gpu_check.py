"""scripts/gpu_check.sh (``make gpu-check``): without a GPU it stops at once with one line; its dry run lists every
step and one seed of each method of the headline experiment. The real run needs a CUDA machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
NO_GPU = "gpu_check: no CUDA GPU (torch.cuda.is_available() is False); run make gpu-check on a machine with one"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_OUT": str(tmp_path / "cuda")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_without_a_gpu_it_stops_with_one_line(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [NO_GPU]
    assert result.stdout == ""
    assert not (tmp_path / "cuda").exists()


def test_unknown_arguments_are_refused(tmp_path):
    result = _run(tmp_path, "--fast")
    assert result.returncode == 2 and "unknown argument '--fast'" in result.stderr


def test_dry_run_lists_the_steps_and_one_seed_of_each_method(tmp_path):
    result = _run(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    steps = [line for line in out.splitlines() if line.startswith("== gpu_check:") and "(at most" in line]
    assert [s.split(" (at most")[0].removeprefix("== gpu_check: ") for s in steps] == [
        "CUDA tests", "CUDA benchmarks, eager", "CUDA benchmarks, compiled", "CUDA BENCH.md",
        "pendulum_compare, seed 0, every method on CUDA", "pendulum_compare summary"]
    limits = [int(s.split("(at most ")[1].split(" s)")[0]) for s in steps]
    assert sum(limits) < 8 * 60  # the whole check fits in 8 minutes even when every step runs out of time
    assert "-m pytest -q -m cuda" in steps[0]
    assert all("-m cuda --benchmark-only" in s and "/cuda/benchmark-" in s for s in steps[1:3])
    algos = tomllib.loads((ROOT / "experiments" / "pendulum_compare.toml").read_text())["experiment"]["algos"]
    algos = [*algos, "ppo", "ptd3"]  # the parallel-environment baselines join the headline methods
    assert "--device cuda" in steps[4] and f"--jobs {len(algos)}" in steps[4]  # every method at once
    runs = [line.split()[0] for line in out.splitlines() if "/pendulum_compare_cuda/" in line and "seed_" in line
            and not line.startswith("==")]
    assert runs == [f"{algo}/seed_0" for algo in algos]
    assert not (tmp_path / "cuda").exists()  # a dry run writes nothing
