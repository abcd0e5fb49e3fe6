"""The APR decoding runtime: spawn -> children as batched engine requests, join -> parent resumes.

The runtime drives any `apr.engine.base.Engine`. Every thread of every problem in flight is a
request in the same engine, so children of all problems share batched forward passes. It knows
token ids and the protocol's special tokens, nothing about the task.

    >>> # rt = Runtime(engine, ProtocolIds.from_tokenizer(tok), RuntimeConfig(max_thread_tokens=1024))
    >>> # trees = rt.run([prompt_ids_1, prompt_ids_2], num_samples=1)
    >>> # trees[0].metrics()["sequential_tokens"]
"""

from __future__ import annotations

import hashlib
import time

from apr.config import check
from apr.engine.base import Completion, FinishReason, Request, SamplingParams
from apr.protocol import ProtocolError, ProtocolIds
from apr.runtime.config import RuntimeConfig
from apr.runtime.thread import Finish, Status, Thread, ThreadTree


class Runtime:
    """Runs thread trees to completion on an engine, enforcing `RuntimeConfig`'s limits."""

    def __init__(self, engine, protocol: ProtocolIds, cfg: RuntimeConfig | None = None,
                 child_prefix_ids: list[int] | tuple[int, ...] = ()) -> None:
        self.engine = engine
        self.ids = protocol  # the protocol's token ids (spawn / join markers, stop ids)
        self.cfg = cfg or RuntimeConfig()
        self.child_prefix_ids = list(child_prefix_ids)  # e.g. a condition line before every child message
        # request id -> (tree, thread, tokens reserved, whether the budget rather than the window set them)
        self._inflight: dict[str, tuple[ThreadTree, Thread, int, bool]] = {}

    # ---- public -------------------------------------------------------------------------------
    def run(self, prompts: list[list[int]], num_samples: int = 1) -> list[ThreadTree]:
        """One tree per prompt and sample (prompt-major order), each run until its root finishes."""
        check(num_samples >= 1, "num_samples", num_samples, "a positive integer")
        for i, p in enumerate(prompts):
            check(0 < len(p) < self.cfg.max_thread_tokens, "runtime.max_thread_tokens", self.cfg.max_thread_tokens,
                  f"a window longer than every prompt (prompt {i} has {len(p)} tokens)")
        trees: list[ThreadTree] = []
        for i, p in enumerate(prompts):
            group = [ThreadTree(Thread(0, list(p)), i, s) for s in range(num_samples)]
            trees += group
            self._submit_roots(group, list(p))
        while not all(t.is_done for t in trees):
            if not self.engine.has_work():  # cannot happen unless a backend loses a request
                for tree in trees:
                    self._abandon(tree, "engine has no work left but the tree is unfinished")
                break
            for completion in self.engine.step():
                self._on_completion(completion)
            self._check_timeouts(trees)
        return trees

    # ---- submission -------------------------------------------------------------------------------
    def _params(self, tree: ThreadTree, thread: Thread, max_new: int) -> SamplingParams:
        key = f"{self.cfg.seed}|{tree.problem_index}|{tree.sample_index}|{thread.index}|{thread.num_requests}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") >> 1
        return SamplingParams(self.cfg.temperature, self.cfg.top_p, self.cfg.top_k, max_new, self.ids.stop_ids, seed)

    def _budget_left(self, tree: ThreadTree) -> int | None:
        if self.cfg.max_total_tokens is None:
            return None
        used = sum(t.num_generated for t in tree.threads()) + tree.num_reserved_tokens
        return self.cfg.max_total_tokens - used

    def _allowance(self, tree: ThreadTree, thread: Thread, share: int = 1) -> tuple[int, bool]:
        """(max new tokens, whether the budget rather than the window is the binding limit)."""
        window = self.cfg.max_thread_tokens - thread.num_tokens
        budget = self._budget_left(tree)
        if budget is not None and budget // share < window:
            return budget // share, True
        return window, False

    def _submit(self, tree: ThreadTree, thread: Thread, prompt_ids: list[int], max_new: int,
                resume: bool, by_budget: bool = False) -> None:
        thread.num_requests += 1
        rid = f"p{tree.problem_index}.s{tree.sample_index}.t{thread.index}.r{thread.num_requests}"
        request = Request(rid, prompt_ids, self._params(tree, thread, max_new),
                          resume_id=thread.request_id if resume else None, keep_cache=True)
        thread.request_id = rid
        thread.status = Status.RUNNING
        self._reserve(tree, rid, thread, max_new, by_budget)
        self.engine.submit(request)

    def _reserve(self, tree: ThreadTree, rid: str, thread: Thread, max_new: int, by_budget: bool) -> None:
        self._inflight[rid] = (tree, thread, max_new, by_budget)
        tree.num_reserved_tokens += max_new

    def _submit_roots(self, group: list[ThreadTree], prompt: list[int]) -> None:
        """G samples of one prompt: one engine request with n=G, so the prompt is prefilled once."""
        first = group[0]
        max_new, by_budget = self._allowance(first, first.root)
        if max_new < 1:
            for tree in group:
                self._finish(tree, tree.root, Finish.BUDGET)
            return
        rid = f"p{first.problem_index}"
        request = Request(rid, prompt, self._params(first, first.root, max_new), keep_cache=True, n=len(group))
        for tree, sample_id in zip(group, request.sample_ids()):
            tree.root.num_requests = 1
            tree.root.request_id = sample_id
            tree.root.status = Status.RUNNING
            self._reserve(tree, sample_id, tree.root, max_new, by_budget)
        self.engine.submit(request)

    # ---- completions ------------------------------------------------------------------------------
    def _on_completion(self, c: Completion) -> None:
        tree, thread, reserved, by_budget = self._inflight.pop(c.request_id)
        tree.num_reserved_tokens -= reserved
        thread.ids += c.output_ids
        thread.mask += [1] * len(c.output_ids)
        thread.logprobs += list(c.logprobs)
        thread.num_prefill_tokens += c.num_prompt_tokens
        thread.num_cached_tokens += c.num_cached_tokens
        if c.finish_reason == FinishReason.ABORT:
            reason = Finish.TIMEOUT if tree.is_timed_out else Finish.ABORT
            self._finish(tree, thread, reason)
        elif c.finish_reason == FinishReason.LENGTH or not c.output_ids:
            # the budget only when it set this request's limit and the request used all of it; anything
            # else that stops a thread short is a window: ours, or the engine's own (engine.max_seq_len)
            spent = by_budget and len(c.output_ids) >= reserved and thread.num_tokens < self.cfg.max_thread_tokens
            self._finish(tree, thread, Finish.BUDGET if spent else Finish.WINDOW)
        elif c.output_ids[-1] == self.ids.spawn_end:
            self._spawn(tree, thread)
        elif c.output_ids[-1] == self.ids.join_end:
            try:
                self._finish(tree, thread, Finish.JOIN, message=self.ids.parse_join(thread.ids))
            except ProtocolError as e:
                self._finish(tree, thread, Finish.MALFORMED, error=str(e))
        else:  # eos (or another stop id): a root's normal end; a child that ends so returns nothing
            self._finish(tree, thread, Finish.EOS)

    def _spawn(self, tree: ThreadTree, thread: Thread) -> None:
        try:
            messages = self.ids.parse_spawn(thread.ids)
        except ProtocolError as e:
            return self._finish(tree, thread, Finish.MALFORMED, error=str(e))
        if thread.depth >= self.cfg.max_depth:
            return self._finish(tree, thread, Finish.MALFORMED,
                                error=f"depth exceeded: a thread at depth {thread.depth} spawned (max_depth={self.cfg.max_depth})")
        if len(messages) > self.cfg.max_children:
            return self._finish(tree, thread, Finish.MALFORMED,
                                error=f"too many children: {len(messages)} > max_children={self.cfg.max_children}")
        thread.status = Status.SUSPENDED
        group = []
        for m in messages:
            child = Thread(tree.num_threads, [self.ids.bos] + self.child_prefix_ids + m, thread, thread.depth + 1)
            tree.num_threads += 1
            group.append(child)
        thread.children.append(group)
        # Allowances are computed before any child is submitted, so siblings share the budget evenly.
        allowances = [self._allowance(tree, c, share=len(group)) for c in group]
        for child, (max_new, by_budget) in zip(group, allowances):
            if max_new < 1:
                self._finish(tree, child, Finish.BUDGET if by_budget else Finish.WINDOW, notify=False)
            else:
                self._submit(tree, child, child.prompt_ids, max_new, resume=False, by_budget=by_budget)
        self._maybe_resume(tree, thread)

    def _finish(self, tree: ThreadTree, thread: Thread, reason: str, message: list[int] | None = None,
                error: str | None = None, notify: bool = True) -> None:
        thread.status = Status.FINISHED
        thread.finish_reason = reason
        thread.error = error
        thread.join_message = message
        thread.finished_s = time.perf_counter()
        if thread.request_id is not None:
            self.engine.release(thread.request_id)
        if thread.parent is None:
            tree.finished_s = thread.finished_s
        elif notify:
            self._maybe_resume(tree, thread.parent)

    def _maybe_resume(self, tree: ThreadTree, parent: Thread) -> None:
        """Once every child of the parent's last spawn finished: write the results, resume it."""
        group = parent.children[-1]
        if parent.status != Status.SUSPENDED or any(c.status != Status.FINISHED for c in group):
            return
        if tree.is_timed_out:
            return self._finish(tree, parent, Finish.TIMEOUT)
        block = self.ids.results_block([c.join_message or [] for c in group])
        parent.ids += block
        parent.mask += [0] * len(block)
        parent.logprobs += [0.0] * len(block)
        max_new, by_budget = self._allowance(tree, parent)
        if max_new < 1:
            return self._finish(tree, parent, Finish.BUDGET if by_budget else Finish.WINDOW)
        self._submit(tree, parent, block, max_new, resume=True, by_budget=by_budget)

    # ---- limits -----------------------------------------------------------------------------------
    def _check_timeouts(self, trees: list[ThreadTree]) -> None:
        if self.cfg.timeout_s is None:
            return
        now = time.perf_counter()
        for tree in trees:
            if not tree.is_done and not tree.is_timed_out and now - tree.started_s > self.cfg.timeout_s:
                tree.is_timed_out = True
                for rid, (t, *_) in list(self._inflight.items()):
                    if t is tree:
                        self.engine.abort(rid)

    def _abandon(self, tree: ThreadTree, why: str) -> None:
        for thread in tree.threads():
            if thread.status != Status.FINISHED:
                thread.status = Status.FINISHED
                thread.finish_reason = Finish.ABORT
                thread.error = why
        tree.finished_s = time.perf_counter()
