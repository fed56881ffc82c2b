# Conveyor's entry points; see README. Every target runs from the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run test migrate lint bench chaos compose-up compose-down compose-check clean

# Re-install only when a requirements file (or pyproject.toml) changed since the last install.
# The project itself goes in editable, without its dependencies (the requirements
# pin them), so `.venv/bin/conveyor` exists.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python -m scripts.migrate

run: install
	$(BIN)/python -m scripts.devstack

# The jobs page's browser test drives Debian's chromium through chromium-driver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "installing chromium and chromium-driver (Debian packages)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Parallel test processes, each with its own database and Redis prefix (pytest-xdist);
# a test file's tests stay in one process, so module fixtures start once.
TEST_WORKERS ?= 4

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v valgrind >/dev/null || { echo "installing valgrind (Debian package; tracing's instruction counts)"; apt-get update -qq && apt-get install -y -qq valgrind; }
	$(BIN)/python -m bench.run

chaos: install
	$(BIN)/python -m chaos

# The production shape in Docker (docs/compose.md): engine, Compose and stand-in base
# images prepared where missing. SCALE="web=2 worker=3" scales; VOLUMES=1 also drops the data.
compose-up: install
	$(BIN)/python -m ops.compose.stack up $(foreach s,$(SCALE),--scale $(s))

compose-down: install
	$(BIN)/python -m ops.compose.stack down $(if $(VOLUMES),--volumes)

# The compose stack tried from the outside, in its own project (not part of make test).
compose-check: install
	$(BIN)/python -m ops.compose.check

# First the Redis keys `make run` left under its own prefix on a shared Redis
# (var/devstack.json says where; refused while `make run` runs), then the files.
clean:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m scripts.devstack --clean; \
	elif [ -f var/devstack.json ]; then echo "no .venv: Redis keys named in var/devstack.json left as they are"; fi
	rm -rf $(VENV) var .pytest_cache
