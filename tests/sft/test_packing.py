"""Packing: rows hold whole sequences, attention stays inside each, and the loss is exact."""

import random
from bisect import bisect_left, insort

import numpy as np
import pytest
import torch

from apr.config import ConfigError
from apr.model import ModelConfig, build_for_tokenizer
from apr.sft.config import SFTDataConfig
from apr.sft.data import Sequences, TrainSequence, load_split
from apr.sft.packing import PackedLoader, collate, eval_batches, pack_decreasing, pack_rows


def test_pack_rows_places_every_sequence_once():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 80))]
        rows = pack_rows(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        # any-fit packing leaves at most one row half empty or worse
        assert len(rows) <= 2 * sum(lengths) // 64 + 1
    with pytest.raises(ValueError, match="more than a row"):
        pack_rows([3, 65], 64)


def best_fit_one_at_a_time(lengths, row_len):
    """The definition of best fit, one sequence at a time (the packer places whole runs at once)."""
    rooms, rows = [], []  # rooms: sorted (room left, row index)
    for i, n in enumerate(lengths):
        k = bisect_left(rooms, (n, -1))
        room, r = rooms.pop(k) if k < len(rooms) else (row_len, len(rows))
        if r == len(rows):
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            insort(rooms, (room - n, r))
    return rows


@pytest.mark.parametrize("order", ["decreasing", "given", "few lengths"])
def test_pack_rows_equals_best_fit_one_sequence_at_a_time(order):
    rng = random.Random(1)
    for trial in range(200):
        row_len = rng.choice([8, 64, 100, 2048])
        num = rng.randint(0, 300)
        if order == "few lengths":  # long runs of equal lengths, rows taking several of a run
            choices = [rng.randint(1, row_len) for _ in range(3)] + [1, row_len // 3 or 1]
            lengths = [rng.choice(choices) for _ in range(num)]
        else:
            lengths = [min(row_len, int(rng.expovariate(1 / (row_len / rng.choice([2, 5, 20])))) + 1)
                       for _ in range(num)]
        if order != "given":
            lengths.sort(reverse=True)
        assert pack_rows(lengths, row_len) == best_fit_one_at_a_time(lengths, row_len), (trial, row_len, lengths)


def test_pack_decreasing_keeps_ties_in_the_given_order():
    seqs = Sequences.of(TrainSequence(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), 1)
                        for n in [3, 5, 3, 2, 5])
    order = [4, 3, 2, 1, 0]
    rows = pack_decreasing(seqs, order, 8)  # longest first, ties as in `order`: 4, 1, 2, 0, 3
    assert rows == [[4, 2], [1, 0], [3]]


def per_sequence_loss(model, seqs):
    total, count = 0.0, 0
    for s in seqs:
        ids = torch.tensor(s.ids, dtype=torch.long)[None]  # (1, T)
        labels = torch.tensor(s.labels, dtype=torch.long)[None]  # (1, T)
        out = model(input_ids=ids, labels=labels, use_cache=False, num_items_in_batch=torch.tensor(1))
        total = total + out.loss
        count += s.num_targets
    return total / count


@pytest.mark.parametrize("attn", ["sdpa", "sdpa_packed", "eager"])
def test_packed_loss_equals_per_sequence_loss(attn, data_dir, data_tokenizer):
    seqs = load_split(SFTDataConfig(dir=str(data_dir), solver="apr"), "val", data_tokenizer, 2)[:8]
    cfg = ModelConfig.preset("tiny", num_layers=2, init_std=0.2, attn_implementation=attn)
    model = build_for_tokenizer(cfg, data_tokenizer, seed=1).train()  # train mode, as in training
    row_len = 512
    rows = pack_decreasing(seqs, list(range(len(seqs))), row_len)
    assert any(len(r) > 1 for r in rows)  # something is actually packed together
    batch = collate(seqs, rows, row_len, data_tokenizer.pad_token_id)
    assert batch.num_targets == sum(s.num_targets for s in seqs)
    packed = model(**batch.model_inputs(), num_items_in_batch=torch.tensor(batch.num_targets)).loss
    packed_grads = torch.autograd.grad(packed, list(model.parameters()))
    reference = per_sequence_loss(model, seqs)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    assert abs(packed.item() - reference.item()) < 1e-5
    for a, b in zip(packed_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the check has teeth: one causal mask over the whole row (no position restarts) differs
    leaky = model(input_ids=batch.input_ids, labels=batch.labels, use_cache=False,
                  num_items_in_batch=torch.tensor(batch.num_targets)).loss
    assert abs(leaky.item() - reference.item()) > 1e-3


def test_flash_attention_gets_each_micro_batch_as_one_row_with_the_same_loss(data_dir, data_tokenizer):
    # review (issue 25 item 8): transformers finds packed sequences from position_ids under flash-attention
    # only for a batch of one row, and SFT packed batch_rows rows: sequences would attend to each other
    from types import SimpleNamespace

    seqs = load_split(SFTDataConfig(dir=str(data_dir), solver="apr"), "val", data_tokenizer, 2)[:8]
    batch = collate(seqs, pack_decreasing(seqs, list(range(len(seqs))), 512), 512, data_tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] > 1
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    wrapped = SimpleNamespace(module=flash)  # DDP
    for m in (flash, wrapped):
        inputs = batch.inputs_for(m)
        assert inputs["input_ids"].shape == (1, batch.input_ids.numel())
        assert torch.equal(inputs["position_ids"].view_as(batch.position_ids), batch.position_ids)
    cfg = ModelConfig.preset("tiny", num_layers=2, init_std=0.2)
    model = build_for_tokenizer(cfg, data_tokenizer, seed=1)
    assert batch.inputs_for(model)["input_ids"].shape == batch.input_ids.shape  # sdpa: rows as they are
    n = torch.tensor(batch.num_targets)
    with torch.no_grad():
        rows = model(**batch.model_inputs(), num_items_in_batch=n).loss
        one_row = model(**batch.inputs_for(flash), num_items_in_batch=n).loss  # the flash layout, under sdpa
    assert abs(rows.item() - one_row.item()) < 1e-5  # nothing is trained across the joined rows


def test_loader_shards_resumes_and_checks_batch(data_dir, data_tokenizer):
    seqs = load_split(SFTDataConfig(dir=str(data_dir)), "train", data_tokenizer, None)
    pad = data_tokenizer.pad_token_id
    full = PackedLoader(seqs, 512, pad, batch_rows=2, grad_accum_steps=1, seed=0, world_size=1)
    ranks = [PackedLoader(seqs, 512, pad, batch_rows=1, grad_accum_steps=1, seed=0, rank=r, world_size=2)
             for r in range(2)]
    # two processes with one row each see exactly the rows of one process with two rows
    a = full.step_batches(0, 1)[0]
    b = [r.step_batches(0, 1)[0] for r in ranks]
    assert torch.equal(a.input_ids, torch.cat([x.input_ids for x in b]))
    # iteration resumes at a data position, across the epoch boundary
    it = full.iterate(0, 0)
    steps = [next(it) for _ in range(full.steps_in_epoch(0) + 2)]
    assert steps[-1][:2] == (1, 1)
    again = next(full.iterate(1, 1))
    assert torch.equal(again[2][0].input_ids, steps[-1][2][0].input_ids)
    assert full.epoch_rows(0) != full.epoch_rows(1)  # reshuffled per epoch
    with pytest.raises(ConfigError, match="train.batch_rows: got 1000"):
        PackedLoader(seqs, 512, pad, batch_rows=1000, grad_accum_steps=1, seed=0).steps_in_epoch(0)


def test_eval_batches_are_equal_in_number_across_processes(data_dir, data_tokenizer):
    seqs = load_split(SFTDataConfig(dir=str(data_dir)), "val", data_tokenizer, None)
    per_rank = [eval_batches(seqs, 512, 0, batch_rows=1, rank=r, world_size=3) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) > 1
    assert sum(b.num_targets for bs in per_rank for b in bs) == sum(s.num_targets for s in seqs)
