"""Writes ``<exp>/REPORT.md``: the summary table, per-run results, figures, machine, versions, and how to regenerate.

    python scripts/report.py results/pendulum_compare

Every number comes from ``summary.csv``, ``runs.csv`` and ``overall.csv`` (written by ``scripts/aggregate.py``; the
section "Statistics over seeds" renders rliable's interval estimates from them); the report first
checks that they still match what the aggregation recomputes from the run directories, and stops if they do not.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from _rundata import (
    THRESHOLD,
    Run,
    experiment_dir,
    group_by_algo,
    has_finished_runs,
    load_manifest,
    load_runs,
)
from aggregate import CSV_FILES, csv_texts, load_optima, optimal_summary_path
from plot import FIGURES, STAT_FIGURES, ZOO_DDPG_RETURN
from tuning import tuning_section

from research.findings import answer, render, study_findings
from research.statistics import BOOTSTRAP_REPS


def _float(text: str) -> float | None:
    return float(text) if text != "" else None


def fmt_return(text: str) -> str:
    value = _float(text)
    return "" if value is None else f"{value:.1f}"


def fmt_ci(row: dict, stat: str) -> str:
    return f"{fmt_return(row[stat])} [{fmt_return(row[stat + '_ci_low'])}, {fmt_return(row[stat + '_ci_high'])}]"


def fmt_count(text: str) -> str:
    value = _float(text)
    return "" if value is None else f"{value:,.0f}"


def fmt_seconds(text: str) -> str:
    value = _float(text)
    return "" if value is None else f"{value:,.1f}"


def fmt_percent(text: str) -> str:
    value = _float(text)
    return "" if value is None else f"{100 * value:.1f}%"


def fmt_threshold(summary: list[dict]) -> str:
    return f"{float(summary[0]['threshold']) if summary else THRESHOLD:g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def fmt_score(text: str) -> str:
    value = _float(text)
    return "" if value is None else f"{value:.3f}"


def has_optimum(rows: list[dict]) -> bool:
    """Whether any row has an optimum to compare with (``scripts/aggregate.py`` leaves the cells empty otherwise)."""
    return any(row.get("optimum") not in ("", None) for row in rows)


def optimum_cells(row: dict) -> list[str]:
    return [fmt_return(row["gap_to_optimum"]) or "n/a", fmt_score(row["normalized_score"]) or "n/a"]


def several_presets(rows: list[dict]) -> bool:
    """Whether the rows span more than one physics preset (an experiment with a physics axis)."""
    return len({row["physics"] for row in rows}) > 1


def summary_table(rows: list[dict]) -> list[str]:
    threshold = fmt_threshold(rows)
    optimum = has_optimum(rows)
    axis = several_presets(rows)
    header = (["physics"] if axis else []) + ["algorithm", "seeds", "final return, mean [95% CI]", "IQM [95% CI]", "median", "success rate",
              "env steps", "wall-clock (s)", f"env steps to {threshold}", f"wall-clock to {threshold} (s)"]
    header += ["gap to optimum", "normalized score", "wall-clock to 0.9 (s)"] if optimum else []
    body = [([f"`{row['physics']}`"] if axis else []) + [
        f"`{row['algo']}`", row["n_seeds"], fmt_ci(row, "final_return_mean"), fmt_ci(row, "final_return_iqm"),
        fmt_return(row["final_return_median"]), fmt_percent(row["success_rate"]), fmt_count(row["env_steps"]),
        fmt_seconds(row["wall_time_s"]),
        f"{fmt_count(row['env_steps_to_threshold']) or 'never'} ({row['seeds_reaching_threshold']}/{row['n_seeds']})",
        fmt_seconds(row["wall_time_s_to_threshold"]) or "never",
    ] + (optimum_cells(row) + [f"{fmt_seconds(row['wall_time_s_to_90']) or 'never'} "
                               f"({row['seeds_reaching_90']}/{row['n_seeds']})"] if optimum else []) for row in rows]
    return markdown_table(header, body)


def runs_table(rows: list[dict]) -> list[str]:
    optimum = has_optimum(rows)
    axis = several_presets(rows)
    header = (["physics"] if axis else []) + ["algorithm", "seed", "final return (mean)", "IQM", "median", "worst episode", "success rate",
              "env steps", "wall-clock (s)"] + (["gap to optimum", "normalized score"] if optimum else [])
    body = [([f"`{row['physics']}`"] if axis else []) + [f"`{row['algo']}`", row["seed"], fmt_return(row["final_return_mean"]), fmt_return(row["final_return_iqm"]),
             fmt_return(row["final_return_median"]), fmt_return(row["final_return_min"]),
             fmt_percent(row["success_rate"]), fmt_count(row["env_steps"]), fmt_seconds(row["wall_time_s"])]
            + (optimum_cells(row) if optimum else []) for row in rows]
    return markdown_table(header, body)


def optimum_note(rows: list[dict]) -> list[str]:
    """What the optimum columns mean, with each physics' optimum (empty without one)."""
    if not has_optimum(rows):
        return []
    optima = sorted({(row["physics"], float(row["optimum"])) for row in rows if row.get("optimum") not in ("", None)})
    values = ", ".join(f"`{name}` {value:.1f}" for name, value in optima)
    return ["Gap to optimum: `R_opt - R` for the mean final return `R`, where `R_opt` is the best return of the "
            f"optimal-control yardstick on the physics the runs were scored on ({values}; "
            "[`results/optimal/REPORT.md`](../optimal/REPORT.md), `make optimal`: for the pendulum's presets the "
            "greedy policy of a dynamic-programming value table on a fine grid, for the other systems per-start "
            "trajectory optimisation or the reference controller, whichever is better; both achievable, so lower "
            "bounds on the true optimum). Normalized score: `(R - R_zero) "
            "/ (R_opt - R_zero)`, `R_zero` the return of never pushing: 0 is doing nothing, 1 the optimum. "
            "Wall-clock to 0.9: the median training seconds to the first evaluation at a normalized score of at "
            "least 0.9, over the seeds that got there (count in brackets).", ""]


