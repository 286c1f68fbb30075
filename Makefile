# The two commands a fresh machine needs: `make demo` and `make test`.
# Both bootstrap .venv (Python 3.10, pinned dependencies) on first use.
VENV := .venv
PY := $(VENV)/bin/python
SNC := $(VENV)/bin/snc
MODEL := models/checkpoints/digits-unet.pt

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt tools/bootstrap_venv.sh
	@tools/bootstrap_venv.sh

demo: setup
	$(SNC) sample $(MODEL) --backend torch --sampler ddim --steps 50 -n 64 --seed 0 -o out/demo_torch.png
	$(SNC) eval out/demo_torch.npy
	@echo "demo grid: out/demo_torch.png"

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: setup
	@$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$status

clean:
	rm -rf out build .pytest_cache
