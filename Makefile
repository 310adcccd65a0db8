# The two commands of the README. Both create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ldm_jax-installed

.PHONY: test quickstart quickstart-simple install clean gpu-wheels

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	# Test references for checkpoint imports, kept in their own folder (tests/conftest.py adds
	# it to sys.path) without their dependencies: the original CompVis/Stability model code,
	# the x-transformers release whose layout LDM's text encoder copies, taming-transformers
	# (PatchGAN discriminator and the autoencoder losses), the lpips package (its heads),
	# pytorch-fid and torch-fidelity (their Inception and metrics), torchvision 0.28 (the
	# release for torch 2.13) for those two: tests/references.py says why its compiled ops
	# are left out, and open_clip with ftfy (OpenAI's original CLIP BPE tokenizer, SD 2.x's,
	# and the CLIP vocabulary file it ships, for the tokenizer parity tests).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
	    --target $(VENV)/compvis-reference stable-diffusion-sdkit==2.1.5 \
	    x-transformers==0.15.0 entmax==1.3 taming-transformers==0.0.1 lpips==0.1.4 \
	    pytorch-fid==0.3.0 torch-fidelity==0.4.0 torchvision==0.28.0 open_clip_torch==3.3.0 \
	    ftfy==6.3.1
	touch $(STAMP)

install: $(STAMP)

# The whole suite (parity and slow tests included), on two workers.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=30 tests

# The main job on the bundled digits, end to end on a CPU: the autoencoder, the class-
# conditional LDM on its latents, then samples (one row per digit) and the quality report.
# Rerunning resumes an interrupted step from its newest checkpoint.
QUICKSTART ?= out/quickstart
quickstart: $(STAMP)
	$(BIN)/python train.py --config=configs/digits_autoencoder.py \
	    --workdir=$(QUICKSTART)/autoencoder
	$(BIN)/python train.py --config=configs/digits_ldm.py:ae=$(QUICKSTART)/autoencoder \
	    --workdir=$(QUICKSTART)/ldm
	$(BIN)/python -m ldm_jax.eval.digits_report --workdir=$(QUICKSTART)/ldm \
	    --out=$(QUICKSTART)/samples.png --steps=25

# simple diffusion in pixel space: a class-conditional U-ViT on the digits, no autoencoder.
quickstart-simple: $(STAMP)
	$(BIN)/python train.py --config=configs/digits_simple_diffusion.py \
	    --workdir=$(QUICKSTART)/simple
	$(BIN)/python -m ldm_jax.eval.digits_report --workdir=$(QUICKSTART)/simple \
	    --out=$(QUICKSTART)/simple_samples.png --steps=50

# What benchmarks/gpu.sh installs on a GPU image that has JAX, flax, optax, orbax and torch
# (Python 3.12): pure-Python wheels into .whl/, carried with the tree.
GPU_WHEELS ?= ml_collections==1.1.0 clu==0.0.12 diffusers==0.42.1
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) out .pytest_cache