def fmt_interval(row: dict, stat: str, fmt=fmt_score) -> str:
    """``value [low, high]`` of ``stat`` and its ``_ci_low`` / ``_ci_high`` columns (empty without a value)."""
    if row.get(stat) in ("", None):
        return ""
    return f"{fmt(row[stat])} [{fmt(row[stat + '_ci_low'])}, {fmt(row[stat + '_ci_high'])}]"


def fmt_reached(row: dict, key: str, seeds: str = "n_seeds") -> str:
    """``env steps / seconds (k/n)`` to a mark: medians over the ``k`` seeds that got there, ``never`` if none."""
    steps = fmt_count(row[f"env_steps_to_{key}"])
    if not steps:
        return "never" if row.get(f"seeds_reaching_{key}") not in ("", None) else "n/a"
    return f"{steps} / {fmt_seconds(row[f'wall_time_s_to_{key}'])} s ({row[f'seeds_reaching_{key}']}/{row[seeds]})"


def fmt_failures(row: dict, failed: str, n: str) -> str:
    """``k/n, rate [Clopper-Pearson low, high]`` (``n/a`` without a normalized score)."""
    if row.get("failure_rate") in ("", None):
        return "n/a"
    return f"{row[failed]}/{row[n]}, {fmt_interval(row, 'failure_rate', fmt_percent)}"


