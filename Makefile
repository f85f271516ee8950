# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-slow lint clean web-runtime

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The browser runtime of `export --format web` (wllama), for its test: installed here, never at test time.
WLLAMA  := @wllama/wllama@3.13.0
web-runtime:
	npm install --ignore-scripts --no-audit --no-fund --prefix build/web-runtime $(WLLAMA)

demo: $(STAMP)
	$(BIN)/scratchlm demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: $(STAMP) lint
	$(BIN)/pytest -q

test-slow: $(STAMP)
	# pytest exits 5 when no test is marked slow: nothing to run is not a failure.
	$(BIN)/pytest -q -m slow || [ $$? -eq 5 ]

clean:
	rm -rf $(VENV) runs build dist .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
