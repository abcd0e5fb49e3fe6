"""Traces rendered to token ids once per data set, cached beside the data as memory-mapped arrays.

Rendering every thread of 20k N=4 traces to ids took ~45 s in one process at every SFT start. The
cache renders a `<split>/<solver>.jsonl` file once, on all cores, into
`<split>/.tokens/<solver>-<fingerprint>/` (one flat `.npy` per field, read with `mmap_mode="r"`), so
every later start, every DDP rank and every process on the machine shares the same pages. The
fingerprint hashes the trace file's bytes, the tokenizer (its full JSON) and `CACHE_VERSION`: a
changed tokenizer or changed traces get a new cache, and the stale one is removed when it is replaced.

Concurrent starts (DDP ranks) are safe: local rank 0 builds into a temporary directory and renames it
into place; other local ranks wait for it.

    >>> # arrays = load_or_build("data/countdown_n4/train/apr.jsonl", tokenizer)
    >>> # ids, labels = arrays.thread(0)        # views into the memory map: (T,) int32 each
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_VERSION = 1  # bump when rendering or the layout changes
IGNORE = -100  # label of tokens not trained on (HF's ignore_index)
FIELDS = ("ids", "labels", "offsets", "num_prompt", "thread_record", "record_solved")
WAIT_S = 1800.0  # how long a non-zero local rank waits for rank 0's cache


@dataclass
class ThreadArrays:
    """All threads of one trace file, flat: thread i is `ids[offsets[i]:offsets[i + 1]]`."""

    ids: np.ndarray  # (N,) int32 token ids of every thread, concatenated (depth first per record)
    labels: np.ndarray  # (N,) int32: ids where generated, IGNORE elsewhere and on each thread's first token
    offsets: np.ndarray  # (threads + 1,) int64
    num_prompt: np.ndarray  # (threads,) int32: tokens before a thread's first generated one
    thread_record: np.ndarray  # (threads,) int32: index of the trace record a thread belongs to
    record_solved: np.ndarray  # (records,) bool: whether that record's search found the answer
    path: Path | None = None  # the cache directory

    @property
    def num_threads(self) -> int:
        return len(self.offsets) - 1

    def thread(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.labels[a:b]


def thread_arrays(ids: list[int], mask: list[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, labels, tokens before the first generated one) of one rendered thread; labels are the ids
    where generated and IGNORE elsewhere, unshifted (`LlamaForCausalLM` shifts them)."""
    ids_a = np.asarray(ids, dtype=np.int32)  # (T,)
    mask_a = np.asarray(mask, dtype=bool)  # (T,)
    labels = np.where(mask_a, ids_a, IGNORE).astype(np.int32)  # (T,)
    labels[0] = IGNORE  # a sequence's first token is never a target (packed rows rely on it)
    return ids_a, labels, int(np.argmax(mask_a)) if mask_a.any() else len(ids_a)


def fingerprint(trace_file: Path, tokenizer) -> str:
    """Hash of the trace file's bytes, the tokenizer's JSON and `CACHE_VERSION` (hex, 16 chars)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v{CACHE_VERSION}".encode())
    h.update(tokenizer_json(tokenizer).encode())
    with open(trace_file, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_json(tokenizer) -> str:
    """The tokenizer as canonical JSON (vocabulary, pre-tokenizer, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"tokenizer: {type(tokenizer).__name__}; accepted: a fast (Rust-backed) HF tokenizer")
    return json.dumps(json.loads(backend.to_str()), sort_keys=True)


def cache_dir(trace_file: Path, tokenizer) -> Path:
    trace_file = Path(trace_file)
    return trace_file.parent / ".tokens" / f"{trace_file.stem}-{known_fingerprint(trace_file, tokenizer)}"


def known_fingerprint(trace_file: Path, tokenizer) -> str:
    """`fingerprint`, remembered in `.tokens/<stem>.stamp.json` for the trace file's (size, mtime_ns, inode)
    and the tokenizer: hashing 88 MB of 20k N=4 traces costs ~0.3 s of every start. Any write to the file
    changes its mtime, so a changed file is hashed again."""
    st = trace_file.stat()
    key = {"stat": [st.st_size, st.st_mtime_ns, st.st_ino],
           "tokenizer": hashlib.blake2b(tokenizer_json(tokenizer).encode(), digest_size=8).hexdigest()}
    stamp = trace_file.parent / ".tokens" / f"{trace_file.stem}.stamp.json"
    try:
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in key} == key and isinstance(saved.get("fingerprint"), str):
            return saved["fingerprint"]
    except (OSError, ValueError):
        pass
    fp = fingerprint(trace_file, tokenizer)
    try:  # best effort: a read-only data directory just hashes every time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**key, "fingerprint": fp}))
        os.replace(tmp, stamp)
    except OSError:
        pass
    return fp