def statistics_section(summary: list[dict], overall: list[dict], exp_dir: Path) -> list[str]:
    """The rliable part of the report: per preset and method, the IQM of the normalized score, failures, the
    probability that the best method beats it and the times to 0.99 and to twice the best gap; over all tasks, the
    IQM, failures and the probability of improvement over the other family's best; and the two figures."""
    if not has_optimum(summary) and not any(row.get("best_algo") for row in summary):
        return []
    axis = several_presets(summary)
    lines = ["## Statistics over seeds", ""]
    header = (["physics"] if axis else []) + [
        "algorithm", "seeds", "IQM normalized score [95% CI]", f"failed seeds (score < {summary[0]['failure_score']}), "
        "rate [95% CI]", "P(best > this) [95% CI]", "to 0.99: env steps / seconds (seeds)",
        "to 2x best gap: env steps / seconds (seeds)"]
    body = [([f"`{row['physics']}`"] if axis else []) + [
        f"`{row['algo']}`", row["n_seeds"], fmt_interval(row, "normalized_score_iqm") or "n/a",
        fmt_failures(row, "failed_seeds", "n_seeds"),
        (f"`{row['best_algo']}` is best" if row["best_algo"] == row["algo"] else
         f"{fmt_interval(row, 'prob_best_improves')} (`{row['best_algo']}`)"),
        fmt_reached(row, "99"), fmt_reached(row, "2x_best_gap")] for row in summary]
    lines += markdown_table(header, body)
    gaps = sorted({(row["physics"], fmt_return(row["return_at_2x_best_gap"])) for row in summary
                   if row.get("return_at_2x_best_gap") not in ("", None)})
    lines += ["", "Computed with rliable (Agarwal et al., *Deep RL at the edge of the statistical precipice*, NeurIPS "
              "2021) through `research/statistics.py`. **IQM normalized score**: the interquartile mean (mean of the "
              "middle 50%) of the seeds' final normalized scores, with a 95% stratified-bootstrap interval (the seeds "
              f"resampled with replacement, {BOOTSTRAP_REPS:,} times, fixed RNG seed). **Failed seeds**: seeds whose final "
              "normalized score is below the threshold (0.9: a run that did not learn the task, not one that learned "
              "it worse), with the Clopper-Pearson exact 95% interval of the failure rate (0 failures of 5 seeds is "
              "[0%, 52.2%]: five seeds cannot show that a method never fails). **P(best > this)**: the probability that a seed of the "
              "method with the best IQM final return on the preset ends with a higher final return than a seed of "
              "this one (ties count half), with a 95% stratified-bootstrap interval (each method's seeds resampled "
              "independently); 0.5 is a coin flip. **To 0.99**: the median env steps and training seconds to the "
              "first evaluation at a normalized score of at least 0.99, over the seeds that got there (count in "
              "brackets). **To 2x best gap**: the same for the return within twice the best method's final gap to the "
              "optimum, `R_opt - 2 (R_opt - R_best)` with `R_best` the best method's IQM final return"
              + (f" ({', '.join(f'`{name}` {value}' for name, value in gaps)})" if gaps else "") + ".", ""]
    if len({row["physics"] for row in summary}) > 1 and overall:
        lines += ["### Over all tasks", ""]
        header = ["algorithm", "family", "tasks", "runs", "IQM normalized score [95% CI]",
                  "failed runs, rate [95% CI]", "P(this > opponent) [95% CI]"]
        body = [[f"`{row['algo']}`", row["family"], ", ".join(f"`{t}`" for t in row["tasks"].split()), row["runs"],
                 fmt_interval(row, "normalized_score_iqm"), fmt_failures(row, "failed_runs", "runs"),
                 f"{fmt_interval(row, 'prob_improvement') or 'n/a'} (`{row['opponent']}`)" if row["opponent"] else "n/a"]
                for row in overall]
        lines += markdown_table(header, body)
        lines += ["", "Each method over every task where it has a normalized score (its runs x tasks table; a method "
                  "with more seeds on some tasks contributes its first `runs` seeds of each): the IQM over all runs "
                  "and tasks with a stratified-bootstrap interval (seeds resampled within each task), failures over "
                  "all runs with the Clopper-Pearson interval, and the probability that a run of it ends above a run "
                  "of the opponent on the same task (averaged over the tasks both ran), the opponent being the best "
                  "method of the other family by overall IQM (backprop: `bptt`, `bptt_finetune`, `shac` and every "
                  "`bptt_*`; the rest model-free).", ""]
    lines += family_sentence(overall)
    for name, alt in zip(STAT_FIGURES, ("performance profiles", "probability of improvement"), strict=True):
        if (exp_dir / "figures" / name).is_file():
            lines += [f"![{alt}](figures/{name})", ""]
    if any((exp_dir / "figures" / name).is_file() for name in STAT_FIGURES):
        lines += ["Performance profiles: for each normalized score tau, the fraction of a method's runs (all tasks "
                  "pooled) whose final score is above tau, shaded 95% stratified-bootstrap band; a curve further "
                  "right and higher is better. Probability of improvement: P(X > Y) of final returns, per task then "
                  "averaged, with its 95% interval; each backprop method against each model-free one (or every method "
                  "against the best when one family ran); above 0.5 X tends to end higher.", ""]
    return lines


