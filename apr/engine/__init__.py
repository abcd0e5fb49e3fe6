"""Token-level inference engines behind one interface (`base.Engine`).

Module map (each owns one thing):
- `base`: SamplingParams, Request, Completion, EngineStats, the Engine protocol (no torch)
- `local`: LocalEngine, the step loop (continuous batching); `local_config`: LocalEngineConfig
- `scheduler`: waiting queue, running batch, suspended sequences, slot placement, eviction
- `sequence`: the per-sequence state object and its status enum
- `rows`: the running batch's per-step state as whole-batch arrays (inputs, draws, finish rules, history)
- `kv_cache`: the preallocated KV pool (one slot per live sequence)
- `llama`: functional Llama forward over the HF model's weights and the pool
- `sampler`: batch-invariant greedy / temperature / top-k / top-p sampling; counter-based seeded draws
- `sglang`: SGLangEngine + SGLangEngineConfig over SGLang servers' HTTP API; launch_server (a package: its own module map)
- `scripted`: a model-free engine (next token from a function) for runtime tests

`import apr.engine` stays light: torch loads when `LocalEngine` is first used, requests when
`SGLangEngine` is.
"""

from apr.engine.base import Completion, Engine, EngineStats, FinishReason, Request, SamplingParams

__all__ = ["Completion", "Engine", "EngineStats", "FinishReason", "LocalEngine", "LocalEngineConfig", "Request",
           "SGLangEngine", "SGLangEngineConfig", "SamplingParams"]


def __getattr__(name: str):
    if name in ("LocalEngine", "LocalEngineConfig"):
        from apr.engine import local

        return getattr(local, name)
    if name in ("SGLangEngine", "SGLangEngineConfig"):
        from apr.engine import sglang

        return getattr(sglang, name)
    raise AttributeError(f"module 'apr.engine' has no attribute {name!r}")
