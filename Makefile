# make quickstart  - create .venv, install, run the pipeline end to end at toy scale
# make test        - create/install if needed, run the tests
# make sglang-check MODEL=runs/sft/apr/final [DATA=data/countdown_n4] [ARGS='--num-problems 64']
#                  - on a CUDA machine with `pip install sglang`: SGLang vs the local engine, weight sync, restart
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

.PHONY: install quickstart eval sglang-check gpu-check test lint bench-data bench-engine bench-sft bench-learn bench-rl clean repro-small repro-paper

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: the CPU build is on disk; an unpinned torch pulls a multi-GB CUDA build.
# The deepspeed extra stays CPU-only here (it adds deepspeed and small pure-Python deps; checked with
# pip install --dry-run): the tests of the DeepSpeed SFT and RL strategies run, not skip.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,sglang,deepspeed]'
	touch $(STAMP)

install: $(STAMP)

# N=3 Countdown: data, a tiny APR model and its SoS+ twin (the same recipe and budget), a few GRPO steps of the
# APR model on a local Ray cluster, held-out evaluation of all three at windows 192-512 (SoS+ traces reach ~470
# tokens, so 512 holds every N=3 thread), runs/quickstart/REPORT.md. Re-running resumes (finished stages are skipped).
QS := runs/quickstart
# training tokens of each of the two SFT models (train.max_tokens): the same learning on a fast or a slow machine,
# the wall time differs (docs/RESULTS.md: ~10k tokens/s with native bf16, less in fp32 on an AVX2-only CPU)
QS_SFT_TOKENS ?= 3e6
# the SFT budget, shared by the APR and the SoS+ model (change it here, once); a solve-rate check every 250 steps
QS_SFT_ARGS ?= train.max_tokens=$(QS_SFT_TOKENS) train.max_steps=null eval.every_steps=250
QS_WINDOWS := [192,256,320,384,512]
quickstart: $(STAMP)
	@test -f $(QS)/data/stats.json || $(BIN)/python -m apr.cli.data task=countdown_n3 data.num_train=20000 \
		data.num_val=200 data.num_test=200 'data.windows=$(QS_WINDOWS)' data.out_dir=$(QS)/data
	@test -f $(QS)/sft/final/config.json || $(BIN)/python -m apr.cli.sft +sft=n3_tiny_apr name=quickstart \
		data.dir=$(QS)/data run_dir=$(QS)/sft resume=true $(QS_SFT_ARGS)
	@test -f $(QS)/sft_sosp/final/config.json || $(BIN)/python -m apr.cli.sft +sft=n3_tiny_sosp name=quickstart_sosp \
		data.dir=$(QS)/data run_dir=$(QS)/sft_sosp resume=true $(QS_SFT_ARGS)
	@test -f $(QS)/rl/final/config.json || $(BIN)/python -m apr.cli.rl +rl=n3_tiny name=quickstart_rl \
		init=$(QS)/sft/final data.dir=$(QS)/data run_dir=$(QS)/rl train.steps=4 checkpoint.every_steps=2 \
		rollout.eval_problems=0 resume=true
	$(BIN)/python -m apr.cli.eval models.sosp=$(QS)/sft_sosp/final models.apr=$(QS)/sft/final \
		+models.apr_rl=$(QS)/rl/final data_dir=$(QS)/data num_problems=200 out_dir=$(QS)/eval \
		eval.max_thread_tokens=512 'eval.windows=$(QS_WINDOWS)' 'eval.temperatures=[0.0]' eval.cons_pass_n=0
	$(BIN)/python -m apr.cli.report --root $(QS)
	@echo "report: $(QS)/REPORT.md  (data: $(QS)/data/stats.md, models: $(QS)/sft/final $(QS)/sft_sosp/final $(QS)/rl/final)"

# The N=4 reproduction at small scale (docs/RESULTS.md): data, SoS+ and APR SFT of the `small` model,
# GRPO of both, evaluation of all four on 500 test problems. ~8-10 hours on 2 CPU cores; every stage
# resumes where it stopped (re-run the target), finished stages are skipped.
repro-small: $(STAMP)
	@test -f data/countdown_n4/stats.json || $(BIN)/python -m apr.cli.data task=countdown_n4 \
		data.num_train=20000 data.num_val=200 data.num_test=500 data.out_dir=data/countdown_n4
	@test -f runs/sft/n4_small_sosp/final/config.json || $(BIN)/python -m apr.cli.sft +sft=n4_small_sosp resume=true
	@test -f runs/sft/n4_small_apr/final/config.json || $(BIN)/python -m apr.cli.sft +sft=n4_small_apr resume=true
	@test -f runs/rl/n4_small_apr_grpo/final/config.json || $(BIN)/python -m apr.cli.rl +rl=n4_small \
		init=runs/sft/n4_small_apr/final name=n4_small_apr_grpo resume=true
	@test -f runs/rl/n4_small_sosp_grpo/final/config.json || $(BIN)/python -m apr.cli.rl +rl=n4_small \
		init=runs/sft/n4_small_sosp/final name=n4_small_sosp_grpo loss.kl_coef=0.01 \
		rollout.runtime.max_thread_tokens=3072 resume=true
	$(BIN)/python -m apr.cli.eval models.sosp=runs/sft/n4_small_sosp/final models.apr=runs/sft/n4_small_apr/final \
		+models.sosp_rl=runs/rl/n4_small_sosp_grpo/final +models.apr_rl=runs/rl/n4_small_apr_grpo/final \
		data_dir=data/countdown_n4 num_problems=500 out_dir=runs/eval/repro_small eval.max_thread_tokens=3072 \
		'eval.windows=[256,512,768,1024,2048,3072]'

