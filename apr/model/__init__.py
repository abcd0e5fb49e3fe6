"""Llama-architecture models built from config (HF `LlamaForCausalLM`), HF-format checkpoints.

    >>> from apr.model import ModelConfig, build_model
    >>> model = build_model(ModelConfig.preset("tiny"), vocab_size=2100)  # doctest: +SKIP
"""

from apr.model.config import PRESETS, ModelConfig, build_model

__all__ = ["PRESETS", "ModelConfig", "build_model"]
