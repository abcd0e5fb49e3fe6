"""The spawn/join protocol: the ONE place that knows its special tokens.

A thread's token sequence is `<bos> prompt` (context, not generated) followed by what the thread
generated, where a spawn reads `<spawn>m1<sep>m2</spawn>`, a child ends with `<join>msg</join>`,
a root ends with `<eos>`, and after a spawn the runtime writes `<result>r1<sep>r2</result>`
(never trained on). Every other module imports these constants and helpers from here.

    >>> from apr.search.trace import Segment, ThreadTrace
    >>> t = ThreadTrace("p\\n", [Segment.text_("a\\n"), Segment.spawn_(["x\\n", "y\\n"]),
    ...                          Segment.results_(["", "r"]), Segment.text_("b\\n")], [[], []])
    >>> "".join(text for text, _ in thread_pieces(t, is_root=True))
    '<bos>p\\na\\n<spawn>x\\n<sep>y\\n</spawn><result><sep>r</result>b\\n<eos>'
"""

from apr.protocol.render import (
    BOS,
    EOS,
    JOIN,
    JOIN_END,
    PAD,
    RESULT,
    RESULT_END,
    SEP,
    SPAWN,
    SPAWN_END,
    SPECIAL_TOKENS,
    UNK,
    thread_pieces,
    thread_text,
)
from apr.protocol.tokens import (
    Event,
    ProtocolError,
    ProtocolIds,
    RenderedThread,
    decode_tree,
    render_tree,
)

__all__ = [
    "BOS", "EOS", "JOIN", "JOIN_END", "PAD", "RESULT", "RESULT_END", "SEP", "SPAWN", "SPAWN_END",
    "SPECIAL_TOKENS", "UNK", "Event", "ProtocolError", "ProtocolIds", "RenderedThread", "decode_tree",
    "render_tree", "thread_pieces", "thread_text",
]
