"""Model presets and the builder. `torch`/`transformers` are imported when a model is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from apr.config import check, fail


@dataclass
class ModelConfig:
    """Shape of a Llama model; presets below, every field overridable from `conf/model/`."""

    name: str = "tiny"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: same as num_heads (no GQA)
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    init_std: float = 0.02
    # how number tokens' embeddings start: random (as every other token), or numeric (apr.model.hf:
    # sin/cos of the value at log-spaced periods in half the dimensions, the same start for "7" and " 7")
    number_init: str = "random"
    # sdpa (packed rows get a block-diagonal mask from position_ids), sdpa_packed (apr.model.attention:
    # packed rows computed sequence by sequence, skipping the masked pairs; same values), eager, or
    # flash_attention_2 (CUDA only, needs the flash-attn package)
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for f in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            check(getattr(self, f) > 0, f"model.{f}", getattr(self, f), "a positive integer")
        check(self.hidden_size % self.num_heads == 0, "model.num_heads", self.num_heads,
              f"a divisor of model.hidden_size ({self.hidden_size})")
        kv = self.num_kv_heads or self.num_heads
        check(self.num_heads % kv == 0, "model.num_kv_heads", self.num_kv_heads, "a divisor of model.num_heads")
        check(self.number_init in ("random", "numeric"), "model.number_init", self.number_init,
              "random or numeric")
        check(self.attn_implementation in ATTN_IMPLEMENTATIONS, "model.attn_implementation",
              self.attn_implementation, ", ".join(ATTN_IMPLEMENTATIONS))

    @staticmethod
    def preset(name: str, **overrides) -> ModelConfig:
        """A named preset (`tiny`, `small`, `base`, `paper_228m`) with optional field overrides."""
        if name not in PRESETS:
            fail("model.name", name, ", ".join(PRESETS))
        return dataclasses.replace(PRESETS[name], **overrides)


ATTN_IMPLEMENTATIONS = ("sdpa", "sdpa_packed", "eager", "flash_attention_2")

PRESETS: dict[str, ModelConfig] = {
    # ~1M parameters without embeddings (h128 L4): minutes of CPU training learn N=3 Countdown.
    "tiny": ModelConfig("tiny", 128, 4, 4, None, 512, 2048),
    # ~6M (h256 L6).
    "small": ModelConfig("small", 256, 6, 8, None, 1024, 4096),
    # ~34M (h512 L8).
    "base": ModelConfig("base", 512, 8, 8, None, 2048, 4096),
    # The paper's Appendix A.2 model: 228M non-embedding parameters, 4,096 context. With a SwiGLU
    # MLP (3 matrices) h1024 L18 reaches 228M at intermediate 2,752 (~8/3 h); 4,096 would be 302M.
    "paper_228m": ModelConfig("paper_228m", 1024, 18, 16, None, 2752, 4096, tie_word_embeddings=False),
}


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0, bos_token_id: int = 2,
                eos_token_id: int = 3, seed: int = 0):
    """A freshly initialised HF `LlamaForCausalLM` (fp32) for `cfg` and a vocabulary size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    register_attention(cfg.attn_implementation)
    hf_cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_std,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation=cfg.attn_implementation,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(hf_cfg)
    return model


def register_attention(name: str | None) -> None:
    """Make the project's own attention implementations known to transformers before a model uses them."""
    from apr.model import attention

    if name == attention.NAME:
        attention.register()
