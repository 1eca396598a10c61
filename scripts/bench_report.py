"""Writes ``BENCH.md`` and ``throughput.png`` next to the pytest-benchmark JSON files of ``make bench``.

    python scripts/bench_report.py results/bench/benchmark.json [results/bench/benchmark-1thread.json ...]

For each question (simulation, one BPTT iteration, DDPG's update, collector and whole run, then simulation and one
BPTT iteration of every system of ``research.systems``: ``simulate-<system>``, ``bptt-<system>``) a table of every case,
then the speed-up of our fastest case over each peer at each batch size, the project's speed targets
(``docs/protocol.md``, and the speed issue's 1.5x over gymnax and Stable-Baselines3) checked against the
measurements, which optional peers ran (``tests/benchmarks/test_bench_peers.py``, the ``peers`` extra), and a plot
of throughput against batch size. Rates are work per call over the
median round. Reads only the JSON files (``extra_info`` of each case is written by ``tests/benchmarks/conftest.py``);
imports nothing from the project. Several files (e.g. one per thread count) are merged; machine and commit come from
the first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

QUESTIONS = {
    "simulate": "Simulation without gradients (MLP policy 3-64-64-1 in the loop)",
    "bptt": "One BPTT iteration (rollout H = 100, backward, clip, Adam step; MLP 3-64-64-64-1)",
    "ddpg-update": "One DDPG update (batch 256, [400, 300] networks, soft target update)",
    "ddpg-collector": "One DDPG collector batch (100 transitions, 1 env, noisy actor)",
    "ddpg-run": "The whole DDPG run (rl-baselines3-zoo recipe, 20k env steps, 1 env; BENCH_FULL=1)",
}
#: The per-system questions of tests/benchmarks/test_bench_systems.py, ``<prefix>-<system>``: prefix -> title.
SYSTEM_QUESTIONS = {
    "simulate": "simulation without gradients (MLP obs-64-64-act in the loop, the system's 200-step horizon)",
    "bptt": "one BPTT iteration (rollout H = 64, backward, clip, Adam step; MLP obs-64-64-64-act)",
}
#: Display names and order of the systems (others follow alphabetically).
SYSTEM_NAMES = {"pendulum": "Pendulum", "cartpole": "Cart-pole", "acrobot": "Acrobot"}
#: Cases that are ours; every other case in the same group is a peer.
OURS = ("fused", "fused-compiled", "native", "simulator", "ddpg-update", "research")
#: The peers of the optional ``peers`` extra (tests/benchmarks/test_bench_peers.py): case -> what it runs.
EXTRA_PEERS = {"gymnax": "gymnax (JAX): simulation and BPTT iteration; CartPole-v1 and Acrobot-v1 simulation", "sb3": "Stable-Baselines3: DDPG update and run"}
#: The speed targets of docs/protocol.md: (question, batch, peer or None for an absolute rate, minimum ratio or
#: env-steps/s, label). ``torchrl-seed`` is the seed recipe's loop (TorchRL's pendulum tutorial).
TARGETS = [
    ("bptt", 32, "torchrl-seed", 10.0, "BPTT iteration, fused vs the seed recipe's loop, batch 32"),
    ("bptt", 1024, "torchrl-seed", 3.0, "BPTT iteration, fused vs the seed recipe's loop, batch 1024"),
    ("simulate", 4096, None, 2e6, "Simulation, fused, batch 4096 (env-steps/s)"),
    ("simulate", 4096, "gymnasium", 100.0, "Simulation, fused vs Gymnasium's vector env, batch 4096"),
    # The speed issue's goals against the peers of the ``peers`` extra (rows appear when those peers ran).
    ("simulate", 64, "gymnax", 1.5, "Simulation vs gymnax (jit + vmap + scan), batch 64"),
    ("simulate", 4096, "gymnax", 1.5, "Simulation vs gymnax (jit + vmap + scan), batch 4096"),
    ("bptt", 32, "gymnax", 1.5, "BPTT iteration vs gymnax (jax.grad through the transitions), batch 32"),
    ("bptt", 1024, "gymnax", 1.5, "BPTT iteration vs gymnax (jax.grad through the transitions), batch 1024"),
    ("ddpg-run", 1, "sb3", 1.5, "Whole 20k-step DDPG run vs Stable-Baselines3 (zoo recipe)"),
    # The same goal for the other systems against gymnax's discrete-action originals (the policy picks the action).
    ("simulate-cartpole", 64, "gymnax", 1.5, "Cart-pole simulation vs gymnax CartPole-v1 (jit + vmap + scan), batch 64"),
    ("simulate-cartpole", 4096, "gymnax", 1.5,
     "Cart-pole simulation vs gymnax CartPole-v1 (jit + vmap + scan), batch 4096"),
    ("simulate-acrobot", 64, "gymnax", 1.5, "Acrobot simulation vs gymnax Acrobot-v1 (jit + vmap + scan), batch 64"),
    ("simulate-acrobot", 4096, "gymnax", 1.5, "Acrobot simulation vs gymnax Acrobot-v1 (jit + vmap + scan), batch 4096"),
]
COMMAND = "make bench   # pytest tests/benchmarks --benchmark-only, all cores and 1 thread; then this script"


def load_cases(path: Path) -> tuple[dict, list[dict]]:
    """The JSON's metadata and one flat record per benchmark (``extra_info`` plus the timing statistics)."""
    data = json.loads(path.read_text())
    cases = []
    for bench in data.get("benchmarks", []):
        info, stats = bench.get("extra_info", {}), bench["stats"]
        if "question" not in info:
            continue
        unit = "updates" if info.get("updates") else "env_steps"
        amount = info.get(unit, 0)
        cases.append({
            **info,
            "name": bench["name"],
            "mean_s": stats["mean"],
            "median_s": stats["median"],
            "min_s": stats["min"],
            "stddev_s": stats["stddev"],
            "rounds": stats["rounds"],
            "unit": unit,
            "rate": amount / stats["median"] if amount else 0.0,
        })
    return data, cases


