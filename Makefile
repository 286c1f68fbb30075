# The two commands a fresh machine needs: `make demo` and `make test`.
# Both bootstrap .venv (Python 3.10, pinned dependencies) on first use.
VENV := .venv
PY := $(VENV)/bin/python
SNC := $(VENV)/bin/snc
MODEL := models/checkpoints/digits-unet.pt

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt tools/bootstrap_venv.sh
	@tools/bootstrap_venv.sh

BUILD := build/digits-unet

# Compile the shipped digits U-Net for Loihi 2, check it against torch on Lava
# (floating_pt and fixed_pt), then sample digits with DDIM with the denoiser on
# Lava's CPU simulator (fixed_pt), score them, and report energy per layer on
# Loihi 2 (an estimate) from the emulator's spike counts.
demo: setup
	$(SNC) compile $(MODEL) --target loihi2 -o $(BUILD)
	$(SNC) verify $(BUILD)
	$(SNC) sample $(BUILD) --backend lava --mode fixed --sampler ddim --steps 20 -n 16 --seed 0 -o out/demo_lava.png
	$(SNC) eval out/demo_lava.npy
	$(SNC) energy $(BUILD) --profile loihi2 --backend emu --plot out/demo_energy.png
	@echo "demo grid (Lava fixed_pt): out/demo_lava.png; energy per layer: out/demo_energy.png"

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
PYTEST = status=$$?; if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$status

# Everything, real Lava processes included (what CI runs).
test: setup
	@$(PY) -m pytest -q; $(PYTEST)

# Everything that starts no Lava process and is not marked slow (about 2 minutes).
test-fast: setup
	@$(PY) -m pytest -q -m "not lava and not slow"; $(PYTEST)

clean:
	rm -rf out build .pytest_cache
