"""The `sglang` engine: the `Engine` interface over stock SGLang servers' native HTTP API (SGLang >= 0.5.3).

Token ids both ways (`POST /generate` with `input_ids`, read `output_ids` and
`meta_info.output_token_logprobs`); no text round trip. Every endpoint and field used, with the
SGLang source file that defines it and the versions checked: docs/sglang.md.

    # start a server (GPU):  python -m sglang.launch_server --model-path DIR --port 30000 --skip-tokenizer-init
    >>> from apr.engine.base import Request, SamplingParams
    >>> engine = SGLangEngine(SGLangEngineConfig(urls=["http://127.0.0.1:30000"]))  # doctest: +SKIP
    >>> engine.submit(Request("a", [2, 5, 9], SamplingParams(temperature=0.0, max_new_tokens=4)))  # doctest: +SKIP
    >>> [c.finish_reason for c in engine.run_until_done()]  # doctest: +SKIP
    ['length']

Or let it launch the servers: `SGLangEngine.from_pretrained(DIR, urls=[...], launch=True)`.
Differences from `local`: SGLang also stops at the model's own eos id (`ignore_eos` would turn
`stop_token_ids` off too); seeds are honoured only by servers started with
`--enable-deterministic-inference` (`engine.deterministic`); log-probs are SGLang's default, those
after temperature (the engine contract), unless a server runs with `SGLANG_RETURN_ORIGINAL_LOGPROB=1`
(`engine.server_logprobs`, `SGLangEngine.check_logprobs`).

Module map (each owns one thing):
- `config`: SGLangEngineConfig (validated; errors name `engine.<field>`), SGLangError, MIN_VERSION
- `client`: HTTP calls with retries and the API key; /server_info and the start-up version checks
- `wire`: the /generate body and answer <-> Request / Completion; the per-sequence state
- `engine`: SGLangEngine, the submit / step loop over a thread pool
- `rl_methods`: the engine's weight-update and log-prob-check methods (a mixin)
- `weights`: weight updates from disk and over a process group, inside weight-update sessions
- `launch`: launch_server, ServerHandle, the server flags from the config
- `probe`: the log-prob probe (tempered or raw?) against the local checkpoint
"""

from apr.engine.sglang.config import MIN_VERSION, SGLangEngineConfig, SGLangError
from apr.engine.sglang.engine import SGLangEngine
from apr.engine.sglang.launch import ServerHandle, launch_server, server_args
from apr.engine.sglang.weights import new_update_group

__all__ = ["MIN_VERSION", "SGLangEngine", "SGLangEngineConfig", "SGLangError", "ServerHandle", "launch_server",
           "new_update_group", "server_args"]
