"""``hftl cache``: lists hftl's caches under HFTL_CACHE_DIR with sizes and ages; clears all, old or some kinds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hftl.cli import main
from hftl.data.cache import cache_entries

DAY = 86400


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache with one dataset (3 days old), one exported checkpoint (today), two feature files (10 days, today)."""
    root = tmp_path / "hftl-cache"
    monkeypatch.setenv("HFTL_CACHE_DIR", str(root))
    now = time.time()

    def put(rel: str, size: int, age_days: float) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_days * DAY, now - age_days * DAY))
        if path.parent.parent != root:  # a folder entry: give the folder the same age
            os.utime(path.parent, (now - age_days * DAY, now - age_days * DAY))

    put("datasets/digits-0123/data-00000.arrow", 3000, 3)
    put("checkpoints/resnet-small-untrained-abcd/model.safetensors", 5000, 0)
    put("features/old.safetensors", 700, 10)
    put("features/new.safetensors", 800, 0)
    return root


def test_ls_lists_every_entry_with_its_size_kind_and_total(cache, capsys):
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out
    for kind, size, name in [
        ("datasets", "3.0 kB", "digits-0123"),
        ("checkpoints", "5.0 kB", "resnet-small"),
        ("features", "700 B", "old.safetensors"),
        ("features", "800 B", "new.safetensors"),
    ]:
        assert any(kind in line and size in line and name in line for line in out.splitlines()), (kind, out)
    assert "9.5 kB in 4 entries" in out


def test_clear_older_than_removes_only_old_entries(cache, capsys):
    assert main(["cache", "clear", "--older-than", "2", "--dry-run"]) == 0
    assert "would free 3.7 kB in 2 entries" in capsys.readouterr().out
    assert len(cache_entries(cache)) == 4  # a dry run removes nothing
    assert main(["cache", "clear", "--older-than", "2"]) == 0
    assert "freed 3.7 kB in 2 entries" in capsys.readouterr().out
    assert sorted(e.path.name for e in cache_entries(cache)) == ["new.safetensors", "resnet-small-untrained-abcd"]


def test_clear_all_of_one_kind_then_everything(cache, capsys):
    assert main(["cache", "clear", "--all", "--kind", "features"]) == 0
    assert {e.kind for e in cache_entries(cache)} == {"datasets", "checkpoints"}
    assert main(["cache", "clear", "--all"]) == 0
    assert cache_entries(cache) == []
    assert main(["cache"]) == 0 and "(empty)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["cache", "clear"], "exactly one of --all or --older-than"),
        (["cache", "clear", "--all", "--older-than", "1"], "exactly one of --all or --older-than"),
        (["cache", "--all"], "go with `hftl cache clear`"),
        (["cache", "clear", "--older-than", "-1"], "days >= 0"),
    ],
)
def test_clear_refuses_unclear_requests(cache, capsys, argv, words):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert len(cache_entries(cache)) == 4


def test_the_cache_follows_hftl_cache_dir_and_the_caches_use_it(cache):
    from hftl.data.sources import cache_dir
    from hftl.training import feature_cache

    assert cache_dir() == cache and feature_cache.cache_dir() == cache / "features"
