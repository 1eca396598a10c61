# Differentiable-physics policy learning: every command a user needs. `make help` lists them.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
# torch goes in first: this version is the CPU wheel cached on the dev machines; any torch >= 2.5 works.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,distributed,plots,stats,tune
EXP ?= pendulum_compare
TUNE ?= tune_pendulum
RACE ?= tune_race
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BACKEND ?= local
DEVICE ?= cpu
RESULTS ?= results
# The study's parts beside the race (its default-physics cells): the presets, then the gradient studies.
STUDY_EXPERIMENTS ?= study_presets
STUDY_GRADIENTS ?= study_gradients study_gradients_presets
# Systems without a grid DP: `make optimal-systems` runs research.analysis.trajopt for each (results/optimal/<system>/).
OPTIMAL_SYSTEMS ?= cartpole acrobot
# An experiment file with a [gradient_study] table is a measurement, not training runs: scripts/gradient_report.py
# draws its figures and report; any other experiment is aggregated, plotted, mapped and reported from its run directories.
REPORT_STEPS = $(if $(shell grep -qs '^\[gradient_study\]' experiments/$(EXP).toml && echo study),gradient-report,aggregate plot maps report)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint experiment tune race study study-report runs aggregate plot maps report render gradient-report optimal optimal-systems gap bench gpu-check clean

help: ## list every target with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

install: ## install torch first, then the package with its extras (EXTRAS=dev,distributed,plots,stats,tune)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[$(EXTRAS)]"

test: ## run the whole test suite (benchmarks run once each as plain tests)
	$(PYTHON) -m pytest -q --benchmark-disable

test-fast: ## run the tests without the slow learning checks
	$(PYTHON) -m pytest -q --benchmark-disable -m "not slow"

lint: ## ruff check of the package, scripts and tests
	$(PYTHON) -m ruff check research scripts tests

experiment: ## run experiments/$(EXP).toml (JOBS, BACKEND=local|ray, DEVICE), then its figures and REPORT.md
	$(PYTHON) -m research.experiment experiments/$(EXP).toml --jobs $(JOBS) --backend $(BACKEND) --device $(DEVICE) --results $(RESULTS)
	$(MAKE) --no-print-directory $(REPORT_STEPS) EXP=$(EXP) RESULTS=$(RESULTS)

tune: ## equal-budget Optuna search of experiments/$(TUNE).toml -> results/tune/$(TUNE)/, experiments/tuned/$(TUNE).toml
	$(PYTHON) -m research.tune experiments/$(TUNE).toml --jobs $(JOBS) --backend $(BACKEND) --device $(DEVICE) --results $(RESULTS)

race: ## the fair race: experiments/tuned/$(RACE).toml (written by make tune TUNE=$(RACE)): recipe and tuned rows -> results/$(RACE)/
	$(PYTHON) -m research.experiment experiments/tuned/$(RACE).toml --jobs $(JOBS) --backend $(BACKEND) --device $(DEVICE) --results $(RESULTS)
	$(MAKE) --no-print-directory aggregate plot maps report EXP=$(RACE) RESULTS=$(RESULTS)

study: ## the study, second edition: make race, study_presets, the gradient studies (each resumable), then results/study/REPORT.md
	$(MAKE) --no-print-directory race
	for exp in $(STUDY_EXPERIMENTS) $(STUDY_GRADIENTS); do $(MAKE) --no-print-directory experiment EXP=$$exp || exit 1; done
	$(MAKE) --no-print-directory study-report STUDY_MEDIA=--media

study-report: ## results/study/REPORT.md, findings.csv and figures from the study's finished parts (no runs)
	$(PYTHON) scripts/study.py $(RESULTS)/study --experiments $(RACE) $(STUDY_EXPERIMENTS) --gradients $(STUDY_GRADIENTS) $(STUDY_MEDIA)

aggregate: ## results/$(EXP)/summary.csv from the run directories
	$(PYTHON) scripts/aggregate.py $(RESULTS)/$(EXP)

plot: ## results/$(EXP)/figures/*.png from the run directories
	$(PYTHON) scripts/plot.py $(RESULTS)/$(EXP)

maps: ## results/$(EXP)/figures/{policy,value,gap}_map.png from the runs' policy.pt (and research.optimal)
	$(PYTHON) scripts/policy_maps.py $(RESULTS)/$(EXP)

render: ## results/$(EXP)/media/*.gif: the policies side by side from chosen evaluation starts (MP4 with ffmpeg)
	$(PYTHON) -m research.render $(RESULTS)/$(EXP)

report: ## results/$(EXP)/REPORT.md from the summary, figures and maps
	$(PYTHON) scripts/report.py $(RESULTS)/$(EXP)

gradient-report: ## results/$(EXP)/figures/*.png and REPORT.md of a gradient study, from its gradient_study.csv
	$(PYTHON) scripts/gradient_report.py $(RESULTS)/$(EXP)

optimal: ## results/optimal/: the pendulum's DP optimum per preset (PHYSICS="default noisy" for some), optimal-systems, REPORT.md
	$(PYTHON) -m research.analysis.optimal --out $(RESULTS)/optimal --device $(DEVICE) $(if $(PHYSICS),--physics $(PHYSICS))
	$(MAKE) --no-print-directory optimal-systems

gap: ## results/gap/: the gap to the optimum taken apart per preset/system (PHYSICS=..., GAP_EXPERIMENTS=dirs, REUSE=1: learners only, against the reference rows already there), REPORT.md
	$(PYTHON) -m research.analysis.gap --out $(RESULTS)/gap $(if $(PHYSICS),--physics $(PHYSICS)) $(if $(GAP_EXPERIMENTS),--experiments $(GAP_EXPERIMENTS)) $(if $(REUSE),--reuse-references)
	$(PYTHON) scripts/gap_report.py $(RESULTS)/gap

optimal-systems: ## results/optimal/<system>/: per-start trajectory-optimisation reference (OPTIMAL_SYSTEMS="cartpole acrobot"), REPORT.md
	for system in $(OPTIMAL_SYSTEMS); do \
		$(PYTHON) -m research.analysis.trajopt --system $$system --out $(RESULTS)/optimal/$$system || exit 1; \
	done
	$(PYTHON) scripts/optimal_report.py $(RESULTS)/optimal

bench: ## speed benchmarks, all cores and 1 thread -> results/bench/ (peers: the peers extra; BENCH_FULL=1: whole DDPG runs)
	mkdir -p results/bench
	$(PYTHON) -m pytest tests/benchmarks -q --benchmark-only --benchmark-json=results/bench/benchmark.json
	BENCH_THREADS=1 $(PYTHON) -m pytest tests/benchmarks -q --benchmark-only \
		--benchmark-json=results/bench/benchmark-1thread.json
	$(PYTHON) scripts/bench_report.py results/bench/benchmark.json results/bench/benchmark-1thread.json

gpu-check: ## on a CUDA machine (< 8 min on one H100): CUDA tests, benchmarks, pendulum_compare + ppo + ptd3 seed 0 -> results/bench/cuda/
	PYTHON=$(PYTHON) scripts/gpu_check.sh

clean: ## remove caches (never results)
	rm -rf .pytest_cache .ruff_cache .benchmarks build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
