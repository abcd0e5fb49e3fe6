"""Token-level protocol: thread trees <-> token ids with generated-token masks; event parsing.

    >>> # ids = ProtocolIds.from_tokenizer(tok); threads = render_tree(trace, tok)
    >>> # threads[0].ids, threads[0].mask  -> training sequence of the root, 1 = generated
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apr.protocol import render
from apr.search.trace import JOIN as JOIN_KIND
from apr.search.trace import RESULTS as RESULTS_KIND
from apr.search.trace import SPAWN as SPAWN_KIND
from apr.search.trace import TEXT as TEXT_KIND
from apr.search.trace import Segment, ThreadTrace


class ProtocolError(ValueError):
    """Token ids that break the spawn/join grammar (the runtime records it, never crashes)."""


@dataclass(frozen=True)
class Event:
    """A parsed piece of a thread: `text` (ids), `spawn`/`results` (messages), `join`, `eos`."""

    kind: str
    ids: tuple[int, ...] = ()
    messages: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class ProtocolIds:
    """The special-token ids of one tokenizer, and the grammar over ids."""

    pad: int
    unk: int
    bos: int
    eos: int
    spawn: int
    spawn_end: int
    sep: int
    join: int
    join_end: int
    result: int
    result_end: int

    @staticmethod
    def from_tokenizer(tokenizer) -> ProtocolIds:
        ids = {}
        for name, tok in zip(_FIELDS, render.SPECIAL_TOKENS):
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is None or tid == tokenizer.unk_token_id and tok != render.UNK:
                raise ProtocolError(
                    f"tokenizer lacks the protocol token {tok!r}; build it with apr.tokenizer.build_tokenizer "
                    f"or add {', '.join(render.SPECIAL_TOKENS)} as special tokens")
            ids[name] = tid
        return ProtocolIds(**ids)

    @property
    def markup(self) -> frozenset[int]:
        return frozenset((self.spawn, self.spawn_end, self.sep, self.join, self.join_end, self.result,
                          self.result_end))

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens after which the runtime takes over a thread: spawn, join or end."""
        return (self.spawn_end, self.join_end, self.eos)

    def own_spans(self, ids: list[int], mask: list[int]) -> list[list[int]]:
        """The runs of ids a thread generated itself (mask 1), with its spawn blocks cut out: what the
        thread says in its own voice. Runtime-written ids (joined results) and the messages it addressed
        to children both split spans and never appear in them.

        >>> p = ProtocolIds(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
        >>> p.own_spans([20, 4, 21, 5, 9, 22, 10, 23, 3], [1, 1, 1, 1, 0, 0, 0, 1, 1])
        [[20], [23, 3]]
        """
        spans: list[list[int]] = [[]]
        in_spawn = False
        for t, m in zip(ids, mask):
            if not m or t == self.spawn or in_spawn:
                in_spawn = bool(m) and (t == self.spawn or in_spawn) and t != self.spawn_end
                if spans[-1]:
                    spans.append([])
                continue
            spans[-1].append(t)
        return [s for s in spans if s]

    def results_block(self, messages: list[list[int]]) -> list[int]:
        """What the runtime writes into a parent after its children joined."""
        out = [self.result]
        for i, m in enumerate(messages):
            if i:
                out.append(self.sep)
            out.extend(m)
        out.append(self.result_end)
        return out

    def parse_spawn(self, generated: list[int]) -> list[list[int]]:
        """The messages of the spawn that `generated` ends with (`... <spawn> m1 <sep> m2 </spawn>`)."""
        body = self._closing_block(generated, self.spawn, self.spawn_end, "spawn")
        if any(t in self.markup and t != self.sep for t in body):
            raise ProtocolError("markup inside a spawn message")
        messages = _split(body, self.sep)
        if not body or not any(messages):
            raise ProtocolError("empty spawn: no child messages")
        return messages

    def parse_join(self, generated: list[int]) -> list[int]:
        """The message of the join that `generated` ends with (`... <join> msg </join>`)."""
        body = self._closing_block(generated, self.join, self.join_end, "join")
        if any(t in self.markup for t in body):
            raise ProtocolError("markup inside a join message")
        return body

    @staticmethod
    def _closing_block(generated: list[int], open_id: int, close_id: int, what: str) -> list[int]:
        """The ids between the last `open_id` and the final `close_id` that `generated` ends with."""
        if not generated or generated[-1] != close_id:
            raise ProtocolError(f"unterminated {what}: the thread did not end with </{what}>")
        try:
            start = len(generated) - 1 - generated[::-1].index(open_id)
        except ValueError:
            raise ProtocolError(f"</{what}> without <{what}>") from None
        return generated[start + 1:-1]

    def parse_events(self, ids: list[int]) -> list[Event]:
        """Split a thread's ids (without its prompt) into events; ProtocolError if malformed."""
        opening = {self.spawn: (SPAWN_KIND, self.spawn_end), self.result: (RESULTS_KIND, self.result_end),
                   self.join: (JOIN_KIND, self.join_end)}
        events: list[Event] = []
        text: list[int] = []
        i = 0
        while i < len(ids):
            t = ids[i]
            if t in opening:
                kind, closer = opening[t]
                try:
                    end = ids.index(closer, i + 1)
                except ValueError:
                    raise ProtocolError(f"unterminated {kind} at token {i}") from None
                body = ids[i + 1:end]
                if any(b in self.markup and b != self.sep for b in body):
                    raise ProtocolError(f"markup inside {kind} at token {i}")
                if kind == JOIN_KIND and self.sep in body:
                    raise ProtocolError(f"<sep> inside join at token {i}")
                if text:
                    events.append(Event(TEXT_KIND, tuple(text)))
                    text = []
                events.append(Event(kind, messages=tuple(tuple(m) for m in _split(body, self.sep))))
                i = end + 1
                continue
            if t in self.markup:
                raise ProtocolError(f"unexpected {t} at token {i}")
            if t == self.eos:
                if text:
                    events.append(Event(TEXT_KIND, tuple(text)))
                    text = []
                events.append(Event("eos"))
            else:
                text.append(t)
            i += 1
        if text:
            events.append(Event(TEXT_KIND, tuple(text)))
        return events


