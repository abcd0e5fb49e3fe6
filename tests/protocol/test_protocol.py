import pytest

from apr.protocol import (
    EOS,
    RESULT,
    RESULT_END,
    SPECIAL_TOKENS,
    ProtocolError,
    ProtocolIds,
    decode_tree,
    render_tree,
    thread_text,
)
from apr.search import SearchConfig, solve
from apr.search.trace import Segment, ThreadTrace
from apr.task import CountdownConfig, generate_problems


def traces(n=25):
    out = []
    for num_numbers in (3, 4):
        probs = generate_problems(CountdownConfig(num_numbers=num_numbers), n, seed=1)
        for i, p in enumerate(probs):
            for cfg in (SearchConfig("sosp"), SearchConfig("apr", promising_prob=0.9),
                        SearchConfig("apr", promising_prob=1.0, max_depth=2, condition=True)):
                out.append(solve(p, cfg, seed=i).trace)
    return out


@pytest.fixture(scope="module")
def pid(tokenizer):
    return ProtocolIds.from_tokenizer(tokenizer)


def test_every_trace_round_trips_with_masks(tokenizer, pid):
    unk = tokenizer.unk_token_id
    for trace in traces():
        threads = render_tree(trace, tokenizer)
        flat = list(trace.threads())
        assert len(threads) == len(flat)
        for rt, t in zip(threads, flat):
            text = thread_text(t, is_root=rt.parent < 0)
            # rendering piece by piece equals tokenizing the whole thread at once
            assert rt.ids == tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.decode(rt.ids, skip_special_tokens=False) == text
            assert unk not in rt.ids
            assert len(rt.mask) == len(rt.ids)
            # the mask: prompt and runtime-written results are 0, everything else 1
            expected, inside = [], False
            n_prompt = len(tokenizer.encode("<bos>" + t.prompt, add_special_tokens=False))
            for k, tok in enumerate(rt.ids):
                if tok == pid.result:
                    inside = True
                expected.append(0 if (k < n_prompt or inside) else 1)
                if tok == pid.result_end:
                    inside = False
            assert rt.mask == expected
            if rt.parent < 0:
                assert rt.ids[-1] == pid.eos and rt.mask[-1] == 1
            else:
                assert rt.ids[-1] == pid.join_end
        assert decode_tree(threads, tokenizer) == trace


def test_parent_indices_and_depths(tokenizer):
    trace = next(t for t in traces(10) if t.num_threads > 3)
    threads = render_tree(trace, tokenizer)
    assert threads[0].parent == -1 and threads[0].depth == 0
    for t in threads[1:]:
        assert threads[t.parent].depth == t.depth - 1
    assert threads[0].num_children == len([t for t in threads if t.parent == 0])


def test_parse_spawn_and_join(tokenizer, pid):
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    gen = enc("try 1+2=3 [3] no\n<spawn>node 0,0 27:[1,2] []\n<sep>node 0,1 27:[3] []\n</spawn>")
    msgs = pid.parse_spawn(gen)
    assert [tokenizer.decode(m) for m in msgs] == ["node 0,0 27:[1,2] []\n", "node 0,1 27:[3] []\n"]
    assert pid.parse_join(enc("fail 0,0\n<join>1+2=3</join>")) == enc("1+2=3")
    assert pid.parse_join(enc("<join></join>")) == []
    for bad in ["<spawn></spawn>", "<spawn><sep></spawn>", "node 0 </spawn>", "<spawn>a<join>b</spawn>",
                "<spawn>a"]:
        with pytest.raises(ProtocolError):
            pid.parse_spawn(enc(bad))
    for bad in ["<join>a", "a</join>", "<join>a<sep>b</join>"]:
        with pytest.raises(ProtocolError):
            pid.parse_join(enc(bad))


def test_parse_events(tokenizer, pid):
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    events = pid.parse_events(enc("a\n<spawn>x<sep>y</spawn><result>r<sep></result>b\n<eos>"))
    assert [e.kind for e in events] == ["text", "spawn", "results", "text", "eos"]
    assert [list(m) for m in events[2].messages] == [enc("r"), []]
    for bad in ["<spawn>x", "a</spawn>", "<result>x<spawn></result>", "<join>a<sep>b</join>"]:
        with pytest.raises(ProtocolError):
            pid.parse_events(enc(bad))


def test_results_block(tokenizer, pid):
    block = pid.results_block([[5, 6], [], [7]])
    assert block == [pid.result, 5, 6, pid.sep, pid.sep, 7, pid.result_end]
    assert tokenizer.decode(pid.results_block([])) == RESULT + RESULT_END


def test_stop_ids_and_constants(pid):
    assert set(pid.stop_ids) == {pid.spawn_end, pid.join_end, pid.eos}
    assert len(set(SPECIAL_TOKENS)) == len(SPECIAL_TOKENS) and EOS in SPECIAL_TOKENS


def test_tokenizer_without_protocol_tokens_is_rejected():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, "<unk>")),
                                    unk_token="<unk>")
    with pytest.raises(ProtocolError, match="lacks the protocol token"):
        ProtocolIds.from_tokenizer(plain)


def test_hand_built_tree_validates():
    child = ThreadTrace("m\n", [Segment.text_("x\n"), Segment.join_("")])
    root = ThreadTrace("p\n", [Segment.spawn_(["m\n"]), Segment.results_([""])], [[child]])
    root.validate()
    bad = ThreadTrace("p\n", [Segment.spawn_(["m\n", "n\n"])], [[child]])
    with pytest.raises(ValueError):
        bad.validate()
