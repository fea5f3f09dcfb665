# make demo | make test | make bench — each creates .venv when missing.
# The venv sees system site-packages, so an existing (e.g. CUDA) torch is kept; when no torch is
# importable, the CPU wheel torch==2.13.0 is installed (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.llmlab-installed

.PHONY: venv test test-fast demo bench gpt2 clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# GPT-2 BPE ranks: tiktoken's cache, else the file inside openai-whisper's PyPI sdist (sha256-checked).
gpt2: $(STAMP)
	$(VENV)/bin/llmlab tokenizer fetch gpt2

test: $(STAMP) gpt2
	$(PY) -m pytest -q -x --durations=15

demo: $(STAMP) gpt2
	$(VENV)/bin/llmlab demo

bench: $(STAMP) gpt2
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