def family_sentence(overall: list[dict]) -> list[str]:
    """The headline: the probability of improvement of the best backprop method over the best model-free one."""
    best = {}
    for row in overall:
        if row["normalized_score_iqm"] and (row["family"] not in best or float(row["normalized_score_iqm"])
                                            > float(best[row["family"]]["normalized_score_iqm"])):
            best[row["family"]] = row
    backprop, model_free = best.get("backprop"), best.get("model-free")
    if backprop is None or model_free is None or backprop["opponent"] != model_free["algo"]:
        return []
    return [f"**Best backprop against best model-free**: `{backprop['algo']}` (IQM "
            f"{fmt_interval(backprop, 'normalized_score_iqm')}) against `{model_free['algo']}` (IQM "
            f"{fmt_interval(model_free, 'normalized_score_iqm')}): probability of improvement "
            f"{fmt_interval(backprop, 'prob_improvement')}.", ""]


def setup_section(runs: list[Run], manifest: dict | None = None) -> list[str]:
    """The resolved config of each algorithm (seed left out; with a physics axis, its config on the first preset,
    which differs on the others only in ``env.physics``), machines, library versions, commits and the experiment's
    wall-clock (``experiment.json``'s invocations)."""
    lines = ["## Setup", ""]
    presets = list(dict.fromkeys(run.physics for run in runs))
    for algo, group in group_by_algo(runs).items():
        config = {k: v for k, v in group[0].config["config"].items() if k != "seed"}
        same = ("identical for every seed" if len(presets) == 1 else
                f"on `{group[0].physics}`; the other presets differ only in `env.physics`")
        lines += [f"<details><summary><code>{algo}</code>: resolved config ({same})</summary>", "",
                  "```json", json.dumps(config, indent=2), "```", "", "</details>", ""]
    devices = sorted({run.config.get("device", "unknown") for run in runs})
    commits = sorted({str(run.config.get("git_commit")) for run in runs})
    versions = sorted({json.dumps(run.config.get("versions", {}), sort_keys=True) for run in runs})
    lines += [f"- Machine: {'; '.join(devices)}"]
    for text in versions:
        lines += ["- Libraries: " + ", ".join(f"{name} {version}" for name, version in json.loads(text).items())]
    lines += [f"- Code: git commit {', '.join(f'`{c}`' for c in commits)}"]
    if any(c.endswith("-dirty") or c == "None" for c in commits):
        lines += ["  (`-dirty`: the working tree had uncommitted changes; `None`: not run from a git checkout)"]
    lines += wall_clock_lines(manifest or {})
    return lines + [""]


