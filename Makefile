# The README's commands. `make test` and `make lab` create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CKPT := data/checkpoints
TRAIN := $(BIN)/hashrobust train
# each checkpoint written into data/checkpoints changes its manifest: re-pin it (hashrobust/zoo.py) before the next load
PIN := $(BIN)/python scripts/pin_manifest.py
# `make results-cifar10 DEVICE=cuda` runs the experiments on a GPU (the default and CI: the CPU)
DEVICE ?= cpu
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install test lab notebooks browser-test install-test book book-test release zoo zoo-mnist zoo-cifar zoo-at zoo-at-mnist zoo-at-cifar benchmark results-mnist results-cifar10 clean

# A .venv whose python no longer runs (moved, or its interpreter removed) is rebuilt, not reused.
ifneq ($(wildcard $(VENV)),)
ifneq ($(shell $(BIN)/python -c "print('ok')" 2>/dev/null),ok)
$(info $(VENV) is broken (its python does not run): removing it, to rebuild it)
$(shell rm -rf $(VENV))
endif
endif

$(BIN)/python:
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'hashrobust needs Python 3.11 or newer (3.11, 3.12, 3.13); $(PYTHON) is Python ' + sys.version.split()[0] + '. Run make with PYTHON=python3.11, or another 3.11+.')"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# the peer implementation the attack tests compare against; --no-deps: it pins an old requests
	$(BIN)/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# The course as nbgrader 0.9 assignments in release/ (git-ignored; scripts/release.py): instructor versions with
# nbgrader metadata in release/source/, student versions (no solutions, no hidden tests) in release/release/.
release: install
	$(BIN)/python scripts/release.py

# The other install routes, each in a fresh venv outside the repository (scripts/install_routes.py):
# the wheel into a Colab-like environment with one notebook opened alone (Python 3.13), and the sdist
# with its own tests (Python 3.12). Needs the data (an absolute HASHROBUST_DATA) and the package index.
install-test: install
	$(BIN)/python scripts/install_routes.py

# Re-execute the notebooks in place (their stored outputs are part of the course; commit them).
# Quiet progress bars and no per-cell timestamps, so a re-run changes only what really changed.
NB ?= notebooks/[0-9]*.ipynb
notebooks: install
	TQDM_DISABLE=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.record_timing=False --ExecutePreprocessor.timeout=600 $(NB)
	$(BIN)/python scripts/tour_figures.py

benchmark: install
	$(BIN)/python benchmarks/hashed_layer.py
	$(BIN)/python benchmarks/attacks.py
	$(BIN)/python benchmarks/widgets.py
	$(BIN)/python benchmarks/jsma.py

# The experiments behind results/<dataset>/ (need the data: set HASHROBUST_DATA).
# MNIST: about 2 hours on 2 CPU cores (LeNet and the adaptive study dominate). CIFAR-10 (every command on
# the protocol's 1000 images): analysis 85 and reproduction 34 minutes, each on one thread beside other
# runs; the adaptive study about 2.5 hours (3 models x 76-80 CPU-minutes; run here as three one-thread
# processes, one per model, in 2 h 7 min on 2 cores; `--parts DIR` lets it stop and resume).
# Beyond the paper (notebooks 07 and 08): the adversarially trained zoo under the ensemble (MNIST about 98 min,
# CIFAR-10 on 500 images about 44 min, each on one thread beside other runs) and the compression shoot-outs at
# equal storage (mlp3: 14 and 39 min; LeNet's FC head: about 2 hours on one thread, 75 min run as one process per ratio).
results-mnist: install
	$(BIN)/hashrobust analyze --dataset mnist --archs lenet mlp3 --device $(DEVICE)
	$(BIN)/hashrobust reproduce --dataset mnist --device $(DEVICE)
	$(BIN)/hashrobust adaptive --dataset mnist --device $(DEVICE)
	$(BIN)/hashrobust at-eval --dataset mnist --device $(DEVICE)
	$(BIN)/hashrobust shootout --arch mlp3 --device $(DEVICE)
	$(BIN)/hashrobust shootout --arch mlp3 --training pgd-at --eps 0.3 --device $(DEVICE)
	$(BIN)/hashrobust shootout --arch lenet --device $(DEVICE)

results-cifar10: install
	$(BIN)/hashrobust analyze --dataset cifar10 --device $(DEVICE)
	$(BIN)/hashrobust reproduce --dataset cifar10 --device $(DEVICE)
	$(BIN)/hashrobust adaptive --dataset cifar10 --n-cw 50 --device $(DEVICE)
	$(BIN)/hashrobust at-eval --dataset cifar10 --n 500 --device $(DEVICE)

# Rebuild the pretrained zoo (needs the data: set HASHROBUST_DATA). MNIST: a few minutes
# on 2 CPU cores; CIFAR-10: about 40 minutes on 2 CPU cores.
zoo: zoo-mnist zoo-cifar zoo-at

