"""Checkpoint integrity: a manifest of every file's size and hash, written at save time, and checks
that name the damaged file and what is wrong with it.

One small place that every checkpoint writer and loader calls (SFT, RL, solve, eval):

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> _ = write_manifest(d)
    >>> find_damage(d) is None
    True
    >>> _ = (d / "config.json").write_text("{} ")
    >>> find_damage(d)
    'config.json: 3 bytes, but 2 were written (truncated or overwritten)'

A checkpoint without a manifest (written by another tool, or before manifests existed) gets the
structural checks only: JSON files parse, safetensors headers parse and match the file size.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from apr.config import ConfigError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: str | Path) -> Path:
    """Record the size and sha256 of every file under `directory` (call it last, before the rename)."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(directory).as_posix()] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    out = directory / MANIFEST
    out.write_text(json.dumps({"files": files}, indent=1))
    return out


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest's `{file: {"size", "sha256"}}`, None without one; raises ValueError if it is unreadable."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["files"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{MANIFEST}: unreadable ({type(e).__name__})") from None


def find_damage(directory: str | Path, verify_hashes: bool = False) -> str | None:
    """What is wrong with the checkpoint in `directory` ("<file>: <problem>"), or None if it looks intact.

    With a manifest: every file exists with its recorded size (and, with `verify_hashes`, its hash).
    Always: JSON files parse and safetensors files are complete."""
    directory = Path(directory)
    if not directory.is_dir():
        return "missing (no such directory)"
    try:
        manifest = read_manifest(directory)
    except ValueError as e:
        return str(e)
    for name, entry in (manifest or {}).items():
        p = directory / name
        if not p.is_file():
            return f"{name}: missing (it was written at save time)"
        size = p.stat().st_size
        if size != entry["size"]:
            return f"{name}: {size} bytes, but {entry['size']} were written (truncated or overwritten)"
        if verify_hashes and file_sha256(p) != entry["sha256"]:
            return f"{name}: contents differ from what was written (sha256 mismatch: corrupted)"
    for p in sorted(directory.glob("*.json")):
        try:
            json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            return f"{p.name}: not valid JSON (truncated or corrupted)"
    for p in sorted(directory.glob("*.safetensors")):
        problem = _safetensors_problem(p)
        if problem:
            return f"{p.name}: {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors it describes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors file (truncated)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes does not fit in {size} bytes (truncated or corrupted)"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "header is not valid JSON (corrupted)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "header does not describe tensors (corrupted)"
    if 8 + n + end != size:
        return f"{size} bytes, but its header describes {8 + n + end} (truncated or corrupted)"
    return None


def check_checkpoint(directory: str | Path, field: str = "checkpoint", verify_hashes: bool = True) -> None:
    """Raise `ConfigError` naming `field`, the damaged file and the problem (see `find_damage`). Loaders
    verify the manifest's hashes: a file damaged in place (same size) is caught before it is used."""
    problem = find_damage(directory, verify_hashes)
    if problem:
        raise ConfigError(f"{field}: {str(directory)!r} is damaged: {problem}; accepted: an intact checkpoint "
                          "(copy it again, or use an earlier one)")


def check_window(directory: str | Path, window: int, field: str) -> None:
    """A thread window of `window` tokens fits the checkpoint's positions (config.json's
    max_position_embeddings), as SFT checks data.max_seq_len; else a ConfigError naming `field`."""
    try:
        positions = json.loads((Path(directory) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return  # a missing or damaged config is reported by check_checkpoint
    if isinstance(positions, int) and window > positions:
        raise ConfigError(f"{field}: got {window}; accepted: at most {positions}, the model's max_position_embeddings "
                          f"({str(directory)!r}): positions beyond it were never trained")


def nonfinite_tensor(model) -> str | None:
    """The name of the first parameter or buffer of `model` holding NaN or inf, None if all are finite."""
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite_weights(model, directory: str | Path, field: str = "checkpoint") -> None:
    """Raise `ConfigError` naming `field` and the tensor if the loaded weights hold NaN or inf."""
    name = nonfinite_tensor(model)
    if name is not None:
        raise ConfigError(f"{field}: {str(directory)!r} holds non-finite weights ({name} has NaN or inf); "
                          "accepted: a checkpoint with finite weights (use an earlier one)")


def weights_hash(directory: str | Path) -> str:
    """A short hash of the checkpoint's weight files (read in full: a retrained checkpoint differs)."""
    h = hashlib.sha256()
    directory = Path(directory)
    for p in sorted([*directory.glob("*.safetensors"), *directory.glob("*.bin")]):
        h.update(f"{p.name}:{file_sha256(p)}\n".encode())
    return h.hexdigest()[:16]


def files_fingerprint(paths: list[str | Path], sample_bytes: int = 4 << 20) -> str:
    """A cheap fingerprint of data files: each file's name, size, and first and last `sample_bytes`.

    Regenerated data differs in size or content almost surely; a multi-GB file costs two small reads."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        if not p.is_file():
            h.update(f"{p.name}:absent\n".encode())
            continue
        size = p.stat().st_size
        h.update(f"{p.name}:{size}\n".encode())
        with open(p, "rb") as f:
            h.update(f.read(sample_bytes))
            if size > 2 * sample_bytes:
                f.seek(size - sample_bytes)
                h.update(f.read(sample_bytes))
            else:
                h.update(f.read())
    return h.hexdigest()[:16]
