# The two set-up commands of the README. Both create .venv with pip when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast bench quality semisupervised pictures site lint clean FORCE

# Re-install when the package metadata changes; the stamp records a finished install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## train on the bundled digits into runs/demo and print a summary
	$(BIN)/pyro-vae train --out runs/demo --overwrite
	$(BIN)/pyro-vae evaluate runs/demo --num-particles 10

# Tests run in two processes of one thread each (pytest-xdist): TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2

test: $(VENV)/.installed  ## the whole test suite
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-fast: $(VENV)/.installed  ## everything but the slow tier
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

bench: $(VENV)/.installed  ## speed against a hand-written PyTorch VAE: steps, epochs, memory, log-likelihood, torch.compile (about 5 minutes)
	$(BIN)/python benchmarks/speed.py

quality: $(VENV)/.installed  ## the published MNIST log-likelihoods at the CPU budget: docs/benchmarks/quality.md (hours; resumes)
	$(BIN)/python benchmarks/quality.py --jobs 2

semisupervised: $(VENV)/.installed  ## MNIST accuracy of M1+M2 at 100 (3 draws), 600, 1000, 3000 labels and M2 at 100: docs/benchmarks/semisupervised.md (hours; resumes)
	$(BIN)/python benchmarks/semisupervised.py --jobs 2

# Every picture in docs/, drawn again by the command the site names beside it. `make pictures` draws them
# all (29 minutes on 2 cores, most of it MNIST); `make docs/swap_priors.png` draws one. `make site` builds the site.
DATA ?= ../shared/data
DOCS := analytic_vs_mc compare gradient_snr_digits gradient_snr_mnist posterior_collapse \
        latent_space_with_without_kl swap_priors mnist-2d-manifold mnist-2d-samples m2-analogies m2-confusion
PY   := $(BIN)/python

pictures: $(DOCS:%=docs/%.png)  ## every picture in docs/, redrawn (about half an hour; MNIST from ../shared/data)

docs/analytic_vs_mc.png: $(VENV)/.installed FORCE
	$(PY) examples/analytic_vs_mc.py --out $@
docs/compare.png: $(VENV)/.installed FORCE
	$(BIN)/pyro-vae train --out runs/demo --overwrite
	$(BIN)/pyro-vae compare runs/demo --estimators mc,analytic
	cp runs/demo/compare.png $@
docs/gradient_snr_digits.png: $(VENV)/.installed FORCE
	$(PY) examples/gradient_snr.py --epochs 50 --out runs/gradient_snr_digits
	cp runs/gradient_snr_digits/snr.png $@
docs/gradient_snr_mnist.png: $(VENV)/.installed FORCE
	$(PY) benchmarks/estimators.py --data-root $(DATA)
	$(PY) examples/gradient_snr.py --run runs/estimators/analytic --out runs/gradient_snr
	cp runs/gradient_snr/snr.png $@
docs/posterior_collapse.png: $(VENV)/.installed FORCE
	$(PY) examples/posterior_collapse.py --data-root $(DATA)
	cp runs/posterior_collapse/collapse.png $@
docs/latent_space_with_without_kl.png: $(VENV)/.installed FORCE
	$(PY) examples/latent_space_with_without_kl.py --dataset mnist --data-root $(DATA) --epochs 20 --out $@
docs/swap_priors.png: $(VENV)/.installed FORCE
	$(PY) examples/swap_priors.py --dataset mnist --data-root $(DATA) --epochs 10 --out $@
docs/mnist-2d-samples.png: docs/mnist-2d-manifold.png  # one training run draws both
docs/mnist-2d-manifold.png: $(VENV)/.installed FORCE
	$(BIN)/pyro-vae train --dataset mnist --data-root $(DATA) --latent-dim 2 --hidden 512,256 --epochs 20 \
		--out runs/mnist-2d --overwrite
	cp runs/mnist-2d/manifold.png docs/mnist-2d-manifold.png
	cp runs/mnist-2d/samples.png docs/mnist-2d-samples.png

docs/m2-confusion.png: docs/m2-analogies.png  # one training run draws both
docs/m2-analogies.png: $(VENV)/.installed FORCE
	$(PY) examples/semi_supervised.py --out runs/semi_supervised
	cp runs/semi_supervised/analogies.png docs/m2-analogies.png
	cp runs/semi_supervised/confusion.png docs/m2-confusion.png

FORCE:

lint: $(VENV)/.installed  ## ruff: style and formatting at 120 columns (installs the dev extra)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m ruff check pyro_vae tests examples benchmarks docs
	$(BIN)/python -m ruff format --check pyro_vae tests examples benchmarks docs

site: $(VENV)/.installed  ## the documentation site in docs/_build/html, warnings as errors (installs the docs extra; runs the tutorial notebook when its code changed, about 2 minutes)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache docs/_build docs/notebooks
