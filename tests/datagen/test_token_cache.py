"""The token cache: the same sequences as rendering at start, invalidated by a changed tokenizer or
changed traces, built in parallel, shared by local ranks."""

import os

import numpy as np
import pytest

from apr.datagen import DataConfig, generate_dataset, token_cache
from apr.search import SearchConfig
from apr.sft.config import SFTDataConfig
from apr.sft.data import load_split
from apr.task import CountdownConfig
from apr.tokenizer import TokenizerConfig, build_tokenizer

SOLVERS = {"sosp": SearchConfig("sosp"), "apr": SearchConfig("apr", promising_prob=0.9)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache_data")
    cfg = DataConfig(out_dir=str(out), num_train=30, num_val=4, num_test=0, num_workers=1, progress=False)
    generate_dataset(CountdownConfig(num_numbers=3, max_number=30), SOLVERS, cfg, TokenizerConfig())
    from transformers import AutoTokenizer

    return out, AutoTokenizer.from_pretrained(out / "tokenizer")


def _same(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert np.array_equal(x.ids, y.ids) and np.array_equal(x.labels, y.labels) and x.num_prompt == y.num_prompt


@pytest.mark.parametrize("solver", ["sosp", "apr"])
@pytest.mark.parametrize("solved_only,max_records", [(False, None), (True, None), (True, 7), (False, 5)])
def test_cached_sequences_equal_rendered_ones(data, solver, solved_only, max_records):
    out, tok = data
    kw = dict(dir=str(out), solver=solver, solved_only=solved_only, num_workers=1)
    cached = load_split(SFTDataConfig(**kw), "train", tok, max_records)
    rendered = load_split(SFTDataConfig(**kw, token_cache=False), "train", tok, max_records)
    _same(cached, rendered)
    assert not cached[0].ids.flags.owndata and not cached[0].ids.flags.writeable  # a view of the read-only map


def test_parallel_build_equals_serial_build(data, tmp_path):
    out, tok = data
    path = out / "train" / "apr.jsonl"
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    token_cache.build(path, tok, serial, num_workers=1)
    token_cache.build(path, tok, parallel, num_workers=2)
    a, b = token_cache.open_cache(serial), token_cache.open_cache(parallel)
    for name in token_cache.FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.num_threads > 30 and len(a.record_solved) == 30  # APR: several threads per record


def test_changed_tokenizer_or_traces_get_a_new_cache(data, tmp_path):
    out, tok = data
    path = tmp_path / "apr.jsonl"
    path.write_bytes((out / "train" / "apr.jsonl").read_bytes())
    first = token_cache.load_or_build(path, tok, num_workers=1).path
    assert token_cache.load_or_build(path, tok, num_workers=1).path == first  # reused
    other_tok = build_tokenizer(TokenizerConfig(extra_words=("zebra",)))
    by_tok = token_cache.load_or_build(path, other_tok, num_workers=1).path
    assert by_tok != first and not first.exists()  # the stale cache was replaced
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:10]) + "\n")  # the traces changed
    fewer = token_cache.load_or_build(path, other_tok, num_workers=1)
    assert fewer.path != by_tok and len(fewer.record_solved) == 10


def test_the_fingerprint_is_remembered_until_the_file_changes(data, tmp_path, monkeypatch):
    out, tok = data
    path = tmp_path / "apr.jsonl"
    path.write_bytes((out / "train" / "apr.jsonl").read_bytes())
    first = token_cache.load_or_build(path, tok, num_workers=1).path
    hashed = []
    real = token_cache.fingerprint
    monkeypatch.setattr(token_cache, "fingerprint", lambda *a: hashed.append(a) or real(*a))
    assert token_cache.load_or_build(path, tok, num_workers=1).path == first and not hashed  # from the stamp
    other_tok = build_tokenizer(TokenizerConfig(extra_words=("zebra",)))
    assert token_cache.cache_dir(path, other_tok) != first and len(hashed) == 1  # another tokenizer: hashed
    data_bytes = path.read_bytes()
    changed = data_bytes.replace(b'"solved":true', b'"solved":null', 1)  # same size, other content
    assert changed != data_bytes and len(changed) == len(data_bytes)
    path.write_bytes(changed)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # a later write, as any write is
    assert token_cache.cache_dir(path, tok) != first and len(hashed) == 2


def test_other_local_ranks_wait_for_rank_zero(data, tmp_path, monkeypatch):
    out, tok = data
    path = tmp_path / "sosp.jsonl"
    path.write_bytes((out / "train" / "sosp.jsonl").read_bytes())
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(token_cache, "WAIT_S", 0.2)
    with pytest.raises(TimeoutError, match="local rank 0 builds it"):
        token_cache.load_or_build(path, tok)  # rank 1 never builds
    monkeypatch.setenv("LOCAL_RANK", "0")
    built = token_cache.load_or_build(path, tok, num_workers=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert token_cache.load_or_build(path, tok).path == built.path
    assert os.environ["LOCAL_RANK"] == "1"
