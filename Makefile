# Set-up and everyday commands. Needs only python3 (3.11+) and PyPI: the virtual
# environment is created on first use and reinstalled only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= config/roomserver.toml
BIN := $(VENV)/bin
comma := ,

.PHONY: run test test-fast lint bench clean distclean venv

run: $(VENV)/.installed-test
	$(BIN)/roomserver --config $(CONFIG) run

# The whole suite: unit, nats, oracle (Synapse) and faults tests, slow ones included, in
# TEST_JOBS processes (pytest-xdist). The fault tests and those that time themselves form
# one group that a single process runs one after another (tests/conftest.py); the other
# tests go to whichever process is free. TEST_JOBS=0: one process, as before.
TEST_JOBS ?= 2
test: $(VENV)/.installed-test+oracle
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadgroup

# Unit tests only (no nats-server, no Synapse, no worker process disturbed), without the
# slow property tests and with fewer Hypothesis examples; see tests/README.md. Temporary
# files go to /dev/shm where it exists: the SQLite files are still real files, but their
# fsyncs (thousands, one per commit) no longer wait for the disk.
FAST_TMPDIR := $(if $(wildcard /dev/shm/.),/dev/shm,$(or $(TMPDIR),/tmp))
test-fast: $(VENV)/.installed-test
	TMPDIR=$(FAST_TMPDIR) HYPOTHESIS_PROFILE=fast $(BIN)/pytest -q -m "unit and not slow"

lint: $(VENV)/.installed-test+lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every scenario in one table against the bare relay of the same run (bench/run.py; about
# 25 minutes, ten of them the memory run of 1,000,000 events). QUICK=1: a smoke test.
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.run $(if $(QUICK),--quick)

venv: $(VENV)/.installed-test

# Python without ensurepip (Debian without python3-venv) still has pip: use it to fetch
# a pip wheel, which can run itself to install pip into the new environment.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@if ! $(PYTHON) -m venv $(VENV); then \
		echo "python -m venv failed; bootstrapping pip into $(VENV) from PyPI" >&2; \
		rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) && \
		$(PYTHON) -m pip download --disable-pip-version-check --no-deps \
			--dest $(VENV)/pip-wheel pip && \
		wheel=$$(ls $(VENV)/pip-wheel/pip-*.whl) && \
		$(BIN)/python $$wheel/pip install --no-index --disable-pip-version-check $$wheel && \
		rm -rf $(VENV)/pip-wheel; \
	fi

# One stamp per set of extras ("+" stands for ","); a newer pyproject.toml reinstalls.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[$(subst +,$(comma),$*)]'
	@touch $@

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also drops the virtual environment; data/ (the worker's storage) is never touched.
distclean: clean
	rm -rf $(VENV)

# Random forked rooms through the pipeline and through Synapse's own code, over room
# versions 1–12 (tests/oracle/sweep.py): ROOMS rooms on JOBS processes.
ROOMS ?= 2000
JOBS ?= 2
.PHONY: oracle-sweep
oracle-sweep: $(VENV)/.installed-test+oracle
	$(BIN)/python -m tests.oracle.sweep --rooms $(ROOMS) --jobs $(JOBS)
