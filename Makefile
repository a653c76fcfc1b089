# The two README commands (`make run`, `make test`) create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= full
ONLY    ?=
# the browser test's Chromium: the Debian package (tests/test_explorer_browser.py)
CHROMIUM ?= /usr/bin/chromium
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run smoke test lab bench clean-artifacts chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, by its pin: pip then takes the CPU wheel on disk where there is one.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Every notebook headless on the default (full) profile -> papermill_runs/<run>/, figures/
run: $(STAMP)
	$(BIN)/vlkit run --profile $(PROFILE) $(if $(ONLY),--only $(ONLY))

## The same pipeline on the small CI profile (seconds per notebook)
smoke: $(STAMP)
	$(BIN)/vlkit run --profile smoke $(if $(ONLY),--only $(ONLY))

## The test suite (unit tests + a smoke papermill run of every notebook + the widgets in a real browser)
test: $(STAMP) chromium
	VLKIT_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q

## Chromium for the browser test, from apt when it is missing (a fresh machine's package lists may be empty)
chromium:
	@test -x $(CHROMIUM) || { \
	  command -v apt-get >/dev/null || { echo "no $(CHROMIUM) and no apt-get: install Chromium, then make test CHROMIUM=/path/to/chromium"; exit 1; }; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || { \
	    $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; }

## JupyterLab on the notebooks
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## Speed benchmarks (numbers for the README / closing notes)
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean-artifacts:
	rm -rf artifacts/