zoo-mnist: install
	$(TRAIN) --dataset mnist --arch mlp3 --ratio 1 --seed 0 && $(PIN)
	for r in 2 4 8 16 32 64; do \
	  $(TRAIN) --dataset mnist --arch mlp3 --ratio $$r --epochs 5 --seed 0 --from-dense $(CKPT)/mnist-mlp3-r1.pt && $(PIN) || exit 1; \
	done
	$(TRAIN) --dataset mnist --arch lenet --ratio 1 --seed 0 && $(PIN)
	for r in 8 64; do \
	  $(TRAIN) --dataset mnist --arch lenet --ratio $$r --epochs 3 --seed 0 --from-dense $(CKPT)/mnist-lenet-r1.pt && $(PIN) || exit 1; \
	done

zoo-cifar: install
	$(TRAIN) --dataset cifar10 --arch cifar_cnn --ratio 1 --seed 0 && $(PIN)
	for r in 8 64; do \
	  $(TRAIN) --dataset cifar10 --arch cifar_cnn --ratio $$r --epochs 4 --seed 0 --from-dense $(CKPT)/cifar10-cifar_cnn-r1.pt && $(PIN) || exit 1; \
	done

# The adversarially trained zoo (notebook 07; `hashrobust train --adversarial`, checkpoints *-pgd-at.pt and
# *-fgsm-at.pt). MNIST, eps 0.3: PGD training (10 steps) of the dense nets, the hashed ones compressed from them
# and fine-tuned adversarially; one LeNet with fast FGSM training, the catastrophic-overfitting example. The
# shipped MNIST checkpoints were trained on one GPU (DEVICE=cuda: 2-5 minutes each); on 2 CPU cores PGD
# training takes about 10x longer. CIFAR-10, 8/255: fast FGSM training fine-tuned from the clean cifar_cnn
# (about 25 minutes on one CPU thread), ratio 8 compressed from it.
AT_DEVICE := $(if $(filter cpu,$(DEVICE)),,--device $(DEVICE))
zoo-at: zoo-at-mnist zoo-at-cifar

zoo-at-mnist: install
	$(TRAIN) --dataset mnist --arch lenet --ratio 1 --adversarial pgd --eps 0.3 --epochs 10 --seed 0 $(AT_DEVICE) && $(PIN)
	$(TRAIN) --dataset mnist --arch lenet --ratio 1 --adversarial fgsm --eps 0.3 --epochs 10 --seed 0 $(AT_DEVICE) && $(PIN)
	$(TRAIN) --dataset mnist --arch mlp3 --ratio 1 --adversarial pgd --eps 0.3 --epochs 15 --seed 0 $(AT_DEVICE) && $(PIN)
	for a in lenet mlp3; do for r in 8 64; do \
	  $(TRAIN) --dataset mnist --arch $$a --ratio $$r --adversarial pgd --eps 0.3 --epochs 5 --seed 0 $(AT_DEVICE) \
	    --from-dense $(CKPT)/mnist-$$a-r1-pgd-at.pt && $(PIN) || exit 1; \
	done; done

zoo-at-cifar: install
	$(TRAIN) --dataset cifar10 --arch cifar_cnn --ratio 1 --adversarial fgsm --eps 0.03137254901960784 --epochs 6 \
	  --lr 0.05 --seed 0 $(AT_DEVICE) --from-dense $(CKPT)/cifar10-cifar_cnn-r1.pt && $(PIN)
	$(TRAIN) --dataset cifar10 --arch cifar_cnn --ratio 8 --adversarial fgsm --eps 0.03137254901960784 --epochs 3 \
	  --seed 0 $(AT_DEVICE) --from-dense $(CKPT)/cifar10-cifar_cnn-r1-fgsm-at.pt && $(PIN)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis data/cache
	rm -f "$${HASHROBUST_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/hashrobust}"/cifar10-jpeg-*.npz

# Drive notebook 03's explorer in a real browser: Debian's chromium, PyPI playwright (never
# playwright's own browser download), a throwaway JupyterLab on a copy of notebooks/.
# Needs the data: set HASHROBUST_DATA. NB_BROWSER picks another notebook.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
NB_BROWSER ?= notebooks/03_attacking_compressed_models.ipynb
browser-test: install
	test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(BIN)/python -c "import playwright.sync_api" 2>/dev/null || $(BIN)/python -m pip install --quiet "playwright==1.65.2"
	$(BIN)/python scripts/browser_test.py --notebook $(NB_BROWSER)

$(VENV)/.book-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book]"
	touch $@

# The course as a static web book in build/book/html (README, notebooks 00-06 from their stored outputs,
# the protocol, the results, the API reference from the docstrings); nothing is executed, nothing committed.
book: $(VENV)/.book-installed
	$(BIN)/python scripts/build_book.py

# Every page of the book in headless chromium, offline: it loads, every image shows, math renders
# without errors, every internal link (and #anchor) resolves.
book-test: book
	test -x /usr/bin/chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(BIN)/python -c "import playwright.sync_api" 2>/dev/null || $(BIN)/python -m pip install --quiet "playwright==1.65.2"
	$(BIN)/python scripts/book_browser_test.py
