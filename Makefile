# One entry point for people and CI. Everything runs from a local virtualenv built from the lock file.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.synced

.PHONY: install run check lint typecheck test bench demo clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	$(BIN)/uv pip sync -q -p $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: migrate a SQLite file and start the control server.
run: $(STAMP)
	$(BIN)/tradeengine db upgrade
	$(BIN)/tradeengine serve --mode control

## The whole check suite: lint, strict types, tests.
check: lint typecheck test

lint: $(STAMP)
	$(BIN)/ruff check tradeengine tests bench
	$(BIN)/ruff format --check tradeengine

typecheck: $(STAMP)
	$(BIN)/mypy tradeengine

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
