"""Arithmetic drills: extra training sequences made of the arithmetic the training traces contain.

A model that has learned the search format still writes wrong results (`26-26=1`), and a wrong result
that equals the target becomes a false `goal`: at 2M training tokens a tiny model got 23% of the tokens
after `=` wrong (teacher-forced), against 6% of the other numbers (docs/RESULTS.md). A drill sequence
is `<bos>` then facts copied token for token from the traces (`a op b = c` and a newline), trained on
the results only; `data.drills` sets their tokens as a fraction of the training traces' tokens. The
facts are drawn from every occurrence in the traces, so frequent facts stay frequent.

    >>> from apr.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> ids = np.array(tok("try 11+24=35 [22,35]\\ntry 35*2=70 [70]\\n")["input_ids"], dtype=np.int32)
    >>> facts = arithmetic_facts(ids, tok)
    >>> [tok.decode(f) for f in facts]
    [' 11+24=35', ' 35*2=70']
"""

from __future__ import annotations

import numpy as np

from apr.datagen.token_cache import IGNORE
from apr.sft.data import Sequences

FACTS_PER_SEQUENCE = 20  # ~120 tokens a sequence: a few share a packed row with the threads


def arithmetic_facts(ids: np.ndarray, tokenizer) -> np.ndarray:
    """Every `a op b = c` of the flat token ids whose numbers are single tokens, as (F, 5) token ids
    (a, op, b, =, c)."""
    vocab = tokenizer.get_vocab()
    eq = vocab["="]
    ops = np.array([vocab[o] for o in "+-*/"], dtype=ids.dtype)
    pos = np.flatnonzero(ids == eq)  # (E,)
    pos = pos[(pos >= 4) & (pos + 2 < len(ids))]
    pos = pos[np.isin(ids[pos - 2], ops)]
    numbers = _number_ids(tokenizer)
    # single-token numbers only: a number above the tokenizer's max_int is spelled in several tokens
    pos = pos[numbers[ids[pos - 3]] & numbers[ids[pos - 1]] & numbers[ids[pos + 1]]
              & ~numbers[ids[pos - 4]] & ~numbers[ids[pos + 2]]]
    return np.stack([ids[pos + k] for k in (-3, -2, -1, 0, 1)], axis=1) if len(pos) else np.zeros((0, 5), ids.dtype)


def _number_ids(tokenizer) -> np.ndarray:
    """(V,) bool: the token is an integer (with or without a leading space)."""
    out = np.zeros(len(tokenizer), dtype=bool)
    for word, i in tokenizer.get_vocab().items():
        out[i] = word.strip().isdigit()
    return out


def with_drills(train: Sequences, tokenizer, fraction: float, seed: int) -> tuple[Sequences, dict]:
    """`train` and, after it, drill sequences of about `fraction` x its tokens; and what was added."""
    if fraction <= 0:
        return train, {}
    used = np.concatenate([train.ids[a:a + n] for a, n in zip(train.starts, train.lengths)])
    facts = arithmetic_facts(used, tokenizer)
    if not len(facts):
        return train, {"drill_facts": 0, "drill_sequences": 0, "drill_tokens": 0}
    newline, bos = tokenizer.get_vocab()["\n"], tokenizer.bos_token_id
    per_fact = facts.shape[1] + 1
    num_seqs = max(int(round(fraction * int(train.lengths.sum()) / (1 + FACTS_PER_SEQUENCE * per_fact))), 1)
    rng = np.random.default_rng(seed)
    drawn = facts[rng.integers(0, len(facts), size=(num_seqs, FACTS_PER_SEQUENCE))]  # (D, K, 5)
    body = np.concatenate([drawn, np.full((num_seqs, FACTS_PER_SEQUENCE, 1), newline, facts.dtype)], axis=2)
    ids = np.concatenate([np.full((num_seqs, 1), bos, facts.dtype), body.reshape(num_seqs, -1)], axis=1)  # (D, L)
    labels = np.full_like(ids, IGNORE)
    result = 1 + np.arange(FACTS_PER_SEQUENCE) * per_fact + 4  # the `c` of each fact
    labels[:, result] = ids[:, result]
    length = ids.shape[1]
    base = len(train.ids)
    merged = Sequences(np.concatenate([np.asarray(train.ids, np.int32), ids.reshape(-1).astype(np.int32)]),
                       np.concatenate([np.asarray(train.labels, np.int32), labels.reshape(-1).astype(np.int32)]),
                       np.concatenate([train.starts, base + length * np.arange(num_seqs)]),
                       np.concatenate([train.lengths, np.full(num_seqs, length)]),
                       np.concatenate([train.num_prompt, np.full(num_seqs, 5)]))
    return merged, {"drill_facts": int(len(facts)), "drill_sequences": num_seqs, "drill_tokens": int(ids.size)}
