"""The study: when does backpropagation through the simulator beat model-free RL? ``results/study/REPORT.md``.

    python scripts/study.py results/study --experiments tune_race study_presets \\
        --gradients study_gradients study_gradients_presets

``make study`` runs the parts (the race, the presets experiment, the two gradient studies; each resumable) and then
this script, which reads only what they wrote under the results folder: each training experiment's ``runs.csv``,
``summary.csv`` and run directories (``scripts/aggregate.py`` first), each gradient study's ``gradient_study.csv``
and ``config.json``. It writes ``REPORT.md``, ``findings.csv`` (every finding, one row each), ``figures/`` and, with
``--media``, ``media/<task>.gif`` (each task's best backpropagation and model-free policies side by side).
A hand-written ``NOTES.md`` in the study's folder is rendered under its own heading and kept on regeneration.

Every verdict is a :class:`research.findings.Finding`: a claim, the numbers it rests on and the test that decides
it (a probability of improvement or a ratio of median times to a normalized score of 0.99, with its 95% interval).
The report renders them with one template; nothing here names a preset, a method or a family. The tasks are the
experiments' ``physics`` entries, the families come from the algorithm registry, the physics axes from the
pendulum's presets (:data:`research.systems.pendulum.AXES`) plus the systems at default physics. Only the rows
whose label ends with ``--rows`` (default ``_tuned``: every method at the settings the race's tuning chose) enter the
findings; the race's recipe rows stay in its own report.

The study counts only when every run and measurement comes from one version of ``research/``: the report checks the
``research/`` tree of every recorded commit (``git rev-parse <commit>:research``) and says which.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from _rundata import load_manifest, load_runs
from gradient_report import load_study
from report import notes_section

from research.findings import Finding, answer, render, study_findings
from research.systems.pendulum import AXES

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_HORIZON = 64
"""The horizon of the gradient table: the BPTT policies' training horizon scale (the nearest measured one is used)."""
SYSTEMS_AXIS = "systems"
"""The axis of the systems at default physics: each task whose name is a system (not a pendulum preset)."""


@dataclass
class Part:
    """One finished training experiment of the study."""

    name: str
    directory: Path
    summary: list[dict]
    runs: list[dict]
    commits: list[str]
    wall_time_s: float
    devices: list[str]


@dataclass
class GradientPart:
    """One gradient study of the study."""

    name: str
    directory: Path
    rows: list[dict]
    info: dict


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_part(directory: Path) -> Part:
    """A training experiment's aggregated tables, the commits of its runs and its runner wall-clock; exits with a
    one-line message naming the command to run when it has not been aggregated."""
    if not (directory / "runs.csv").is_file() or not (directory / "summary.csv").is_file():
        sys.exit(f"error: {directory} has no runs.csv and summary.csv; run `python scripts/aggregate.py {directory}` "
                 "(or its make target) first")
    runs = load_runs(directory)
    manifest = load_manifest(directory) or {}
    wall = sum(entry["wall_time_s"] for entry in manifest.get("invocations", []) if entry.get("runs_completed"))
    return Part(directory.name, directory, _read_csv(directory / "summary.csv"), _read_csv(directory / "runs.csv"),
                sorted({str(run.config.get("git_commit")) for run in runs}), float(wall),
                sorted({str(run.config.get("device", "unknown")) for run in runs}))


def load_gradient_part(directory: Path) -> GradientPart:
    """A gradient study's rows (numbers parsed) and its ``config.json``."""
    _, rows, info = load_study(directory)
    return GradientPart(directory.name, directory, rows, info)


