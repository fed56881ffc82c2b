# Conveyor's entry points; see README. Every target runs from the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test migrate lint bench chaos clean

# Re-install only when a requirements file changed since the last install.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python -m scripts.migrate

run: install
	$(BIN)/python -m scripts.devstack

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	@command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run

chaos: install
	$(BIN)/python -m chaos

clean:
	rm -rf $(VENV) var .pytest_cache