_FIELDS = ("pad", "unk", "bos", "eos", "spawn", "spawn_end", "sep", "join", "join_end", "result", "result_end")


def _split(ids: list[int], sep: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for t in ids:
        if t == sep:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


@dataclass
class RenderedThread:
    """One training sequence: a thread's ids, its generated-token mask, and where it sits."""

    ids: list[int]
    mask: list[int]  # 1 = generated by the thread (trained on), 0 = prompt or runtime-written
    parent: int  # index of the parent thread in the rendered list, -1 for the root
    depth: int
    num_children: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def num_generated(self) -> int:
        return sum(self.mask)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def render_tree(root: ThreadTrace, tokenizer) -> list[RenderedThread]:
    """Every thread of the tree as token ids + mask, depth first (parents before children)."""
    out: list[RenderedThread] = []

    def visit(thread: ThreadTrace, parent: int, depth: int) -> None:
        ids: list[int] = []
        mask: list[int] = []
        for text, generated in render.thread_pieces(thread, is_root=parent < 0):
            piece = _encode(tokenizer, text)
            ids += piece
            mask += [int(generated)] * len(piece)
        index = len(out)
        out.append(RenderedThread(ids, mask, parent, depth, sum(len(g) for g in thread.children)))
        for group in thread.children:
            for child in group:
                visit(child, index, depth + 1)

    visit(root, -1, 0)
    return out


def decode_tree(threads: list[RenderedThread], tokenizer) -> ThreadTrace:
    """Rebuild the thread tree from rendered threads (inverse of `render_tree`)."""
    pid = ProtocolIds.from_tokenizer(tokenizer)
    decoded: list[ThreadTrace] = []
    for t in threads:
        n_prompt = t.mask.index(1) if 1 in t.mask else len(t.ids)
        if not t.ids or t.ids[0] != pid.bos:
            raise ProtocolError("a thread must start with <bos>")
        prompt = tokenizer.decode(t.ids[1:n_prompt], skip_special_tokens=False)
        thread = ThreadTrace(prompt)
        for ev in pid.parse_events(t.ids[n_prompt:]):
            msgs = [tokenizer.decode(list(m), skip_special_tokens=False) for m in ev.messages]
            if ev.kind == TEXT_KIND:
                thread.append_text(tokenizer.decode(list(ev.ids), skip_special_tokens=False))
            elif ev.kind == SPAWN_KIND:
                thread.segments.append(Segment.spawn_(msgs))
                thread.children.append([])
            elif ev.kind == RESULTS_KIND:
                thread.segments.append(Segment.results_(msgs))
            elif ev.kind == JOIN_KIND:
                thread.segments.append(Segment.join_(msgs[0]))
        decoded.append(thread)
        if t.parent >= 0:
            parent = decoded[t.parent]
            group = next(g for g, s in zip(parent.children, parent.spawns) if len(g) < len(s.messages))
            group.append(thread)
    return decoded[0]
