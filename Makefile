# Every target creates and uses the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FIXTURES := fixtures/build/tiny-tied/config.json fixtures/build/tiny-untied/config.json

.PHONY: install install-test fixtures demo test parity bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[fixtures]'
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.core

install-test: $(VENV)/.test

$(FIXTURES): $(VENV)/.core fixtures/build_checkpoints.py fixtures/build_tokenizer.py
	$(PY) -m fixtures.build_checkpoints --out fixtures/build

fixtures: $(FIXTURES)

demo: $(FIXTURES)
	$(PY) -m qwen3vl.run --model fixtures/build/tiny-tied --image fixtures/images/astronaut.png \
		--prompt "Describe this image." --max-new-tokens 24

test: $(VENV)/.test $(FIXTURES)
	$(PY) -m pytest -q

bench: $(VENV)/.test
	$(PY) -m qwen3vl.bench

parity: $(VENV)/.test $(FIXTURES)
	$(PY) -m parity --json parity-report.json

clean:
	rm -rf fixtures/build