def research_tree(commit: str) -> str | None:
    """The git tree of ``research/`` at ``commit`` (``None`` for a dirty or unknown commit)."""
    if not commit or commit == "None" or commit.endswith("-dirty"):
        return None
    done = subprocess.run(["git", "rev-parse", f"{commit}:research"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def code_lines(parts: Sequence[Part], gradients: Sequence[GradientPart]) -> tuple[bool, list[str]]:
    """``(one version, lines)``: the commits each part recorded and whether they share one ``research/`` tree."""
    commits = {part.name: part.commits for part in parts}
    commits.update({part.name: [str(part.info.get("git_commit"))] for part in gradients})
    trees = {commit: research_tree(commit) for names in commits.values() for commit in names}
    distinct = set(trees.values())
    one = len(distinct) == 1 and None not in distinct
    lines = ["## Code version", ""]
    lines += [f"- `{name}`: commit " + ", ".join(f"`{c[:12]}`" for c in names) for name, names in commits.items()]
    if one:
        lines += ["", f"Every run and measurement of the study ran on one version of `research/` (git tree "
                  f"`{next(iter(distinct))[:12]}`): the commits above differ only outside it (results, scripts, "
                  "documentation).", ""]
    else:
        unknown = [c for c, t in trees.items() if t is None]
        lines += ["", "**Not one code version**: the parts ran on " + f"{len(distinct - {None})} `research/` tree(s)"
                  + (f"; no tree for {', '.join(f'`{c}`' for c in unknown)} (dirty, or not in this clone)"
                     if unknown else "") + ". Regenerate the parts from one clean commit before quoting the study.", ""]
    return one, lines


def tuned_only(rows: Sequence[dict], suffix: str) -> list[dict]:
    return [row for row in rows if row["algo"].endswith(suffix)]


def _f(value: object) -> float:
    return math.nan if value in ("", None) else float(value)


def task_table(summary: Sequence[dict]) -> list[str]:
    """Per task and method: IQM normalized score [95% CI], the gap of the mean final return to the optimum, failed
    seeds, and median seconds and env steps to a normalized score of 0.99 over the seeds that got there."""
    header = ["task", "method", "seeds", "IQM normalized score [95% CI]", "gap to optimum", "failed seeds",
              "to 0.99: seconds / env steps (seeds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary:
        iqm = _f(row.get("normalized_score_iqm"))
        score = ("n/a" if math.isnan(iqm) else
                 f"{iqm:.3f} [{_f(row['normalized_score_iqm_ci_low']):.3f}, {_f(row['normalized_score_iqm_ci_high']):.3f}]")
        seconds = _f(row.get("wall_time_s_to_99"))
        reached = (f"{seconds:.3g} s / {_f(row['env_steps_to_99']):.3g} ({row['seeds_reaching_99']}/{row['n_seeds']})"
                   if math.isfinite(seconds) else f"never (0/{row['n_seeds']})")
        gap, failed, n = _f(row.get("gap_to_optimum")), _f(row.get("failed_seeds")), row["n_seeds"]
        lines.append(f"| `{row['physics']}` | `{row['algo']}` | {n} | {score} | "
                     f"{'n/a' if math.isnan(gap) else f'{gap:.1f}'} | "
                     f"{'n/a' if math.isnan(failed) else f'{failed:.0f}/{n}'} | {reached} |")
    return lines


def axes(tasks: Sequence[str]) -> list[tuple[str, list[str], str, str]]:
    """``(axis, tasks, reference, what)`` of the physics axes present in ``tasks`` (the pendulum's presets, each
    against default physics) and of the systems axis (each system at default physics against the pendulum)."""
    found = []
    for name, presets, reference, what in AXES:
        present = [p for p in presets if p in tasks]
        if present and reference in tasks:
            found.append((name, present, reference, what))
    systems = [t for t in tasks if t not in {p for _, presets, _, _ in AXES for p in presets} and t != "default"]
    if systems and "default" in tasks:
        found.append((SYSTEMS_AXIS, systems, "default", "the cart-pole and the acrobot against the pendulum, each at "
                      "default physics"))
    return found


def axis_lines(findings: Sequence[Finding], tasks: Sequence[str]) -> list[str]:
    """One bullet per axis: the headline verdicts (final score, seconds to 0.99) on the reference and on each task
    of the axis, each quoted from its finding."""
    head = {(f.task, f.kind): f for f in findings if f.best}
    lines = []
    for name, members, reference, what in axes(tasks):
        parts = []
        for task in (reference, *members):
            score, seconds = head.get((task, "final score")), head.get((task, "seconds to 0.99"))
            if score is None:
                continue
            parts.append(f"`{task}`: {score.claim}, P = {score.statistic:.2f} [{score.low:.2f}, {score.high:.2f}]"
                         + (f"; {seconds.claim}" if seconds is not None else ""))
        if parts:
            lines.append(f"- **{name}** ({what}): " + "; ".join(parts) + ".")
    return lines


def gradient_lines(parts: Sequence[GradientPart], horizon: int = GRADIENT_HORIZON) -> list[str]:
    """Per task: at the trained policy and the measured horizon nearest ``horizon``, the first-order gradient's
    variance against the likelihood-ratio one and the cosine of their means; at the random policy, the first horizon
    from which first order is no longer the lower-variance estimator."""
    if not parts:
        return []
    header = ["task", "system", "H (seconds)", "trained policy: first-order / likelihood-ratio variance",
              "cosine of the means", "random policy: first order loses from H ="]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for part in parts:
        physics = list(dict.fromkeys(row["physics"] for row in part.rows))
        for name in physics:
            rows = [row for row in part.rows if row["physics"] == name]
            info = {"system": "pendulum", "time_step": 0.05, **part.info.get("physics", {}).get(name, {})}
            cell = {(row["policy"], int(row["horizon"]), row["estimator"]): row for row in rows}
            horizons = sorted({int(row["horizon"]) for row in rows})
            h = min(horizons, key=lambda x: abs(x - horizon))
            first, zeroth = cell.get(("trained", h, "first_order")), cell.get(("trained", h, "likelihood_ratio"))
            ratio = (f"{first['variance_total'] / zeroth['variance_total']:.3g}" if first and zeroth else "n/a")
            cosine = f"{first['cosine']:.2f}" if first and not math.isnan(first.get("cosine", math.nan)) else "n/a"
            loses = "never"
            for candidate in horizons:
                later = [x for x in horizons if x >= candidate]
                if all(("random", x, "first_order") in cell and ("random", x, "likelihood_ratio") in cell
                       and cell["random", x, "first_order"]["variance_total"]
                       >= cell["random", x, "likelihood_ratio"]["variance_total"] for x in later):
                    loses = f"{candidate} ({candidate * info['time_step']:.3g} s)"
                    break
            lines.append(f"| `{name}` | {info['system']} | {h} ({h * info['time_step']:.3g} s) | {ratio} | {cosine} | "
                         f"{loses} |")
    return lines


def median_seed_policy(parts: Sequence[Part], task: str, label: str) -> Path | None:
    """The ``policy.pt`` of ``label``'s run on ``task`` with the median final return (the lower of the two middle
    ones for an even count), from whichever part ran it; ``None`` when none did."""
    for part in parts:
        rows = sorted((row for row in part.runs if row["physics"] == task and row["algo"] == label),
                      key=lambda row: float(row["final_return_mean"]))
        if rows:
            row = rows[(len(rows) - 1) // 2]
            path = part.directory / task / label / f"seed_{row['seed']}" / "policy.pt"
            return path if path.is_file() else None
    return None


def render_media(out: Path, parts: Sequence[Part], findings: Sequence[Finding]) -> list[tuple[str, Path]]:
    """Per task, one GIF of its best backpropagation and best model-free method side by side (the median seed of
    each), from the starts ``python -m research.render --system`` chooses (the first one's best, median and worst of
    the first 100 evaluation starts): ``out/media/<task>.gif``. Returns ``[(task, path)]``; a task the renderer
    cannot draw (its error on one line) is left out and the others go on."""
    from research.render import main as render

    written = []
    for finding in findings:
        if not (finding.best and finding.kind == "final score"):
            continue
        policies = [median_seed_policy(parts, finding.task, label) for label in (finding.subject, finding.opponent)]
        if None in policies:
            continue
        config = json.loads((policies[0].parent / "config.json").read_text())["config"]
        system, preset = config["env"].get("system", "pendulum"), config["env"].get("physics", "default")
        path = out / "media" / f"{finding.task}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            render(["--system", system, "--physics", preset, "--policy", *map(str, policies), "--out", str(path),
                    "--mp4", "no"])
        except (ValueError, RuntimeError) as error:  # one task the renderer cannot draw costs only its animation
            print(f"no animation for {finding.task}: the renderer failed ({error})", file=sys.stderr)
            continue
        written.append((finding.task, path))
    return written


def findings_csv(findings: Sequence[Finding], path: Path) -> None:
    """``findings.csv``: one row per finding (kind, task, subject, opponent, verdict, statistic, interval, the
    numbers it quotes as JSON, the claim and its test)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "task", "subject", "opponent", "verdict", "statistic", "low", "high", "best",
                         "numbers", "claim", "test"])
        for f in findings:
            data = asdict(f)
            writer.writerow([f.kind, f.task, f.subject, f.opponent, f.verdict, f.statistic, f.low, f.high, f.best,
                             json.dumps(dict(data["numbers"]), sort_keys=True), f.claim, f.test])


def draw_heatmaps(summary: Sequence[dict], figures: Path) -> list[str]:
    """The study's two heat maps (task x method): normalized score and time to 0.99 (``scripts/plot.py``'s)."""
    from plot import HEATMAPS, plot_heatmaps

    def parsed(row: dict) -> dict:
        numbers = ("normalized_score", "gap_to_optimum", "n_seeds", "env_steps_to_99", "wall_time_s_to_99",
                   "seeds_reaching_99")
        return {"physics": row["physics"], "algo": row["algo"], **{k: _f(row.get(k)) for k in numbers}}

    figures.mkdir(parents=True, exist_ok=True)
    plot_heatmaps([parsed(row) for row in summary], figures, "study")
    return list(HEATMAPS)


def report(out: Path, parts: Sequence[Part], gradients: Sequence[GradientPart], suffix: str = "_tuned",
           figures: bool = True, media: bool = False) -> str:
    """The study's ``REPORT.md`` text (and ``findings.csv``, ``figures/`` under ``out``)."""
    summary = tuned_only([row for part in parts for row in part.summary], suffix)
    runs = tuned_only([row for part in parts for row in part.runs], suffix)
    findings = study_findings(runs)
    tasks = list(dict.fromkeys(row["physics"] for row in runs))
    one, code = code_lines(parts, gradients)
    out.mkdir(parents=True, exist_ok=True)
    findings_csv(findings, out / "findings.csv")
    wall = sum(part.wall_time_s for part in parts) + sum(float(g.info.get("wall_time_s") or 0.0) for g in gradients)
    devices = sorted({d for part in parts for d in part.devices} | {str(g.info.get("device")) for g in gradients})
    methods = list(dict.fromkeys(row["algo"] for row in runs))
    lines = ["# When does backpropagation through the simulator beat model-free RL? (second edition)", "",
             f"{len(tasks)} tasks ({', '.join(f'`{t}`' for t in tasks)}), {len(methods)} methods at their tuned "
             f"settings ({', '.join(f'`{m}`' for m in methods)}), {len(runs)} runs, scored by one evaluator against "
             "each task's optimum. Parts: " + ", ".join(f"[`{p.name}`](../{p.name}/REPORT.md)"
                                                         for p in (*parts, *gradients)) + ".", ""]
    if not one:
        lines += ["> **Not one code version** (see *Code version*): these numbers are not the study's yet.", ""]
    lines += ["## Answer", "", *answer(findings), "",
              f"The study's wall-clock: {wall / 3600:.2f} h of runner time over its parts (training runs "
              f"{sum(p.wall_time_s for p in parts) / 3600:.2f} h, gradient measurements "
              f"{sum(float(g.info.get('wall_time_s') or 0.0) for g in gradients) / 3600:.2f} h) on "
              f"{'; '.join(devices)}.", ""]
    lines += ["## Every task and method", "", *task_table(summary), "",
              "IQM normalized score: the interquartile mean of the seeds' final normalized scores (1 = the task's "
              "optimum, 0 = the zero-action policy) with its 95% stratified-bootstrap interval. Gap: the task's "
              "optimum minus the mean final return. Failed: final normalized score below 0.9. Times: training "
              "seconds and env steps to the first evaluation at a normalized score of 0.99, medians over the seeds "
              "that got there.", ""]
    if figures and summary:
        for name in draw_heatmaps(summary, out / "figures"):
            lines += [f"![{name[:-4].replace('_', ' ')}](figures/{name})", ""]
    head = [f for f in findings if f.best]
    rest = [f for f in findings if not f.best]
    lines += ["## Findings", "",
              "Each task's best backpropagation method against its best model-free method (both by the IQM of the "
              "final normalized score), decided by the test in the third column (`research/findings.py`): a "
              "probability of improvement whose 95% stratified-bootstrap interval lies above or below 0.5; a ratio of "
              "median times to a normalized score of 0.99 (a seed that never got there counts as never) whose 95% "
              "bootstrap interval lies above or below 1; otherwise `tie`. Every finding is a row of "
              "[`findings.csv`](findings.csv).", "", *render(head), ""]
    if rest:
        lines += [f"<details><summary>Every other backpropagation method against the same opponent ({len(rest)} "
                  "findings)</summary>", "", *render(rest), "", "</details>", ""]
    along = axis_lines(findings, tasks)
    if along:
        lines += ["## Along each axis", "", *along, ""]
    table = gradient_lines(gradients)
    if table:
        lines += ["## Why: the gradients on each task", "",
                  "From the gradient studies (" + ", ".join(f"[`{g.name}`](../{g.name}/REPORT.md)" for g in gradients)
                  + "): the first-order (BPTT) gradient of the smoothed H-step return against the likelihood-ratio "
                  "one, at each task's tuned BPTT policy of the study (seed 0) and at a random policy. A variance "
                  "ratio below 1: first order is the lower-variance estimator there; a cosine near 1: both estimate "
                  "the same direction (first order is unbiased there).", "", *table, ""]
    animations = (render_media(out, parts, findings) if media else
                  [(task, out / "media" / f"{task}.gif") for task in tasks if (out / "media" / f"{task}.gif").is_file()])
    if animations:
        lines += ["## Animations", "",
                  "Per task, its best backpropagation method beside its best model-free one (the median seed of "
                  "each; the first panel's best, median and worst of the first 100 evaluation starts; "
                  "`python -m research.render --system`):", ""]
        lines += [f"- `{task}`: ![{task}](media/{path.name})" for task, path in animations] + [""]
    lines += notes_section(out)
    lines += code
    lines += ["## Regenerate", "", "```bash", "make study", "```", "",
              "Each part resumes where it stopped; this report is rebuilt from the parts' files alone by "
              "`python scripts/study.py " + " ".join(_invocation(out, parts, gradients, suffix)) + "`.", ""]
    return "\n".join(lines)


def _invocation(out: Path, parts: Sequence[Part], gradients: Sequence[GradientPart], suffix: str) -> list[str]:
    args = [str(out), "--experiments", *(p.name for p in parts)]
    if gradients:
        args += ["--gradients", *(g.name for g in gradients)]
    return args + ([] if suffix == "_tuned" else ["--rows", suffix])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the study's folder, e.g. results/study (its parts lie beside it)")
    parser.add_argument("--experiments", nargs="+", required=True, help="training experiments (folders beside out)")
    parser.add_argument("--gradients", nargs="*", default=[], help="gradient studies (folders beside out)")
    parser.add_argument("--rows", default="_tuned", help="the suffix of the method labels that enter the findings")
    parser.add_argument("--media", action="store_true", help="(re)render the animations under <out>/media first")
    args = parser.parse_args(argv)
    parts = [load_part(args.out.parent / name) for name in args.experiments]
    gradients = [load_gradient_part(args.out.parent / name) for name in args.gradients]
    text = report(args.out, parts, gradients, args.rows, media=args.media)
    (args.out / "REPORT.md").write_text(text)
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

