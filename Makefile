# `make run` serves the embedded default (SQLite + files under ./var); `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make run HOST=... PORT=... WORKERS=...: those given on the make command line override the
# configuration; otherwise the host, port and workers settings apply (config file,
# METEORPI_HOST/PORT/WORKERS, else 127.0.0.1:8000 with 2 workers). Only the command line
# counts, so a HOST or PORT that the shell or a platform exports does not leak in.
_given = $(if $(filter command line,$(origin $(1))),$(2) $($(1)))
SERVE_ARGS := $(strip $(call _given,HOST,--host) $(call _given,PORT,--port) $(call _given,WORKERS,--workers))
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-m "not slow" -x'
PYTEST_ARGS ?=
# Test processes (pytest-xdist): many tests wait on sockets and subprocesses, so more
# workers than cores pays off; TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 4
PYTEST_XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
# make demo: where its runs go, its two servers' ports, and how much data it makes.
DEMO_DIR ?= var/demo
NODE_PORT ?= 8101
CENTRAL_PORT ?= 8102
DEMO_DATA_ARGS ?= --cameras 3 --nights 2 --events-per-night 15 --files-per-event 3 --standalone-files 4 --file-size 256KiB

.PHONY: run test test-fast bench install clean demo demo-serve browser browser-if-possible

# The venv is rebuilt when the dependencies change.
$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres,s3]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/meteorpi db upgrade
	$(BIN)/meteorpi serve $(SERVE_ARGS)

# Chromium and ChromeDriver (Debian packages) for the status page's browser test, which is
# skipped without them (CI sets METEORPI_REQUIRE_BROWSER=1 to make that a failure).
HAVE_BROWSER = command -v chromium >/dev/null && command -v chromedriver >/dev/null
browser:
	@if $(HAVE_BROWSER); then echo "chromium and chromedriver are installed"; else \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

# make test installs them when it can do so unattended (apt-get, and root or sudo without a
# password); otherwise it says so and goes on, and the browser test is skipped.
browser-if-possible:
	@if $(HAVE_BROWSER); then :; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then \
		$(MAKE) --no-print-directory browser || \
			echo "note: installing chromium failed; the browser test will be skipped" >&2; \
	else \
		echo "note: no chromium/chromedriver (and no root or passwordless sudo to install them):" \
			"the browser test will be skipped; 'make browser' installs them" >&2; \
	fi

# The ten slowest tests are listed at the end, to keep an eye on the suite's speed.
test: install browser-if-possible
	$(BIN)/python -m pytest $(PYTEST_XDIST) --durations=10 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_XDIST) -m "not slow" -q $(PYTEST_ARGS)

# Every benchmark, one after another (about an hour); each prints its own table.
bench: install
	$(BIN)/python bench/import_handshake.py
	$(BIN)/python bench/resumable_upload.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/batch_replication.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/import_activity.py
	$(BIN)/python bench/password_guessing.py
	$(BIN)/python bench/peer_rsync.py
	$(BIN)/python bench/legacy_balancer.py
	$(BIN)/python bench/bucket_vs_disk.py

# Two servers on loopback: a camera node fills up with demo data and replicates it to a
# central server while you watch; it then says where to look. On a terminal the servers
# run until Enter; without one they stop at the end.
demo: install
	BIN=$(BIN) DEMO_DIR=$(DEMO_DIR) NODE_PORT=$(NODE_PORT) CENTRAL_PORT=$(CENTRAL_PORT) \
		DEMO_DATA_ARGS='$(DEMO_DATA_ARGS)' scripts/demo.sh

# The two servers again, on a finished demo run's data (DEMO_RUN, default the newest), until Ctrl-C.
DEMO_RUN ?=
demo-serve: install
	BIN=$(BIN) DEMO_DIR=$(DEMO_DIR) scripts/demo.sh serve $(DEMO_RUN)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
