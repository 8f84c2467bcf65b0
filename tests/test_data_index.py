"""The SQLite index store: probing shared by 2 real gloo ranks, batches kept after an interruption,
readers while a writer writes, stale rows pruned, an unwritable cache is not fatal."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from conftest import copy_tree
from train_utils import free_port, subprocess_env
from wfvae.data import index as index_mod
from wfvae.data.index import build_index, scan_folder, store_path
from wfvae.data.index_store import IndexStore, make_row, row_info
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_probe import VideoInfo
from wfvae.data.video_write import write_video


def test_probing_is_shared_across_two_gloo_ranks(messy_dir, tmp_path):
    """Each rank probes its share; rank 0 stores them; both ranks get the same merged index."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        import torch.distributed as dist
        from wfvae.data import index as index_mod

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        probed = []
        real_probe = index_mod._probe_one
        def counting(path):  # the test watches which rank probes what
            probed.append(os.path.relpath(path, {str(messy_dir)!r}))
            return real_probe(path)
        index_mod._probe_one = counting
        entries, stats = index_mod.build_index({str(messy_dir)!r}, cache_dir={str(tmp_path / 'cache')!r},
                                               num_workers=2, across_ranks=True)
        out = {{"probed": sorted(probed), "stats": stats,
                "entries": [[e.path, e.info.frames if e.info else None, e.error] for e in entries]}}
        with open(os.path.join({str(tmp_path)!r}, f"rank{{rank}}.json"), "w") as f:
            json.dump(out, f)
        dist.barrier()
        dist.destroy_process_group()
    """))
    env = subprocess_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    files = [rel for rel, _, _ in scan_folder(messy_dir)[0]]
    assert r0["entries"] == r1["entries"] and [e[0] for e in r0["entries"]] == files
    assert r0["stats"] == r1["stats"] == {"probed": len(files), "cached": 0, "trusted": 0}
    # disjoint shares that cover every file, of (almost) equal size
    assert not set(r0["probed"]) & set(r1["probed"])
    assert sorted(r0["probed"] + r1["probed"]) == sorted(files)
    assert abs(len(r0["probed"]) - len(r1["probed"])) <= 1
    # the same answers as one process probing alone, now from the store rank 0 wrote
    single, stats = build_index(messy_dir, cache_dir=tmp_path / "cache")
    assert stats == {"probed": 0, "cached": len(files), "trusted": 0}
    assert [[e.path, e.info.frames if e.info else None, e.error] for e in single] == r0["entries"]


def test_interrupted_cold_probe_keeps_finished_batches(video_dir, tmp_path, monkeypatch):
    root = copy_tree(video_dir, tmp_path / "data")
    for i in range(3):  # 7 files
        os.link(next(root.rglob("*.mp4")), root / f"link{i}.mp4")
    monkeypatch.setattr(index_mod, "_BATCH", 2)
    real_probe, calls = index_mod._probe_one, []

    def dies_on_fifth(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_probe(path)

    monkeypatch.setattr(index_mod, "_probe_one", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        build_index(root, cache_dir=tmp_path / "c", num_workers=1)
    monkeypatch.setattr(index_mod, "_probe_one", real_probe)
    entries, stats = build_index(root, cache_dir=tmp_path / "c", num_workers=1)
    assert stats == {"probed": 3, "cached": 4, "trusted": 0}  # two batches of 2 survived
    assert all(e.info is not None and e.info.frames == 17 for e in entries)


def test_readers_work_while_a_writer_holds_the_lock(tmp_path):
    path = tmp_path / "store.sqlite"
    info = VideoInfo(frames=5, fps=24.0, width=8, height=6, codec="h264")
    with IndexStore(path, "/data") as store:
        store.put([make_row("a.mp4", 10, 1, info, None), make_row("b.mp4", 3, 2, None, "empty")])
        writer = sqlite3.connect(str(path), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # another process is in the middle of writing
        writer.execute("INSERT OR REPLACE INTO files (path, size, mtime_ns, error) VALUES ('c.mp4', 1, 1, 'x')")
        with IndexStore(path, "/data", timeout_s=0.2) as reader:  # WAL: reading does not wait
            rows = reader.load()
            assert set(rows) == {"a.mp4", "b.mp4"}
            assert row_info(rows["a.mp4"]) == info and row_info(rows["b.mp4"]) is None
            assert rows["b.mp4"][-1] == "empty" and rows["a.mp4"][1:3] == (10, 1)
            with pytest.raises(sqlite3.OperationalError, match="locked"):  # a second writer waits, then fails
                reader.put([make_row("d.mp4", 1, 1, None, "x")])
        writer.execute("COMMIT")
        writer.close()
        assert set(store.load()) == {"a.mp4", "b.mp4", "c.mp4"}
    # another source (or schema) starts afresh instead of mixing rows
    with IndexStore(path, "/other") as other:
        assert other.count() == 0


def test_unwritable_cache_still_indexes(video_dir, tmp_path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    entries, stats = build_index(video_dir, cache_dir=blocker / "cache")
    assert stats["probed"] == 4 and all(e.info is not None for e in entries)
    assert "cannot use the index cache" in caplog.text
    assert store_path(video_dir, blocker / "cache").name.endswith(".sqlite")


def _answers(entries):
    return [(e.path, e.info, e.error) for e in entries]


def test_rescan_probes_exactly_the_changed_files_and_matches_a_cold_probe(messy_dir, tmp_path, monkeypatch):
    """Changed size, changed mtime only, removed, added, a new bad file: only those are probed, and the
    result (entries and stored rows) equals a cold probe of the final tree."""
    root = copy_tree(messy_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    build_index(root, cache_dir=cache, num_workers=1)
    files = [rel for rel, _, _ in scan_folder(root)[0]]
    good = [e.path for e in build_index(root, cache_dir=cache)[0] if e.info is not None]
    resized, touched, removed = good[0], good[1], files[-1]
    write_video(root / resized, make_synthetic_video(5, 32, 40, seed=3))  # new content in place
    st = os.stat(root / touched)
    os.utime(root / touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, 1 ns newer
    (root / removed).unlink()
    os.link(root / good[2], root / "added.mp4")
    (root / "sub" / "bad_new.mkv").parent.mkdir(exist_ok=True)
    (root / "sub" / "bad_new.mkv").write_bytes(b"not a video")

    real_probe, probed = index_mod._probe_one, []
    monkeypatch.setattr(index_mod, "_probe_one", lambda p: probed.append(os.path.relpath(p, root)) or real_probe(p))
    entries, stats = build_index(root, cache_dir=cache, num_workers=2)
    assert sorted(probed) == sorted([resized, touched, "added.mp4", "sub/bad_new.mkv"])
    assert stats == {"probed": 4, "cached": len(files) - 3, "trusted": 0}
    cold, cold_stats = build_index(root, cache_dir=tmp_path / "cold_cache", num_workers=1)
    assert cold_stats["probed"] == len(entries) and _answers(entries) == _answers(cold)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert next(e for e in entries if e.path == resized).info.frames == 5
    with IndexStore(store_path(root, cache), str(root)) as a, IndexStore(store_path(root, tmp_path / "cold_cache"), str(root)) as b:
        assert a.load() == b.load()  # the removed file's row is gone, nothing else differs
    probed.clear()
    assert _answers(build_index(root, cache_dir=cache)[0]) == _answers(cold) and probed == []


def test_rescan_is_right_when_the_store_cannot_be_written_or_loses_rows(video_dir, tmp_path, monkeypatch, caplog):
    """The entries do not depend on the store's fast path: a store that refuses writes, or whose rows
    vanish under us (another process pruning), still gives the cold probe's answers."""
    root = copy_tree(video_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    build_index(root, cache_dir=cache)
    changed = scan_folder(root)[0][0][0]  # not the last file: that one's row vanishes below
    write_video(root / changed, make_synthetic_video(7, 32, 48, seed=5))
    cold = _answers(build_index(root, cache_dir=tmp_path / "cold")[0])

    def refuse(self, rows):
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as m:
        m.setattr(IndexStore, "put", refuse)
        entries, stats = build_index(root, cache_dir=cache)
    assert stats["probed"] == 1 and _answers(entries) == cold
    assert "could not write the index cache" in caplog.text

    real_rows = IndexStore.rows
    monkeypatch.setattr(IndexStore, "rows", lambda self: list(real_rows(self))[:-1])  # the last row vanished
    entries, stats = build_index(root, cache_dir=cache)
    assert stats["probed"] == 1 and _answers(entries) == cold  # the changed file, then the vanished one
    assert "vanished" in caplog.text


def test_gc_paused_restores_the_collector():
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with index_mod.gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with index_mod.gc_paused():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()


def test_index_imports_without_torch():
    """The index (and data-check's probing) loads in ~0.2 s: torch's 1-2 s import is not part of it."""
    code = "import sys, wfvae.data.index; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
