# The two set-up commands of the README. Both create .venv with pip when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast bench quality lint clean

# Re-install when the package metadata changes; the stamp records a finished install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## train on the bundled digits into runs/demo and print a summary
	$(BIN)/pyro-vae train --out runs/demo --overwrite
	$(BIN)/pyro-vae evaluate runs/demo --num-particles 10

test: $(VENV)/.installed  ## the whole test suite
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed  ## everything but the slow tier
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.installed  ## speed against a hand-written PyTorch VAE: steps, epochs, memory, log-likelihood, torch.compile (about 5 minutes)
	$(BIN)/python benchmarks/speed.py

quality: $(VENV)/.installed  ## the published MNIST log-likelihoods at the CPU budget: README "How good are the models?" (hours; resumes)
	$(BIN)/python benchmarks/quality.py --jobs 2

lint: $(VENV)/.installed  ## ruff: style and formatting at 120 columns (installs the dev extra)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m ruff check pyro_vae tests examples benchmarks
	$(BIN)/python -m ruff format --check pyro_vae tests examples benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