def fmt_rate(rate: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{suffix}"
    return f"{rate:.3g}"


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


Key = tuple[str, str, int, int]  # question, device, threads, batch


def system_question(question: str) -> tuple[str, str] | None:
    """``(prefix, system)`` of a per-system question (``"simulate-cartpole"`` -> ``("simulate", "cartpole")``)."""
    prefix, _, system = question.partition("-")
    return (prefix, system) if prefix in SYSTEM_QUESTIONS and system and question not in QUESTIONS else None


def question_title(question: str) -> str:
    split = system_question(question)
    if split is None:
        return QUESTIONS.get(question, question)
    prefix, system = split
    return f"{SYSTEM_NAMES.get(system, system)}: {SYSTEM_QUESTIONS[prefix]}"


def question_rank(question: str) -> tuple:
    """Sort key: :data:`QUESTIONS` in order, then each system (:data:`SYSTEM_NAMES` order) simulation before BPTT."""
    if question in QUESTIONS:
        return (0, list(QUESTIONS).index(question))
    split = system_question(question)
    if split is None:
        return (2, question)
    prefix, system = split
    systems = list(SYSTEM_NAMES)
    return (1, systems.index(system) if system in systems else len(systems), system, list(SYSTEM_QUESTIONS).index(prefix))


def groups(cases: list[dict]) -> dict[Key, list[dict]]:
    """Cases by (question, device, threads, batch), sorted in that order (questions by :func:`question_rank`)."""
    out: dict[Key, list[dict]] = defaultdict(list)
    for case in cases:
        out[(case["question"], case["device"], case["threads"], case["batch"])].append(case)
    return dict(sorted(out.items(), key=lambda kv: (question_rank(kv[0][0]), *kv[0][1:])))


def best_ours(group: list[dict]) -> dict | None:
    ours = [c for c in group if c["case"] in OURS]
    return max(ours, key=lambda c: c["rate"]) if ours else None


def speedups(group: list[dict]) -> dict[str, float]:
    """Our fastest case's rate divided by each peer's rate (ratio of median times)."""
    best = best_ours(group)
    if best is None:
        return {}
    return {c["case"]: best["rate"] / c["rate"] for c in group if c["case"] not in OURS and c["rate"] > 0}


def case_table(question_cases: dict[Key, list[dict]]) -> list[str]:
    lines = ["| device | threads | batch | case | horizon | mean time | median time | rounds | rate (median) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (_, device, threads, batch), group in question_cases.items():
        for c in sorted(group, key=lambda c: -c["rate"]):
            unit = "updates/s" if c["unit"] == "updates" else "env-steps/s"
            lines.append(f"| {device} | {threads} | {batch:,} | {c['case']} | {c['horizon']} | "
                         f"{fmt_time(c['mean_s'])} | {fmt_time(c['median_s'])} | {c['rounds']} | "
                         f"{fmt_rate(c['rate'])} {unit} |")
    return lines


def ratio_table(question_cases: dict[Key, list[dict]]) -> list[str]:
    peers = sorted({p for group in question_cases.values() for p in speedups(group)})
    if not peers:
        return []
    lines = ["| device | threads | batch | ours (fastest) | " + " | ".join(f"× {p}" for p in peers) + " |",
             "|---|---:|---:|---|" + "---:|" * len(peers)]
    for (_, device, threads, batch), group in question_cases.items():
        best, ratios = best_ours(group), speedups(group)
        if best is None:
            continue
        cells = [f"{ratios[p]:.1f}×" if p in ratios else "" for p in peers]
        lines.append(f"| {device} | {threads} | {batch:,} | {best['case']} | " + " | ".join(cells) + " |")
    return lines


def target_rows(all_groups: dict[Key, list[dict]]) -> list[str]:
    lines = ["| target | device | threads | measured | required | met |", "|---|---|---:|---:|---:|:---:|"]
    for question, batch, peer, required, label in TARGETS:
        for (q, device, threads, b), group in all_groups.items():
            if (q, b) != (question, batch):
                continue
            best = best_ours(group)
            if best is None:
                continue
            if peer is None:
                measured, text, need = best["rate"], fmt_rate(best["rate"]), fmt_rate(required)
            elif peer in speedups(group):
                measured = speedups(group)[peer]
                other = next(c for c in group if c["case"] == peer)
                unit = "updates/s" if best["unit"] == "updates" else "env-steps/s"
                text = f"{measured:.1f}× ({best['case']}: {fmt_rate(best['rate'])} vs {fmt_rate(other['rate'])} {unit})"
                need = f"{required:g}×"
            else:
                continue
            met = "yes" if measured >= required else "no"
            lines.append(f"| {label} | {device} | {threads} | {text} | {need} | {met} |")
    return lines


def machine_lines(data: dict, cases: list[dict]) -> list[str]:
    machine, commit = data.get("machine_info", {}), data.get("commit_info", {})
    cpu = machine.get("cpu", {})
    threads = sorted({c["threads"] for c in cases})
    dirty = machine.get("code_dirty", commit.get("dirty"))  # code_dirty: outside results/ (tests/benchmarks/conftest.py)
    commit_id = commit.get("id", "unknown")[:12] + (" (uncommitted changes)" if dirty else "")
    gpus = sorted({c["device_name"] for c in cases if c.get("device_name")})
    return [
        f"- run: {data.get('datetime', 'unknown')}, commit {commit_id}",
        f"- machine: {cpu.get('brand_raw', machine.get('processor', 'unknown CPU'))}, "
        f"{cpu.get('count', '?')} logical cores, {machine.get('system', '')} {machine.get('release', '')}, "
        f"Python {machine.get('python_version', '?')}" + (f"; GPU: {', '.join(gpus)}" if gpus else ""),
        f"- torch CPU threads per case: {', '.join(map(str, threads))} (`BENCH_THREADS`)",
    ]


def cuda_lines(out: Path) -> list[str]:
    """A pointer to the CUDA run of ``make gpu-check`` (``cuda/BENCH.md`` next to this report), when there is one."""
    cuda = out.parent / "cuda" / "BENCH.md"
    if out.parent.name == "cuda" or not cuda.is_file():
        return []
    return ["- CUDA: [cuda/BENCH.md](cuda/BENCH.md), written by `make gpu-check` on a GPU machine (its own run, "
            "machine and commit)"]


def peer_lines(cases: list[dict]) -> list[str]:
    """Which optional peers ran (with the versions their cases recorded) and which did not."""
    lines = []
    for case, what in EXTRA_PEERS.items():
        ran = [c for c in cases if c["case"] == case]
        if ran:
            versions = sorted({c["peer"] for c in ran if c.get("peer")})
            questions = sorted({c["question"] for c in ran}, key=question_rank)
            lines.append(f"- peer {what}: ran ({', '.join(versions) or 'version not recorded'}; "
                         f"{', '.join(questions)})")
        else:
            lines.append(f"- peer {what}: did not run (the `peers` extra: `pip install -e \".[peers]\"`)")
    if not any(c["question"] == "ddpg-run" for c in cases):
        lines.append("- the whole DDPG runs (`ddpg-run`) did not run: they need `BENCH_FULL=1`")
    return lines


def run_lines(cases: list[dict]) -> list[str]:
    """The final evaluation return of each whole DDPG run, beside its speed."""
    runs = sorted((c for c in cases if c["question"] == "ddpg-run" and "return_mean" in c),
                  key=lambda c: (c["threads"], c["case"]))
    if not runs:
        return []
    lines = ["Final evaluation (the shared evaluator, 1000 states) of each run:", "",
             "| threads | case | return_mean | wall-clock |", "|---:|---|---:|---:|"]
    lines += [f"| {c['threads']} | {c['case']} | {c['return_mean']:.1f} | {fmt_time(c['median_s'])} |" for c in runs]
    return [*lines, ""]


def render(data: dict, cases: list[dict], figure: str | None, extra: Sequence[str] = ()) -> str:
    all_groups = groups(cases)
    lines = ["# Speed benchmarks", "", "Regenerate (overwrites this file, the JSON and the plot):", "",
             "```bash", COMMAND, "```", "", *machine_lines(data, cases), *peer_lines(cases), *extra, "",
             "Times are wall-clock, over the timed rounds after one warm-up round (which includes any "
             "`torch.compile`); rates are work per call divided by the median round. The machine is shared with "
             "other jobs: a burst of theirs can slow a few rounds many times over (compare mean and median), and "
             "all-core runs suffer most; compare cases of one run, not runs.", "",
             "## Targets", "", *target_rows(all_groups), ""]
    if figure:
        lines += [f"![throughput against batch size]({figure})", ""]
    for question in sorted({k[0] for k in all_groups}, key=question_rank):
        question_cases = {k: v for k, v in all_groups.items() if k[0] == question}
        lines += [f"## {question_title(question)}", "", *case_table(question_cases), ""]
        ratios = ratio_table(question_cases)
        if ratios:
            lines += ["Speed-up of our fastest case over each peer (ratio of median times):", "", *ratios, ""]
        if question == "ddpg-run":
            lines += run_lines([c for group in question_cases.values() for c in group])
    return "\n".join(lines)


def plot_throughput(cases: list[dict], path: Path) -> bool:
    """env-steps/s against batch size, one line per case, for the simulation and BPTT questions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [q for q in ("simulate", "bptt") if any(c["question"] == q for c in cases)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, question in zip(axes[0], panels, strict=True):
        lines: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
        for c in cases:
            if c["question"] == question and c["rate"] > 0:
                lines[(c["case"], c["device"], c["threads"])].append((c["batch"], c["rate"]))
        for (case, device, threads), points in sorted(lines.items()):
            points.sort()
            style = "-" if case in OURS else "--"
            ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{case} ({device}, {threads} thr.)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (parallel pendulums)")
        ax.set_ylabel("env-steps / s")
        ax.set_title(QUESTIONS[question].split(" (")[0])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", help="pytest-benchmark JSON files written by make bench")
    parser.add_argument("--out", type=Path, default=None, help="BENCH.md path (default: next to the first JSON)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line on how the run went (e.g. another job on the machine), shown under the machine")
    args = parser.parse_args(argv)
    data, cases = load_cases(args.json[0])
    for path in args.json[1:]:
        cases += load_cases(path)[1]
    if not cases:
        print(f"{', '.join(map(str, args.json))}: no benchmark of tests/benchmarks", file=sys.stderr)
        return 1
    out = args.out or args.json[0].with_name("BENCH.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = out.with_name("throughput.png")
    has_figure = plot_throughput(cases, figure)
    notes = [f"- note: {note}" for note in args.note]
    out.write_text(render(data, cases, figure.name if has_figure else None, [*cuda_lines(out), *notes]) + "\n")
    print(f"wrote {out}" + (f" and {figure}" if has_figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
