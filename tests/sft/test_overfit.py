"""Train then generate: a tiny model memorises 4 short SoS+ traces and HF `generate` replays one."""

import pytest
import torch

from apr.datagen.build import read_records
from apr.search.trace import ThreadTrace
from apr.sft import TrainData, Trainer
from apr.sft.data import fit_to_window, trace_sequences

from ._helpers import small_cfg


@pytest.mark.slow
def test_overfit_then_generate_greedily(data_dir, data_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    records = sorted((r for r in read_records(data_dir / "train" / "sosp.jsonl") if r.solved),
                     key=lambda r: r.thread_tokens[0])[:4]
    seqs = [s for r in records for s in trace_sequences(ThreadTrace.from_dict(r.trace), data_tokenizer)]
    assert len({tuple(s.ids[:s.num_prompt]) for s in seqs}) == 4  # four different problems
    cfg = small_cfg(data_dir, tmp_path / "overfit", data={"max_seq_len": 256},
                    optim={"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.0},
                    train={"max_steps": 150, "batch_rows": 2}, log={"every_steps": 50})
    data = TrainData(seqs, seqs, {"train": fit_to_window(seqs, cfg.data, "train")[1]})
    summary = Trainer(cfg, data_tokenizer, data=data).fit()
    assert summary["val/loss"] < 0.05, summary["losses"][::10]

    model = AutoModelForCausalLM.from_pretrained(summary["final"]).eval()  # the HF export, no project code
    reproduced = []
    for s in seqs:
        prompt = torch.tensor(s.ids[:s.num_prompt], dtype=torch.long)[None]  # (1, P): <bos> + problem line
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=len(s) - s.num_prompt + 8)  # greedy, stops at <eos>
        if out[0].tolist() == s.ids.tolist():
            reproduced.append(data_tokenizer.decode(out[0].tolist()))
    assert len(reproduced) >= 1
    assert reproduced[0].startswith("<bos>node 0 ") and "\nanswer " in reproduced[0]
    assert reproduced[0].endswith("<eos>")
