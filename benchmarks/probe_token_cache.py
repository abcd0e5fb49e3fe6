"""CPU seconds of loading the SFT threads of <dir>/train/apr.jsonl: warm token cache vs render-at-start.

    python benchmarks/probe_token_cache.py /tmp/wt14-n3      # 20k N=3 traces: ~1 min quiet (render of 2,000 records)
(time.process_time, robust to other processes on a shared machine; the cache must exist: one SFT start builds it)
"""
import json
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer

from apr.sft.config import SFTDataConfig
from apr.sft.data import load_split

d = Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(d / "tokenizer")


def cpu(cache, n=None):
    t0, w0 = time.process_time(), time.perf_counter()
    seqs = load_split(SFTDataConfig(dir=str(d), solver="apr", token_cache=cache), "train", tok, n)
    return round(time.process_time() - t0, 2), round(time.perf_counter() - w0, 2), len(seqs)


print(json.dumps({"cache": [cpu(True) for _ in range(2)], "render_2000_records": cpu(False, 2000)}))
