"""Threads -> training sequences: labels are unshifted ids on generated tokens only; window checks."""

import numpy as np
import pytest

from apr.config import ConfigError
from apr.protocol import ProtocolIds, render_tree
from apr.search.trace import Segment, ThreadTrace
from apr.sft.config import SFTDataConfig
from apr.sft.data import IGNORE, fit_to_window, load_split, trace_sequences


def apr_trace():
    child = ThreadTrace("node 0,0 27:[22,5] [53-31=22]\n",
                        [Segment.text_("try 22+5=27 [27] goal\n"), Segment.join_("53-31=22,22+5=27")])
    return ThreadTrace("node 0 27:[22,31,53,5] []\n",
                       [Segment.text_("try 53-31=22 [22,5] gen 0,0\n"),
                        Segment.spawn_(["node 0,0 27:[22,5] [53-31=22]\n"]),
                        Segment.results_(["53-31=22,22+5=27"]),
                        Segment.text_("answer (53-31)+5\n")], [[child]])


def test_labels_are_generated_ids_unshifted(tokenizer):
    trace = apr_trace()
    seqs = trace_sequences(trace, tokenizer)
    rendered = render_tree(trace, tokenizer)
    assert len(seqs) == 2  # the root and its child, one sequence each
    pid = ProtocolIds.from_tokenizer(tokenizer)
    for s, r in zip(seqs, rendered):
        assert s.ids.tolist() == r.ids
        trained = s.labels != IGNORE
        assert trained.tolist() == [bool(m) for m in r.mask]  # same positions as the mask: no shift
        assert np.array_equal(s.labels[trained], s.ids[trained])
        assert s.ids[0] == pid.bos and s.labels[0] == IGNORE
    root = seqs[0]
    # the runtime-written <result> ... </result> block and the prompt are never targets
    start = root.ids.tolist().index(pid.result)
    end = root.ids.tolist().index(pid.result_end)
    assert (root.labels[start:end + 1] == IGNORE).all()
    assert (root.labels[:root.num_prompt] == IGNORE).all() and root.labels[root.num_prompt] != IGNORE
    assert root.ids[-1] == pid.eos and root.labels[-1] == pid.eos  # the root learns to stop
    assert seqs[1].labels[-1] == pid.join_end  # a child learns to join


def test_load_split_reads_every_thread(data_dir, data_tokenizer):
    cfg = SFTDataConfig(dir=str(data_dir), solver="apr")
    seqs = load_split(cfg, "train", data_tokenizer, max_records=5)
    from apr.datagen.build import read_records

    expected = sum(len(r.thread_tokens) for r in read_records(data_dir / "train" / "apr.jsonl")[:5])
    assert len(seqs) == expected > 5
    with pytest.raises(ConfigError, match="data.dir: .*does not exist"):
        load_split(SFTDataConfig(dir=str(data_dir / "nope")), "train", data_tokenizer, None)


def test_window_checks_name_the_field(data_dir, data_tokenizer):
    seqs = load_split(SFTDataConfig(dir=str(data_dir)), "train", data_tokenizer, None)
    lengths = sorted(len(s) for s in seqs)
    with pytest.raises(ConfigError, match=r"data.max_seq_len: got 8; accepted: more than \d+ tokens \(the longest"):
        fit_to_window(seqs, SFTDataConfig(dir=str(data_dir), max_seq_len=8), "train")
    window = lengths[len(lengths) // 4]  # ~75% of threads are longer
    with pytest.raises(ConfigError, match=f"data.max_seq_len: got {window}; .* are longer"):
        fit_to_window(seqs, SFTDataConfig(dir=str(data_dir), max_seq_len=window), "train")
    with pytest.raises(ConfigError, match="data.overlong=error"):
        fit_to_window(seqs, SFTDataConfig(dir=str(data_dir), max_seq_len=lengths[-2], overlong="error"), "train")


def test_overlong_threads_are_dropped_or_truncated(data_dir, data_tokenizer):
    seqs = load_split(SFTDataConfig(dir=str(data_dir)), "train", data_tokenizer, None)
    window = sorted(len(s) for s in seqs)[-3]
    num_long = sum(len(s) > window for s in seqs)
    kept, report = fit_to_window(seqs, SFTDataConfig(dir=str(data_dir), max_seq_len=window), "train")
    assert len(kept) == len(seqs) - num_long and report.num_dropped == num_long >= 1
    cut, report = fit_to_window(seqs, SFTDataConfig(dir=str(data_dir), max_seq_len=window, overlong="truncate"),
                                "train")
    assert len(cut) == len(seqs) and report.num_truncated == num_long and max(len(s) for s in cut) == window


def test_conditioning_line_is_part_of_the_masked_prompt(tokenizer):
    from apr.search import format as fmt
    from apr.search import with_prompt_prefix

    plain = trace_sequences(apr_trace(), tokenizer)[0]
    conditioned = trace_sequences(with_prompt_prefix(apr_trace(), fmt.threads_condition(1)), tokenizer)[0]
    prefix = len(conditioned) - len(plain)
    assert tokenizer.decode(conditioned.ids[1:1 + prefix].tolist()) == "threads 1\n"
    assert conditioned.num_prompt == plain.num_prompt + prefix
    assert np.array_equal(conditioned.labels[conditioned.num_prompt:], plain.labels[plain.num_prompt:])
