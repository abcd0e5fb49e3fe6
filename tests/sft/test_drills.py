"""Arithmetic drills (apr.sft.drills): the traces' own facts, trained on their results only."""

from __future__ import annotations

import re

import numpy as np
import pytest

from apr.config import ConfigError, from_dict
from apr.datagen.token_cache import IGNORE
from apr.sft.config import SFTConfig, SFTDataConfig
from apr.sft.data import load_split
from apr.sft.drills import FACTS_PER_SEQUENCE, arithmetic_facts, with_drills


def _facts_in_text(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in re.findall(r"(\d+)([-+*/])(\d+)=(\d+)", text)]


def test_facts_are_every_arithmetic_line_of_the_traces_and_all_true(data_dir, data_tokenizer):
    train = load_split(SFTDataConfig(dir=str(data_dir), solver="apr"), "train", data_tokenizer, None)
    ids = np.concatenate([s.ids for s in train])
    facts = arithmetic_facts(ids, data_tokenizer)
    text = "".join(data_tokenizer.decode(s.ids) for s in train)
    max_int = 999  # larger numbers are several tokens: those facts are left out
    want = [f for f in _facts_in_text(text) if max(f[0], f[2], f[3]) <= max_int]
    assert len(want) < len(_facts_in_text(text))  # the data has some (e.g. 16*66=1056)
    got = [_facts_in_text(data_tokenizer.decode(f))[0] for f in facts]
    assert sorted(got) == sorted(want) and len(got) > 100
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    assert all(ops[op](a, b) == c for a, op, b, c in got)  # the solvers write correct arithmetic


def test_drill_sequences_train_on_results_only_at_the_asked_share(data_dir, data_tokenizer):
    train = load_split(SFTDataConfig(dir=str(data_dir), solver="apr"), "train", data_tokenizer, None)
    merged, info = with_drills(train, data_tokenizer, 0.25, seed=0)
    n = len(train)
    assert len(merged) == n + info["drill_sequences"]
    assert all(np.array_equal(merged[i].ids, train[i].ids) for i in range(0, n, 7))  # the traces unchanged
    drill_tokens = int(merged.lengths[n:].sum())
    assert drill_tokens == info["drill_tokens"]
    assert drill_tokens / int(train.lengths.sum()) == pytest.approx(0.25, rel=0.15)
    known = set(map(tuple, arithmetic_facts(np.concatenate([s.ids for s in train]), data_tokenizer).tolist()))
    for s in list(merged)[n:n + 5]:
        assert s.ids[0] == data_tokenizer.bos_token_id and len(s.ids) == 1 + 6 * FACTS_PER_SEQUENCE
        body = s.ids[1:].reshape(FACTS_PER_SEQUENCE, 6)
        assert all(tuple(f) in known for f in body[:, :5].tolist())
        trained = np.flatnonzero(s.labels != IGNORE)
        assert trained.tolist() == (1 + 6 * np.arange(FACTS_PER_SEQUENCE) + 4).tolist()  # each `c`, nothing else
        assert np.array_equal(s.labels[trained], s.ids[trained])
    same, _ = with_drills(train, data_tokenizer, 0.25, seed=0)
    assert np.array_equal(same.ids, merged.ids)  # seeded
    assert with_drills(train, data_tokenizer, 0.0, seed=0)[0] is train


def test_drills_share_is_checked():
    with pytest.raises(ConfigError, match=r"data.drills: got 2.0; accepted: a fraction in \[0, 1\]"):
        from_dict(SFTConfig, {"data": {"drills": 2.0}})
