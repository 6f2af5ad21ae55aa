"""Search under awkward conditions: two writers at once, failed first runs, file names that are not UTF-8, files
that go bad, pipes named like images, folders that cannot be listed, moved folders, and option limits."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from test_search_commands import error_line
from test_search_index import COLOURS, PixelEmbedder, colour_image

from captchalab.errors import CaptchalabError
from captchalab.search import ImageIndex, service
from captchalab.search import scan as scan_mod
from captchalab.search import store as store_mod
from captchalab.search.scan import scan_images
from captchalab.search.store import INDEX_NAME, LOCK, META, FileEntry, Store
from conftest import run_cli

NOT_UTF8 = b"\xff\xfe-latin1-\xe9.png"


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    root = tmp_path / "pictures"
    for i, name in enumerate(["red", "green", "blue", "yellow"] * 2):
        colour_image(root / f"{name}-{i}.png", COLOURS[name], i)
    return root


@pytest.fixture
def cells(tmp_path: Path, tiny_grid_cells: Path) -> Path:
    """Six grid cells, for the tests that go through the real CLI and model."""
    root = tmp_path / "cells"
    root.mkdir()
    for word in ("猫", "狗"):
        for source in sorted((tiny_grid_cells / word).glob("*.png"))[:3]:
            shutil.copy2(source, root / f"{word}-{source.name}")
    return root


# -- two writers, and what a failed first run may remove ---------------------------------------------------------


def test_losing_writer_leaves_the_winners_new_index_alone(tmp_path, pictures, monkeypatch):
    """The loser created the index, then found the winner holding the lock: it must not remove the folder."""
    embedder = PixelEmbedder()
    monkeypatch.setattr(service, "load_model", lambda spec: embedder)
    real_update = ImageIndex.update
    winner: dict = {}

    def winner_takes_the_lock_first(self, root, embedder, **options):  # noqa: ANN001, ANN202
        winner["store"] = store = Store.open(self.path)
        winner["lock"] = lock = store.writer()
        lock.__enter__()  # another open file description: to flock() that is another process
        return real_update(self, root, embedder, **options)

    monkeypatch.setattr(ImageIndex, "update", winner_takes_the_lock_first)
    with pytest.raises(CaptchalabError, match="another process is updating this index"):
        service.index_folder(pictures, tmp_path / "idx", "default")
    store = winner["store"]
    assert (tmp_path / "idx" / META).is_file()
    store.commit([FileEntry("red-0.png", 1, 1, "x")], embedder.embed_texts(["red"]))  # the winner goes on writing
    winner["lock"].__exit__(None, None, None)
    store.close()
    with ImageIndex.open(tmp_path / "idx") as index:
        assert len(index) == 1


def test_cli_refuses_a_second_writer_and_touches_nothing(tmp_path, cells, tiny_grid_bundle):
    index, model = tmp_path / "idx", service.load_model(tiny_grid_bundle)
    store = Store.create(index, model.model_id, model.dim)  # another process made the index and is writing to it
    with store.writer():
        line = error_line("search", "index", str(cells), "--index", str(index), "--model", str(tiny_grid_bundle))
    assert "another process is updating this index" in line
    assert sorted(p.name for p in index.iterdir()) == sorted(["index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                                                              "segments", LOCK, META])  # fmt: skip
    store.close()


def test_database_locked_is_the_same_one_line_refusal(tmp_path, monkeypatch):
    class Locked:
        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    monkeypatch.setattr(store_mod.sqlite3, "connect", lambda *args, **kwargs: Locked())
    with pytest.raises(CaptchalabError, match=r"idx: another process is updating this index"):
        Store.create(tmp_path / "idx", "m", 4)


def test_failed_first_run_keeps_the_users_own_index_folder(tmp_path, tiny_grid_bundle):
    empty, mine, bundle = tmp_path / "empty", tmp_path / "my-index", str(tiny_grid_bundle)
    empty.mkdir()
    mine.mkdir()  # made by the user: the failed run may remove only what it made inside
    assert "no images found" in error_line("search", "index", str(empty), "--index", str(mine), "-m", bundle)
    assert mine.is_dir() and list(mine.iterdir()) == []
    error_line("search", "index", str(empty), "--model", bundle)
    assert not (empty / INDEX_NAME).exists()  # made by the run: removed whole


# -- files: names that are not UTF-8, files that go bad, pipes, folders that cannot be listed ----------------------


def test_cli_indexes_names_that_are_not_utf8_pipes_and_bad_names(tmp_path, cells, tiny_grid_bundle):
    odd = os.path.join(os.fsencode(cells), NOT_UTF8)
    shutil.copy2(os.fsencode(cells / "猫-00.png"), odd)
    os.mkfifo(cells / "pipe.png")  # opening it would block for ever
    first = run_cli("search", "index", str(cells), "--model", str(tiny_grid_bundle), "--json", timeout=120)
    report = json.loads(first.stdout_text)
    assert (report["added"], report["skipped"]) == (7, [f"{cells / 'pipe.png'}: not a regular file"])
    index = str(cells / INDEX_NAME)
    found = run_cli("search", "query", "--index", index, "--image", os.fsdecode(odd), "-k", "2", "--json")
    paths = {os.fsencode(hit["path"]) for hit in json.loads(found.stdout)}  # it and its copy 猫-00.png
    assert os.fsencode(Path(os.fsdecode(odd)).resolve()) in paths  # the name comes back whole
    plain = run_cli("search", "query", "--index", index, "--image", os.fsdecode(odd), "-k", "2").stdout
    assert any(line.endswith(NOT_UTF8) for line in plain.splitlines())  # printed as the bytes on disk
    again = json.loads(run_cli("search", "index", str(cells), "--json").stdout_text)  # --model: the recorded one
    assert (again["added"], again["unchanged"]) == (0, 7)


def test_indexed_file_that_goes_bad_loses_its_vector_and_is_not_reread(tmp_path, pictures, monkeypatch):
    embedder = PixelEmbedder()
    index = ImageIndex.open(tmp_path / "idx", embedder, create=True)
    index.update(pictures, embedder)
    spoilt = pictures / "red-0.png"
    spoilt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    report = index.update(pictures, embedder)
    assert (report.unchanged, report.changed, len(report.skipped)) == (7, 0, 1) and "red-0.png" in report.skipped[0]
    assert len(index) == 7 and all(h.path != str(spoilt) for h in index.search_text("red", embedder, k=8))

    monkeypatch.setattr(scan_mod, "read_bytes", lambda path: pytest.fail(f"re-read unchanged {path}"))
    report = index.update(pictures, embedder)
    assert (report.unchanged, len(report.skipped)) == (7, 1)
    monkeypatch.undo()
    colour_image(spoilt, COLOURS["red"], 0)  # repaired
    assert (index.update(pictures, embedder).added, len(index)) == (1, 8)


def test_scan_takes_regular_files_and_lists_folders_it_cannot_enter(tmp_path, pictures, monkeypatch):
    os.mkfifo(pictures / "pipe.png")
    (pictures / "folder.png").mkdir()
    (pictures / "locked").mkdir()
    colour_image(pictures / "locked" / "hidden.png", COLOURS["red"], 9)
    real_scandir = os.scandir

    def scandir(path):  # noqa: ANN001, ANN202 - as an unreadable folder does for a user without root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    (pictures / "gone.png").symlink_to(pictures / "deleted.png")
    (pictures / "loop.png").symlink_to(pictures / "loop.png")
    monkeypatch.setattr(scan_mod.os, "scandir", scandir)
    scan = scan_images(pictures)
    assert len(scan.files) == 8 and not any("pipe" in f.path or "hidden" in f.path for f in scan.files)
    assert scan.skipped == [f"{pictures / 'gone.png'}: broken symbolic link (No such file or directory)",
                            f"{pictures / 'locked'}: cannot list the folder (Permission denied)",
                            f"{pictures / 'loop.png'}: broken symbolic link (Too many levels of symbolic links)",
                            f"{pictures / 'pipe.png'}: not a regular file"]  # fmt: skip
    embedder = PixelEmbedder()
    report = ImageIndex.open(tmp_path / "idx", embedder, create=True).update(pictures, embedder)
    assert report.added == 8 and report.skipped == scan.skipped


# -- moved folders ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inside", [INDEX_NAME, "sub/.idx"])
def test_index_inside_its_folder_follows_a_move(tmp_path, pictures, caplog, inside):
    embedder = PixelEmbedder()
    with ImageIndex.open(pictures / inside, embedder, create=True) as index:
        index.update(pictures, embedder)
    moved = tmp_path / "moved"
    pictures.rename(moved)
    with caplog.at_level(logging.WARNING), ImageIndex.open(moved / inside, embedder) as index:
        report = index.update(moved, embedder)
        assert (report.added, report.unchanged, report.removed) == (0, 8, 0)
        assert index.root == moved.resolve()
        assert Path(index.search_text("red", embedder, k=1)[0].path).parent == moved.resolve()
    assert "moved from" in caplog.text and "follows it" in caplog.text

    other = tmp_path / "other"  # a different folder into the same index: still refused
    colour_image(other / "x.png", COLOURS["red"], 1)
    with ImageIndex.open(moved / inside, embedder) as index, pytest.raises(CaptchalabError, match="holds images of"):
        index.update(other, embedder)
    with ImageIndex.open(moved / inside, embedder) as index, pytest.raises(CaptchalabError, match="holds images of"):
        index.update(tmp_path, embedder)  # holds the index too, but at another place


# -- options and messages ----------------------------------------------------------------------------------------


def test_split_refuses_sizes_it_cannot_make(tmp_path, pictures):
    classes = tmp_path / "classes"
    shutil.copytree(pictures, classes / "all")
    for size in ("0x0", "100000x100000"):
        line = error_line("search", "split", str(classes), "--out", str(tmp_path / "out"), "--size", size)
        assert line.startswith(f"error: bad --size {size}: ")
    assert not (tmp_path / "out").exists()


def test_text_limit_index_hint_and_quiet_compaction(tmp_path, cells, tiny_grid_bundle):
    first = run_cli("search", "index", str(cells), "--model", str(tiny_grid_bundle))
    shutil.copy2(cells / "猫-00.png", cells / "copy.png")
    second = run_cli("search", "index", str(cells))  # a second segment, compacted with the first
    assert first.stderr_text == second.stderr_text == ""
    long_text = "猫" * (service.MAX_TEXT + 1)
    line = error_line("search", "query", "--index", str(cells / INDEX_NAME), "--no-server", "--text", long_text)
    assert line == "error: the query text is 2,001 characters long; the limit is 2,000"
    line = error_line("search", "query", "--index", str(cells), "--text", "猫")
    assert f"did you mean --index {cells / INDEX_NAME}?" in line