def wall_clock_lines(manifest: dict) -> list[str]:
    """The experiment's end-to-end wall-clock from ``experiment.json``'s ``invocations`` (``[]`` when none)."""
    invocations = [entry for entry in manifest.get("invocations", []) if entry.get("runs_completed")]
    if not invocations:
        return []
    total = sum(entry["wall_time_s"] for entry in invocations)
    runs = sum(entry["runs_completed"] for entry in invocations)
    parts = ", ".join(f"{entry['started']}: {entry['runs_completed']} runs in {entry['wall_time_s'] / 60:.1f} min "
                      f"({entry['jobs']} at a time, {entry['cpus_per_run']} CPU each)" for entry in invocations)
    return [f"- Experiment wall-clock: {total / 60:.1f} min for {runs} runs over {len(invocations)} invocation(s) of "
            f"the runner ({parts}); the runs only, not the aggregation, figures and report."
            + (f" The other {len(manifest.get('runs', [])) - runs} planned runs finished before the runner recorded "
               "its invocations." if runs < len(manifest.get("runs", [])) else "")]


def regenerate_command(exp_dir: Path) -> str:
    results = exp_dir.parent
    extra = "" if results == Path("results") else f" RESULTS={results}"
    return f"make experiment EXP={exp_dir.name}{extra}"


def findings_section(per_run: list[dict]) -> list[str]:
    """The findings of :mod:`research.findings` on this experiment's runs (``[]`` when no task has both families):
    the two-sentence answer, the headline findings (each task's best backpropagation method against its best
    model-free one) and, folded, every backpropagation method's."""
    findings = study_findings(per_run)
    if not any(f.kind == "final score" for f in findings):
        return []
    head = [f for f in findings if f.best]
    rest = [f for f in findings if not f.best]
    lines = ["## Findings", "", *(f"- {sentence}" for sentence in answer(findings)), "",
             "Each task's best backpropagation method against its best model-free method (both by the IQM of the "
             "final normalized score over seeds), decided by the test in the third column (`research/findings.py`): "
             "a probability of improvement whose 95% stratified-bootstrap interval lies above or below 0.5; a ratio "
             "of median times to a normalized score of 0.99 (a seed that never got there counts as never) whose 95% "
             "bootstrap interval lies above or below 1; otherwise `tie` (`undecided`: neither got there on most "
             "seeds). Failures: seeds below a normalized score of 0.9, with the Clopper-Pearson interval.", "",
             *render(head), ""]
    if rest:
        lines += [f"<details><summary>Every other backpropagation method against the same opponent ({len(rest)} "
                  "findings)</summary>", "", *render(rest), "", "</details>", ""]
    return lines


NOTES = "NOTES.md"


def notes_section(exp_dir: Path) -> list[str]:
    """The experiment's hand-written discussion, ``<exp_dir>/NOTES.md``, under its own heading (none: no lines).

    What a table cannot say (why a budget bound a method, what a surprising row means) is kept in that file, so
    regenerating the report keeps it and a reader sees plainly which text is measured and which is commentary.
    """
    path = exp_dir / NOTES
    if not path.is_file():
        return []
    return [f"## Discussion (written by hand: `{NOTES}`, kept when the report is regenerated)", "",
            path.read_text().strip(), ""]


