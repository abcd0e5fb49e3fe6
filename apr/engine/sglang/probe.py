"""Owns the log-prob probe: which distribution a server's log-probs are of, checked against the local checkpoint.

SGLang returns `log_softmax(logits / temperature)` (before top-k / top-p) unless the server runs with
`SGLANG_RETURN_ORIGINAL_LOGPROB=1` (older: `RETURN_ORIGINAL_LOGPROB`), when it returns the raw
`log_softmax(logits)` (`sglang/srt/layers/sampler.py`). A server the project did not launch may do
either, and an RL run must not mix raw rollout log-probs with tempered learner ones silently: one
request at a temperature far from 1, scored again by the checkpoint on this machine, tells which.
"""

from __future__ import annotations

import random

from apr.engine.base import Request, SamplingParams
from apr.engine.sglang.config import SGLangError

PROBE_TEMPERATURE = 0.5  # far from 1: tempered and raw log-probs differ clearly
PROBE_TOLERANCE = 0.05  # max |server - local| per token: bf16 GPU servers vs this fp32 recomputation


def probe_server_logprobs(engine, model_path: str, num_prompt_ids: int = 12, num_new_tokens: int = 8) -> str:
    """"tempered" or "original": which local recomputation the server's log-probs match on every server.
    Call it on an idle engine (at start): it runs the engine until done."""
    if engine.has_work():
        raise RuntimeError("probe_server_logprobs needs an idle engine (it collects every completion)")
    modes = {url: _probe_one(engine, url, model_path, num_prompt_ids, num_new_tokens) for url in engine.config.urls}
    if len(set(modes.values())) > 1:
        raise SGLangError(f"the servers disagree on their log-probs: {modes}; start them all alike "
                          "(without SGLANG_RETURN_ORIGINAL_LOGPROB)")
    return next(iter(modes.values()))


def _probe_one(engine, url: str, model_path: str, num_prompt_ids: int, num_new_tokens: int) -> str:
    vocab = engine.vocab_size or 64
    prompt = [random.Random(f"apr-probe-{i}").randrange(4, vocab) for i in range(num_prompt_ids)]
    params = SamplingParams(temperature=PROBE_TEMPERATURE, max_new_tokens=num_new_tokens)
    rid = f"apr-logprob-probe-{abs(hash(url)) % 10**8}"
    engine.submit(Request(rid, prompt, params), url=url)
    done = {c.request_id: c for c in engine.run_until_done()}
    c = done[rid]
    if not c.output_ids:
        raise SGLangError(f"{url}: the log-prob probe got no tokens back ({c.finish_reason})")
    tempered, raw = _local_logprobs(model_path, prompt, c.output_ids, PROBE_TEMPERATURE)
    d_tempered = max(abs(a - b) for a, b in zip(c.logprobs, tempered))
    d_raw = max(abs(a - b) for a, b in zip(c.logprobs, raw))
    if d_tempered <= PROBE_TOLERANCE and d_tempered <= d_raw:
        return "tempered"
    if d_raw <= PROBE_TOLERANCE:
        return "original"
    raise SGLangError(f"{url}: its log-probs match neither log_softmax(logits / T) nor log_softmax(logits) of "
                      f"{model_path} (max differences {d_tempered:.3g} and {d_raw:.3g}): does it serve that "
                      "checkpoint? (set engine.server_logprobs to tempered or original to skip this probe)")


def _local_logprobs(model_path: str, prompt: list[int], output: list[int], temperature: float
                    ) -> tuple[list[float], list[float]]:
    """(tempered, raw) log-probs of `output` after `prompt` under the checkpoint, fp32 on CPU."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + output[:-1]])  # (1, T)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:].float()  # (K, V): the positions that chose `output`
    target = torch.tensor(output).unsqueeze(1)  # (K, 1)
    tempered = torch.log_softmax(logits / temperature, -1).gather(1, target).squeeze(1)  # (K,)
    raw = torch.log_softmax(logits, -1).gather(1, target).squeeze(1)  # (K,)
    return tempered.tolist(), raw.tolist()