# The paper's experiment at full scale on GPUs (conf/experiment/paper_repro.yaml: its stages, overrides and
# cost; the stages' overrides are read from that file). NGPUS processes for SFT (all visible GPUs by default);
# DIST=ray_cluster runs RL on a running Ray cluster (launch/); SFT_ARGS / RL_ARGS append overrides, e.g.
# RL_ARGS='dist.num_rollout_workers=3' on a 4-GPU box. Every stage resumes; finished stages are skipped.
REPRO := conf/experiment/paper_repro.yaml
NGPUS ?= $(shell (nvidia-smi -L 2>/dev/null || true) | wc -l)
DIST ?= ray_local
repro_args = $(shell $(BIN)/python -c "import shlex, yaml; print(shlex.join(yaml.safe_load(open('$(REPRO)'))['$(1)']))")
repro-paper: $(STAMP)
	@test "$(NGPUS)" -ge 1 || { echo "repro-paper needs CUDA GPUs (NGPUS=$(NGPUS)); see $(REPRO)"; exit 2; }
	@test -f data/countdown_n4_paper/stats.json || $(BIN)/python -m apr.cli.data $(call repro_args,data)
	@test -f runs/sft/paper_sosp/final/config.json || $(BIN)/torchrun --standalone --nproc_per_node $(NGPUS) \
		-m apr.cli.sft $(call repro_args,sft_sosp) $(SFT_ARGS)
	@test -f runs/sft/paper_apr/final/config.json || $(BIN)/torchrun --standalone --nproc_per_node $(NGPUS) \
		-m apr.cli.sft $(call repro_args,sft_apr) $(SFT_ARGS)
	@test -f runs/rl/paper_apr_grpo/final/config.json || $(BIN)/python -m apr.cli.rl $(call repro_args,rl_apr) \
		dist=$(DIST) $(RL_ARGS)
	@test -f runs/rl/paper_sosp_grpo/final/config.json || $(BIN)/python -m apr.cli.rl $(call repro_args,rl_sosp) \
		dist=$(DIST) $(RL_ARGS)
	$(BIN)/python -m apr.cli.eval $(call repro_args,eval)

# NAME picks the settings: conditions from eval.conditions.<NAME>, cons@n/pass@n if NAME is in
# eval.cons_pass_models (sosp); `<NAME>_rl` inherits them. Plain `=`: set on the command line, not from
# the environment (WSL exports NAME).
NAME = model
DATA = data/countdown_n4
OUT = runs/eval/$(NAME)
eval: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make eval MODEL=<checkpoint dir> [NAME=apr|sosp|...] [DATA=dir] [OUT=dir] [ARGS=...]"; exit 2; }
	$(BIN)/python -m apr.cli.eval models.sosp=null models.apr=null '++models.$(NAME)=$(MODEL)' data_dir=$(DATA) out_dir=$(OUT) $(ARGS)

# The real-server check of the sglang engine (launch/sglang_check.py says what it runs and costs); it exits 2
# at once without CUDA or the sglang package, 1 naming the step on any mismatch.
sglang-check: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make sglang-check MODEL=<checkpoint dir> [DATA=dir] [ARGS=...]"; exit 2; }
	$(BIN)/python launch/sglang_check.py --model $(MODEL) --data $(DATA) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check apr tests benchmarks

bench-data: $(STAMP)
	$(BIN)/python benchmarks/bench_datagen.py

# DEVICE=cuda runs a benchmark on the GPU (both sides of each comparison on the same device)
DEVICE ?= cpu
bench-engine: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py --device $(DEVICE)

bench-sft: $(STAMP)
	$(BIN)/python benchmarks/bench_sft.py --device $(DEVICE)

# Time to accuracy of the quickstart's APR recipe (the Countdown speedrun, docs/RESULTS.md): tokens and seconds
# until greedy validation accuracy reaches 10-50%, tokens/s, final validation and test accuracy. Its own N=3
# data under runs/bench/learn/data (~30 s, once); ~6-10 min on 2 CPU cores. LEARN_ARGS: e.g. '--name x -- optim.lr=3e-3'
LEARN_DATA := runs/bench/learn/data
bench-learn: $(STAMP)
	@test -f $(LEARN_DATA)/stats.json || $(BIN)/python -m apr.cli.data task=countdown_n3 data.num_train=20000 \
		data.num_val=200 data.num_test=200 data.out_dir=$(LEARN_DATA)
	$(BIN)/python benchmarks/bench_learn.py --data $(LEARN_DATA) $(LEARN_ARGS)

# One GRPO step against TRL's GRPOTrainer; TRL comes from the `bench` extra (never a required dependency).
bench-rl: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_rl.py --device $(DEVICE) $(if $(filter cpu,$(DEVICE)),,--dist none)

# The pipeline in miniature on one GPU (benchmarks/gpu_check.py): data, SoS+ and APR SFT of `small` side by
# side (train.max_minutes), greedy eval on 500 test problems, 5 GRPO steps, engine vs HF generate; MINUTES is
# the one knob (~8 min on an H200). Runs with the venv if there is one, else python3 (the GPU machine).
MINUTES ?= 8
GPU_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	MINUTES=$(MINUTES) $(GPU_PY) benchmarks/gpu_check.py --minutes $(MINUTES) --out runs/gpu_check

# removes the virtualenv and caches; trained runs (runs/) and data (data/) are kept
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