def render_report(exp_dir: Path, summary: list[dict], per_run: list[dict], runs: list[Run],
                  overall: list[dict] | None = None) -> str:
    manifest = load_manifest(exp_dir) or {}
    threshold = fmt_threshold(summary)
    lines = [f"# Experiment `{exp_dir.name}`", ""]
    if manifest.get("description"):
        lines += [manifest["description"], ""]
    if manifest.get("source"):
        lines += [f"Defined in `{manifest['source']}`; every algorithm runs seeds {manifest.get('seeds')}.", ""]
    lines += ["## Results", ""]
    lines += summary_table(summary)
    lines += [
        "",
        "Final return: each run's last evaluation (deterministic policy, 200-step undiscounted return averaged over the "
        "fixed evaluation states); then, over seeds, the mean and the interquartile mean (IQM, mean of the middle 50% of "
        f"seeds) with 95% stratified-bootstrap confidence intervals (rliable's, {BOOTSTRAP_REPS:,} resamples of the seeds, "
        "fixed RNG seed). Success rate: share "
        "of evaluation episodes that end upright, averaged over seeds. Env steps and wall-clock: totals per run, averaged "
        f"over seeds. To {threshold}: the median over the seeds that got there (count in brackets) of the env steps and "
        "seconds at the first evaluation whose mean return reached it. Wall-clock is training time: seconds since the run "
        "started less the time spent in the shared evaluator (kept apart as `eval_time_s`), so it does not depend on "
        "how often a method is evaluated.",
        "",
    ]
    lines += optimum_note(summary)
    lines += statistics_section(summary, overall or [], exp_dir)
    lines += findings_section(per_run)
    lines += notes_section(exp_dir)
    figures = [(name, xlabel) for name, xlabel, _ in FIGURES.values() if (exp_dir / "figures" / name).is_file()]
    for name, xlabel in figures:
        lines += [f"![evaluation return against {xlabel}](figures/{name})", ""]
    if figures:
        lines += [f"Thick lines: mean over seeds (a seed that finished earlier keeps its final return); thin lines: each "
                  f"seed; shaded: 95% bootstrap CI over seeds; dashed: {threshold}; dotted: rl-baselines3-zoo DDPG on "
                  f"Gymnasium Pendulum-v1 after 20k steps ({ZOO_DDPG_RETURN:g}, one run). Wall-clock is each run's own, "
                  "measured while the experiment's runs shared the machine (`JOBS` at a time, default one per core).", ""]
    if several_presets(per_run):
        lines += ["### Per run", "", f"<details><summary>{len(per_run)} runs</summary>", ""] + runs_table(per_run)
        lines += ["", "</details>", ""]
    else:
        lines += ["### Per run", ""] + runs_table(per_run) + [""]
    maps = exp_dir / "figures" / "policy_maps.md"  # written by scripts/policy_maps.py (make experiment runs it first)
    if maps.is_file():
        lines += [maps.read_text().rstrip(), ""]
    lines += tuning_section(exp_dir)
    lines += setup_section(runs, manifest)
    lines += ["## Regenerate", "", "```bash", regenerate_command(exp_dir), "```", "",
              "Finished runs are reused when their config is unchanged; `scripts/aggregate.py`, `scripts/plot.py` and "
              "`scripts/report.py` rebuild `summary.csv`, `runs.csv`, `figures/` and this report from the run "
              "directories alone.", ""]
    return "\n".join(lines)


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path, help="results/<experiment>")
    parser.add_argument("--optimal", type=Path, default=None,
                        help="the yardstick's summary.csv that aggregate.py read (default: <results>/optimal/summary.csv)")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.experiment_dir)
    if not has_finished_runs(exp_dir):
        print(f"{exp_dir}: no finished training runs ([<physics>/]<algo>/seed_<k>/summary.json); no report to write")
        return 0
    paths = [exp_dir / name for name in CSV_FILES]
    if not all(path.is_file() for path in paths):
        sys.exit(f"error: {' or '.join(map(str, paths))} is missing; run `python scripts/aggregate.py {exp_dir}` first")
    summary_path = paths[0]
    summary_text, runs_text, overall_text = (path.read_text() for path in paths)
    threshold = float(read_csv(summary_text)[0]["threshold"]) if read_csv(summary_text) else THRESHOLD
    runs = load_runs(exp_dir)
    optima = load_optima(args.optimal or optimal_summary_path(exp_dir))
    if (summary_text, runs_text, overall_text) != csv_texts(runs, threshold, optima):
        sys.exit(f"error: {summary_path} no longer matches the run directories; run "
                 f"`python scripts/aggregate.py {exp_dir}` first")
    report = render_report(exp_dir, read_csv(summary_text), read_csv(runs_text), runs, read_csv(overall_text))
    (exp_dir / "REPORT.md").write_text(report)
    print(f"wrote {exp_dir / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ImportError as error:  # rliable missing: research.statistics names the install command
        sys.exit(f"error: {error}")