def load_or_build(trace_file: str | Path, tokenizer, num_workers: int = 0) -> ThreadArrays:
    """The memory-mapped arrays of `trace_file`, rendering them first if no valid cache exists.

    `num_workers`: rendering processes (0: every CPU this process may use)."""
    trace_file = Path(trace_file)
    out = cache_dir(trace_file, tokenizer)
    if not (out / "meta.json").is_file():
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            build(trace_file, tokenizer, out, num_workers)
        else:
            _wait_for(out)
    return open_cache(out)


def open_cache(out: Path) -> ThreadArrays:
    # plain ndarray views of the maps (no copy): slicing a np.memmap costs ~10x more per thread
    arrays = {name: np.asarray(np.load(out / f"{name}.npy", mmap_mode="r")) for name in FIELDS}
    return ThreadArrays(**arrays, path=out)


def build(trace_file: Path, tokenizer, out: Path, num_workers: int = 0) -> None:
    """Render `trace_file` on `num_workers` processes and write the arrays atomically to `out`."""
    if num_workers <= 0:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranges = _byte_ranges(trace_file, num_workers * 4)
    if num_workers <= 1 or len(ranges) <= 1:
        parts = [_render_range(trace_file, tokenizer, a, b) for a, b in ranges]
    else:
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(min(num_workers, len(ranges)), _init_worker, (str(trace_file), tokenizer)) as pool:
            parts = pool.starmap(_render_in_worker, ranges)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write(tmp, parts)
    for stale in out.parent.glob(f"{trace_file.stem}-*"):  # caches of older traces or tokenizers
        if stale != out:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race: its cache is the same
        shutil.rmtree(tmp, ignore_errors=True)


def _write(tmp: Path, parts: list[dict]) -> None:
    lengths = np.concatenate([p["lengths"] for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)  # (threads + 1,)
    np.cumsum(lengths, out=offsets[1:])
    record_base = np.cumsum([0] + [len(p["record_solved"]) for p in parts])
    arrays = {
        "ids": _cat([p["ids"] for p in parts], np.int32),
        "labels": _cat([p["labels"] for p in parts], np.int32),
        "offsets": offsets,
        "num_prompt": _cat([p["num_prompt"] for p in parts], np.int32),
        "thread_record": _cat([p["thread_record"] + base for p, base in zip(parts, record_base)], np.int32),
        "record_solved": _cat([p["record_solved"] for p in parts], bool),
    }
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a)
    meta = {"version": CACHE_VERSION, "num_threads": len(lengths), "num_tokens": int(offsets[-1]),
            "num_records": len(arrays["record_solved"])}
    (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks the cache complete


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _byte_ranges(path: Path, num_chunks: int) -> list[tuple[int, int]]:
    """About `num_chunks` (start, end) byte ranges of `path` that start and end at line boundaries."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, num_chunks):
            f.seek(max(size * k // num_chunks, cuts[-1]))
            f.readline()  # to the end of the line the cut fell in
            pos = f.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


_WORKER: dict = {}


def _init_worker(path: str, tokenizer) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(path=path, tokenizer=tokenizer)


def _render_in_worker(start: int, end: int) -> dict:
    return _render_range(Path(_WORKER["path"]), _WORKER["tokenizer"], start, end)


def _render_range(path: Path, tokenizer, start: int, end: int) -> dict:
    """Render the records in bytes [start, end) of `path`: flat arrays, record indices local to the range."""
    from apr.protocol import render_tree
    from apr.search.trace import ThreadTrace

    with open(path, "rb") as f:
        f.seek(start)
        lines = f.read(end - start).decode().splitlines()
    ids, labels, lengths, num_prompt, thread_record, solved = [], [], [], [], [], []
    for r, line in enumerate(x for x in lines if x.strip()):
        d = json.loads(line)
        solved.append(bool(d["solved"]))
        for t in render_tree(ThreadTrace.from_dict(d["trace"]), tokenizer):
            a, lab, n_prompt = thread_arrays(t.ids, t.mask)
            ids.append(a)
            labels.append(lab)
            lengths.append(len(a))
            num_prompt.append(n_prompt)
            thread_record.append(r)
    return {"ids": _cat(ids, np.int32), "labels": _cat(labels, np.int32), "lengths": np.asarray(lengths, np.int64),
            "num_prompt": np.asarray(num_prompt, np.int32), "thread_record": np.asarray(thread_record, np.int32),
            "record_solved": np.asarray(solved, bool)}


def _wait_for(out: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not (out / "meta.json").is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the token cache {out} did not appear within {WAIT_S:.0f} s "
                               "(local rank 0 builds it; did it fail?)")
        time.sleep(0.5)
