# Two commands for a fresh machine (see README):  make demo  |  make test
# Both create or reuse the project-local venv .venv from the pins in envs/requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE := $(BIN)/snakemake
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# OpenMP busy-waiting made torch steps ~30x slower when other jobs share the cores; passive
# waiting changes no result, only speed.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo seeds test test-slurm lint venv clean-results clean-cache

venv: $(STAMP)

$(STAMP): envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r envs/requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --printshellcmds
	$(BIN)/python -m qaclims.summary results/synthetic --toy resources/weights/toy/demo
	cat results/synthetic/summary/miou_table.md
	$(SNAKEMAKE) --report results/synthetic/report.html

# The demo over every seed offset of config seeds (the default run plus offsets 1 and 2): mean +-
# std per stage and experiment, and the gain over the baseline seed by seed.
seeds: $(STAMP)
	$(SNAKEMAKE) seeds --cores $(CORES) --printshellcmds
	cat results/synthetic/summary/seeds.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(SNAKEMAKE) --lint

test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile -q -m "not slurm"

# The workflow through `--profile slurm` on a real one-node SLURM cluster built on this machine
# (root; installs Debian's slurm, munge and mariadb packages). CI runs it after `make test`.
test-slurm: $(STAMP)
	bash tests/slurm/install.sh
	QACLIMS_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

# Keeps what is slow to rebuild and independent of the results: the VQA answer cache (keyed by
# model, settings and image bytes, so it is never served stale) and the trained toy models.
clean-results:
	rm -rf results/synthetic .snakemake
	@echo "removed results/synthetic and .snakemake; kept the VQA answer cache (resources/cache/vqa;" \
	  "make clean-cache removes it) and the toy models (resources/weights/toy; rm -rf to retrain)"

clean-cache:
	rm -rf resources/cache/vqa
