"""hftl's own caches, listed and cleared (``hftl cache``), like ``hf cache`` for the Hugging Face ones.

Everything lives under :func:`hftl.data.sources.cache_dir` (``$HFTL_CACHE_DIR``, else
``$XDG_CACHE_HOME/hftl`` or ``~/.cache/hftl``), one folder per kind:

- ``datasets/``: offline catalog datasets converted once to Arrow (:func:`hftl.data.sources._cached`);
- ``checkpoints/``: checkpoints exported once from packages (:mod:`hftl.models.pretrained`);
- ``features/``: frozen-backbone features (:mod:`hftl.training.feature_cache`).

Each entry (a folder or file directly inside a kind) is rebuilt on demand when
deleted, so clearing only costs time. Hugging Face's own caches (Hub models,
``datasets`` downloads) are not hftl's: ``hf cache`` manages those.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("datasets", "checkpoints", "features")


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # datasets / checkpoints / features / other
    path: Path
    size: int  # bytes
    modified: float  # newest modification time inside it (seconds since the epoch)

    @property
    def partial(self) -> bool:
        """A temporary entry being written, or left by a killed process."""
        return self.path.name.startswith(".")


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of hftl's cache, by kind then name; unknown files or folders count as kind ``other``."""
    from hftl.data.sources import cache_dir

    root = cache_dir() if root is None else root
    if not root.is_dir():
        return []
    entries = []
    for top in sorted(root.iterdir()):
        if top.is_dir() and top.name in KINDS:
            entries += [_entry(top.name, child) for child in sorted(top.iterdir())]
        else:
            entries.append(_entry("other", top))
    return entries


def _entry(kind: str, path: Path) -> CacheEntry:
    files = [path] if not path.is_dir() else [p for p in path.rglob("*") if not p.is_symlink()]
    sizes, times = 0, [path.lstat().st_mtime]
    for f in files:
        try:
            stat = f.lstat()
        except OSError:  # removed while we looked (another process finished or cleared it)
            continue
        sizes += stat.st_size if f.is_file() else 0
        times.append(stat.st_mtime)
    return CacheEntry(kind, path, sizes, max(times))


def remove_entries(entries: list[CacheEntry]) -> int:
    """Delete entries; returns the bytes freed. An entry another process removed first is skipped."""
    freed = 0
    for entry in entries:
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        freed += entry.size
    return freed


def select(
    entries: list[CacheEntry],
    *,
    everything: bool = False,
    older_than_days: float | None = None,
    kinds: list[str] | None = None,
    now: float | None = None,
) -> list[CacheEntry]:
    """The entries to clear: all of them, or those untouched for ``older_than_days``, optionally of some kinds."""
    now = time.time() if now is None else now
    chosen = [e for e in entries if not kinds or e.kind in kinds]
    if everything:
        return chosen
    if older_than_days is None:
        return []
    return [e for e in chosen if now - e.modified >= older_than_days * 86400]


def format_entries(entries: list[CacheEntry], root: Path, now: float | None = None) -> str:
    """A table: kind, size, age, name; then the total per kind and overall."""
    now = time.time() if now is None else now
    lines = [f"hftl cache: {root}"]
    if not entries:
        return lines[0] + "\n  (empty)"
    lines.append(f"  {'KIND':<12} {'SIZE':>9}  {'MODIFIED':>12}  NAME")
    for e in entries:
        name = e.path.name + (" (partial)" if e.partial else "")
        lines.append(f"  {e.kind:<12} {format_size(e.size):>9}  {format_age(now - e.modified):>12}  {name}")
    totals = {}
    for e in entries:
        totals[e.kind] = totals.get(e.kind, 0) + e.size
    lines.append(
        "  total: "
        + ", ".join(f"{k} {format_size(v)}" for k, v in totals.items())
        + f"; {format_size(sum(totals.values()))} in {len(entries)} entries"
    )
    return "\n".join(lines)


def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"
