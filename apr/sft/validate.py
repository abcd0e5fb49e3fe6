"""Validation loss: mean next-token loss over every trained-on token of packed batches.

Works on any HF causal LM, so a checkpoint reloaded with `AutoModelForCausalLM` reproduces the
number the trainer logged (same batches, same precision).

    >>> # batches = eval_batches(val_seqs, row_len=1024, pad_id=tok.pad_token_id, batch_rows=8)
    >>> # loss = validation_loss(AutoModelForCausalLM.from_pretrained(ckpt), batches)
"""

from __future__ import annotations

import contextlib

from apr.sft.packing import PackedBatch


def loss_sums(model, batches: list[PackedBatch], device="cpu", precision: str = "fp32") -> tuple[float, int]:
    """(summed token loss, number of target tokens) over `batches`, without gradients."""
    import torch

    device = torch.device(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    total, count = 0.0, 0
    was_training = getattr(model, "training", False)
    model.eval()
    with torch.no_grad(), autocast:
        for batch in batches:
            b = batch.to(device)
            out = model(**b.inputs_for(model), num_items_in_batch=torch.tensor(1))  # sum, not mean
            total += float(out.loss) if batch.num_targets else 0.0
            count += batch.num_targets
    model.train(was_training)
    return total, count


def validation_loss(model, batches: list[PackedBatch], device="cpu", precision: str = "fp32") -> float:
    """Mean token loss over `batches` (single process)."""
    total, count = loss_sums(model, batches, device, precision)
    return total / max(count, 1)
