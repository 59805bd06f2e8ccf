# sixfold: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PYTHON := $(VENV)/bin/python
LOCK   := requirements.lock
# The environment is rebuilt only when the lock file (or the interpreter) changes.
STAMP  := $(VENV)/.sixfold-lock.sha256
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Nothing here may reach the network at run time.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

PYTEST_ARGS ?=
# The suite runs on every core (pytest-xdist, at most 4 workers; a test module's tests on one worker,
# so its fixtures are built once; tests/conftest.py orders the modules). TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
PYTEST_PARALLEL = $(if $(filter 0 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

.PHONY: help setup test-tools bench-tools run photos report registry serve push pull prefect-server deploy monitor drift-demo test test-fast test-profile lint format bench bench-selftest flow exps clean lock

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: ## create .venv from requirements.lock (skipped when the lock is unchanged)
	@want="$$(cat $(LOCK) | sha256sum | cut -d' ' -f1)-$$(python3 -c 'import sys; print(sys.version.split()[0])')"; \
	if [ -x "$(PYTHON)" ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$want" ]; then \
		echo "setup: .venv matches $(LOCK), nothing to install"; \
	else \
		echo "setup: installing $(LOCK) into $(VENV) (about 5 minutes and 6.6 GB the first time)"; \
		rm -rf $(VENV) && python3 -m venv $(VENV) && \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check -r $(LOCK) && \
		echo "$$want" > $(STAMP) && echo "setup: done"; \
	fi

test-tools: ## install the Debian tools the tests need when missing (chromium: the HTML report's browser test)
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "test-tools: installing chromium (apt-get; needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && \
		echo "test-tools: chromium installed"; \
	fi

bench-tools: ## install the Debian tools the benchmarks need when missing (hey: the serve_load HTTP load generator)
	@if ! command -v hey >/dev/null 2>&1; then \
		echo "bench-tools: installing hey (apt-get; needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null && \
		echo "bench-tools: hey installed"; \
	fi

run: setup ## set up, then run the pipeline (dvc repro); ends with the accuracy line or the failing stage's exit code
	@$(PYTHON) -m flows.repro

PHOTOS ?= data/photo_patches

photos: setup ## write a photo-like data set (14 classes of photo patches, from scikit-learn's sample photos) to $(PHOTOS)
	@$(PYTHON) -m tasks.data.photos $(PHOTOS) --per-class 60

report: setup ## bring the pipeline up to date and say where its HTML report is (reports/index.html); rebuilt when a drift check or continual decision is newer than the page
	@$(PYTHON) -m flows.repro report && \
	if [ -n "$$(find reports/monitor reports/continual -name '*.json' -newer reports/index.html 2>/dev/null)" ]; then \
		echo "report: drift checks or continual decisions newer than the page: rebuilding it"; \
		$(PYTHON) -m flows.repro --force --single-item report; \
	fi && echo "report: open $(abspath reports/index.html) in a browser (works offline)"

REMOTE ?=

push: setup ## send what dvc.lock and the .dvc files (continual batches) record to the DVC remote (REMOTE=name: not the default one)
	@$(PYTHON) -m flows.remote push $(REMOTE)

pull: setup ## fetch what dvc.lock and the .dvc files record from the DVC remote; after it no stage needs to rerun
	@$(PYTHON) -m flows.remote pull $(REMOTE)

serve: setup ## serve the champion over HTTP with BentoML on serve.host:serve.port (127.0.0.1:3000; run `make run` first)
	@test -d models/bentoml/models/sixfold-classifier || { echo "make serve: no packaged champion in models/bentoml; run make run first" >&2; exit 1; }
	@BENTOML_HOME=$(abspath models/bentoml) $(VENV)/bin/bentoml serve deploy.service:Classifier

PREFECT_PORT ?= 4200
PREFECT_URL := http://127.0.0.1:$(PREFECT_PORT)
# The project's Prefect home (the server's database, profiles, logs) lives in the checkout, so two
# checkouts never share ~/.prefect; git-ignored. PREFECT_HOME=DIR (make or environment): another.
PREFECT_HOME ?= $(abspath .prefect)

# The UI asks the server for its API's address (/ui-settings): without PREFECT_UI_API_URL that is
# PREFECT_API_URL or port 4200, whatever --port says. The server's own PREFECT_API_URL is cleared.
prefect-server: setup ## start a local Prefect server (UI and API on 127.0.0.1:4200, its database in .prefect/; PREFECT_PORT=N: another port) in the foreground
	@echo "prefect-server: UI at $(PREFECT_URL), API at $(PREFECT_URL)/api, Prefect home $(PREFECT_HOME)"
	@echo "prefect-server: then, in another terminal: make deploy PREFECT_PORT=$(PREFECT_PORT) (or export PREFECT_API_URL=$(PREFECT_URL)/api)"
	@PREFECT_HOME="$(PREFECT_HOME)" PREFECT_API_URL= PREFECT_UI_API_URL=$(PREFECT_URL)/api PREFECT_UI_URL=$(PREFECT_URL) \
		PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
		exec $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

deploy: setup ## deploy prefect.yaml (training weekly, drift monitor hourly, continual learning) to make prefect-server's server (or PREFECT_API_URL's) and run a worker; Ctrl-C or SIGTERM stops it within 30 s
	@PREFECT_HOME="$(PREFECT_HOME)" PREFECT_API_URL="$${PREFECT_API_URL:-$(PREFECT_URL)/api}" exec $(PYTHON) -m flows.deploy

monitor: setup ## one drift check of the served model's prediction log (reports/monitor/<time>.json)
	@$(PYTHON) -m flows.monitor

drift-demo: run ## drift found and learnt from, end to end on the champion in a scratch copy (reports/drift_demo.json)
	@$(PYTHON) -m flows.drift_demo

registry: setup ## list the model registry: every candidate, its metrics and decision, the champion
	@$(PYTHON) -m tasks.registry

test: setup test-tools ## set up, then run the full test suite on every core (slow tests included, gpu tests skipped without a GPU)
	@$(PYTHON) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: setup test-tools ## the test suite without the slow end-to-end tests (about 3 minutes)
	@$(PYTHON) -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-profile: setup test-tools ## the full suite with every test's duration, written to reports/test-durations.txt (the order of the next runs)
	@set -o pipefail; start=$$(date +%s); \
	$(PYTHON) -m pytest $(PYTEST_PARALLEL) --durations=0 --durations-min=0.5 -q $(PYTEST_ARGS) | tee reports/test-durations.txt.new; \
	status=$$?; echo "wall: $$(( $$(date +%s) - start )) s with $(TEST_WORKERS) workers" | tee -a reports/test-durations.txt.new; \
	mv reports/test-durations.txt.new reports/test-durations.txt; exit $$status

lint: setup ## ruff check + ruff format --check
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: setup ## apply ruff's fixes and formatting
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .

bench: run bench-tools ## bring the pipeline up to date, run every benchmark, print the table of verdicts (fails if a target is missed)
	@status=0; for bench in benchmarks/*.py; do \
		name=$$(basename $$bench .py); case $$name in __init__|common|summary) continue;; esac; \
		echo "== benchmark $$name"; $(PYTHON) -m benchmarks.$$name || status=1; \
	done; \
	echo "== summary"; $(PYTHON) -m benchmarks.summary || status=1; \
	exit $$status

bench-selftest: run ## check that a missed target fails: noop_repro with an impossible target must exit non-zero
	@if $(PYTHON) -m benchmarks.noop_repro --impossible-target; then \
		echo "bench-selftest: a benchmark that missed its target exited 0" >&2; exit 1; \
	else echo "bench-selftest: the missed target failed the benchmark, as it must"; fi

flow: setup ## run the pipeline as a Prefect flow (temporary local Prefect server)
	@$(PYTHON) -m flows.pipeline

exps: ## compare commits and experiments: headline metrics and the params that differ (fits 120 columns)
	@dvc exp show --no-pager --only-changed --drop '.*/|Created' --keep 'test\.accuracy$$'

lock: ## regenerate requirements.lock from pyproject.toml in a scratch venv
	@rm -rf /tmp/sixfold-lock && python3 -m venv /tmp/sixfold-lock && \
	/tmp/sixfold-lock/bin/pip install --quiet ".[dev]" && \
	{ head -2 $(LOCK); /tmp/sixfold-lock/bin/pip freeze --exclude sixfold; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

clean: ## remove the pipeline's outputs (data/, models/, reports/) but the model registry; keeps .venv and DVC's cache, so the next run restores every stage from it
	@rm -rf data/raw data/validated data/quarantine data/splits data/packed data/augmented \
		models/*.safetensors models/*.json models/checkpoints models/tune models/onnx models/bentoml \
		reports/*.json reports/*.html reports/plots reports/data reports/augment reports/tune \
		reports/dvclive reports/explain
