# make quickstart  - create .venv, install, run the pipeline end to end at toy scale
# make test        - create/install if needed, run the tests
# make eval MODEL=runs/sft/apr/final [NAME=apr] [DATA=data/countdown_n4] [OUT=runs/eval/apr] [ARGS='eval.cons_pass_n=0']
#                  - evaluate one checkpoint (accuracy vs window/tokens/latency, JSON + PNG + markdown; resumable)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export RAY_AUTH_MODE ?= disabled
# torch's OpenMP threads spin while waiting; on 2 shared cores that slows a job 10x or more
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install quickstart eval test lint bench-data bench-engine bench-sft clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build is on disk; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,sglang]'
	touch $(STAMP)

install: $(STAMP)

# N=3 Countdown: data, a tiny SoS+ model (~10 min of CPU), held-out evaluation. Re-running resumes.
QS := runs/quickstart
quickstart: $(STAMP)
	@test -f $(QS)/data/stats.json || $(BIN)/python -m apr.cli.data task=countdown_n3 data.num_train=20000 \
		data.num_val=200 data.num_test=200 data.out_dir=$(QS)/data
	@test -f $(QS)/sft/final/config.json || $(BIN)/python -m apr.cli.sft +sft=n3_tiny_sosp name=quickstart \
		data.dir=$(QS)/data run_dir=$(QS)/sft resume=true
	$(BIN)/python -m apr.cli.eval models.sosp=$(QS)/sft/final data_dir=$(QS)/data num_problems=200 \
		out_dir=$(QS)/eval eval.max_thread_tokens=512 'eval.windows=[256,384,512]'
	@echo "data: $(QS)/data/stats.md  model: $(QS)/sft/final  evaluation: $(QS)/eval/results.md"

# NAME picks the settings: conditions from eval.conditions.<NAME>, cons@n/pass@n if NAME is in
# eval.cons_pass_models (sosp); `<NAME>_rl` inherits them. Plain `=`: set on the command line, not from
# the environment (WSL exports NAME).
NAME = model
DATA = data/countdown_n4
OUT = runs/eval/$(NAME)
eval: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make eval MODEL=<checkpoint dir> [NAME=apr|sosp|...] [DATA=dir] [OUT=dir] [ARGS=...]"; exit 2; }
	$(BIN)/python -m apr.cli.eval models.sosp=null models.apr=null '++models.$(NAME)=$(MODEL)' data_dir=$(DATA) out_dir=$(OUT) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check apr tests benchmarks

bench-data: $(STAMP)
	$(BIN)/python benchmarks/bench_datagen.py

bench-engine: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py

bench-sft: $(STAMP)
	$(BIN)/python benchmarks/bench_sft.py

clean:
	rm -rf $(VENV) runs
