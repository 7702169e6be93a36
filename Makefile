# One entry point for people and CI. Everything runs from a local virtualenv built from the lock file.
# The interpreter .venv is made from: Debian's python3.11 where the machine has it (with venv),
# else python3 (3.11+). Debian's build is optimized like the python:3.11-slim image production
# runs on; pyenv's default build is not: measured here, plain Python loops ran ~25% slower on it,
# and four interleaved full backtests took 7.24-8.99 s against 6.67-7.55 s. Changing interpreters
# needs a new venv: `make clean install`.
PYTHON ?= $(shell /usr/bin/python3.11 -c "import ensurepip, venv" >/dev/null 2>&1 && echo /usr/bin/python3.11 || echo python3)
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

## The whole system on embedded defaults: control plane, a replaying tenant, three example traders, a report.
## Candles come from ../shared/data/market when it exists (copied into data/), else download them.
demo: $(STAMP)
	@if ls data/*.json >/dev/null 2>&1; then :; \
	elif [ -d ../shared/data/market ]; then mkdir -p data && cp ../shared/data/market/*.json data/; \
	else echo "no candles in data/: run $(BIN)/tradeengine download-data --symbols BTC/USDT,ETH/USDT --timeframes 5m,1h --days 30 --out data"; exit 2; fi
	$(BIN)/tradeengine demo --data data $(DEMO_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
