"""Llama-architecture models built from config (HF `LlamaForCausalLM`), HF-format checkpoints.

    >>> from apr.model import ModelConfig, build_for_tokenizer
    >>> # model = build_for_tokenizer(ModelConfig.preset("tiny"), tokenizer)
    >>> # save_checkpoint(model, tokenizer, "runs/x/final")  -> AutoModelForCausalLM.from_pretrained
"""

from apr.model.config import ATTN_IMPLEMENTATIONS, PRESETS, ModelConfig, build_model
from apr.model.hf import build_for_tokenizer, count_parameters, load_checkpoint, save_checkpoint

__all__ = ["ATTN_IMPLEMENTATIONS", "PRESETS", "ModelConfig", "build_for_tokenizer", "build_model",
           "count_parameters", "load_checkpoint", "save_checkpoint"]
