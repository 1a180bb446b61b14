# siglip-lightning: `make help` lists the targets.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Nothing here needs the network beyond pip: keep Hugging Face libraries offline.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help install train test test-slow test-all clean reproduce-batchsize-sweep reproduce-scratch-sweep reproduce-init-study reproduce-noise-study reproduce-siglip2-study reproduce-forgetting test-notebooks

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its test extras

train: $(STAMP)  ## install, make the built-in data, train the quickstart model on CPU (runs/quickstart)
	$(OFFLINE) $(VENV)/bin/siglip-lightning fit --config configs/quickstart.yaml

test: $(STAMP)  ## install and run the default test suite (no slow tests, no network)
	$(OFFLINE) $(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)  ## the slow tests only
	$(OFFLINE) $(PY) -m pytest -m slow -q

test-all: $(STAMP)  ## every test
	$(OFFLINE) $(PY) -m pytest -q

# Paper reproductions: sweeps of ordinary `fit` runs (docs/RESULTS.md). QUICK=1: the smoke-sized variant.
# A killed sweep restarts where it stopped with the same command. BASE="recipe.yaml fragment.yaml ..."
# replaces the CPU SigLiT base with your own fit configs (e.g. on a cluster; docs/RESULTS.md).
EXPERIMENT = $(OFFLINE) $(VENV)/bin/siglip-lightning experiments $(if $(QUICK),--quick,) $(if $(BASE),--base "$(BASE)",) --config

reproduce-batchsize-sweep: $(STAMP)  ## batch size x {sigmoid, softmax}: 24 fit runs -> runs/batchsize_sweep*/ (QUICK=1, BASE=...)
	$(EXPERIMENT) configs/experiments/batchsize_sweep.yaml

reproduce-scratch-sweep: $(STAMP)  ## the same sweep from scratch (image + text towers) on the built-in images (QUICK=1)
	$(EXPERIMENT) configs/experiments/scratch_sweep.yaml

reproduce-init-study: $(STAMP)  ## paper Table 4: init of t' and b -> runs/init_study*/ (QUICK=1: smoke)
	$(EXPERIMENT) configs/experiments/init_study.yaml

reproduce-noise-study: $(STAMP)  ## paper Fig. 7: corrupted images/texts/pairings -> runs/noise_study*/ (QUICK=1: smoke)
	$(EXPERIMENT) configs/experiments/noise_study.yaml

reproduce-siglip2-study: $(STAMP)  ## issue 23: sigmoid vs + LocCa vs + LocCa + SILC + TIPS, 3 seeds -> runs/siglip2_study*/ (QUICK=1)
	$(EXPERIMENT) configs/experiments/siglip2_study.yaml

reproduce-forgetting: $(STAMP)  ## issue 15: forgetting under fine-tuning, layer decay / freezing / WiSE-FT -> runs/forgetting/ (QUICK=1: smoke)
	$(OFFLINE) $(PY) -m siglip_lightning.experiments.forgetting --out runs/forgetting$(if $(QUICK),_quick --quick,)

test-notebooks: $(STAMP)  ## execute the notebooks in quick mode
	$(OFFLINE) SIGLIP_QUICK=1 $(PY) -m pytest tests/test_notebooks.py -q

clean:  ## remove runs and caches (not .venv)
	rm -rf runs lightning_logs .pytest_cache
