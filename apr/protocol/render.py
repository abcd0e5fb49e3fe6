"""Special tokens and the text rendering of a thread (owns the spellings)."""

from __future__ import annotations

from apr.search.trace import JOIN as JOIN_KIND
from apr.search.trace import RESULTS as RESULTS_KIND
from apr.search.trace import SPAWN as SPAWN_KIND
from apr.search.trace import Segment, ThreadTrace

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPAWN, SPAWN_END = "<spawn>", "</spawn>"
SEP = "<sep>"
JOIN, JOIN_END = "<join>", "</join>"
RESULT, RESULT_END = "<result>", "</result>"
# Order fixes the ids: pad=0, unk=1, bos=2, eos=3, ... (the tokenizer puts them first).
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SPAWN, SPAWN_END, SEP, JOIN, JOIN_END, RESULT, RESULT_END)


def segment_text(seg: Segment) -> str:
    if seg.kind == SPAWN_KIND:
        return SPAWN + SEP.join(seg.messages) + SPAWN_END
    if seg.kind == RESULTS_KIND:
        return RESULT + SEP.join(seg.messages) + RESULT_END
    if seg.kind == JOIN_KIND:
        return JOIN + seg.messages[0] + JOIN_END
    return seg.text


def thread_pieces(thread: ThreadTrace, is_root: bool) -> list[tuple[str, bool]]:
    """(text, is_generated) pieces of one thread, markup included, in order."""
    pieces = [(BOS + thread.prompt, False)]
    pieces += [(segment_text(s), s.is_generated) for s in thread.segments]
    if is_root:
        pieces.append((EOS, True))
    return pieces


def thread_text(thread: ThreadTrace, is_root: bool = True) -> str:
    """The whole thread as one string with its markup (what the tokenizer sees)."""
    return "".join(text for text, _ in thread_pieces(thread, is_root))
