"""Image index: incremental updates, exact and approximate search, model tagging, crash safety, bad input.

A tiny deterministic embedder (4x4 thumbnails; colour words -> solid colours) gives searches checkable answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captchalab.errors import CaptchalabError
from captchalab.search import ImageIndex, update_index
from captchalab.search import exact as exact_mod
from captchalab.search import scan as scan_mod
from captchalab.search.exact import exact_topk
from captchalab.search.store import SEGMENTS, FileEntry, Store

COLOURS = {
    "red": (220, 20, 20),
    "红": (220, 20, 20),
    "green": (20, 200, 20),
    "绿": (20, 200, 20),
    "blue": (20, 20, 220),
    "蓝": (20, 20, 220),
    "yellow": (230, 230, 30),
}


class PixelEmbedder:
    """A 4x4 RGB thumbnail, centred and L2-normalised; text = the thumbnail of a solid colour named by the text."""

    def __init__(self, model_id: str = "fake-pixels-4x4", dim: int = 48) -> None:
        self.model_id, self.dim = model_id, dim
        self.embedded = 0  # images embedded so far
        self.calls = 0

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        self.calls += 1
        self.embedded += len(images)
        small = [np.asarray(im.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float32) / 255 for im in images]
        x = np.stack(small).reshape(len(images), -1)[:, : self.dim] - 0.5
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed_images([Image.new("RGB", (8, 8), COLOURS[t]) for t in texts])


class ImageOnlyEmbedder(PixelEmbedder):
    embed_texts = None  # type: ignore[assignment]


def colour_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 16) -> Path:
    """A mostly ``colour`` image with seeded speckles, so every file has its own vector."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.int16) + rng.integers(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    names = ["red", "green", "blue", "yellow"]
    for i in range(12):
        colour_image(root / ("sub" if i % 3 == 0 else "") / f"{names[i % 4]}-{i:02d}.png", COLOURS[names[i % 4]], i)
    return root


def indexed(tmp_path: Path, root: Path, embedder: PixelEmbedder, **options) -> ImageIndex:
    index = ImageIndex.open(tmp_path / "idx", embedder, create=True)
    index.update(root, embedder, **options)
    return index


def test_update_is_incremental(tmp_path, photos, monkeypatch):
    embedder = PixelEmbedder()
    index = ImageIndex.open(tmp_path / "idx", embedder, create=True)
    first = index.update(photos, embedder, batch_size=5, workers=2)
    assert (first.added, first.changed, first.removed, first.unchanged, first.skipped) == (12, 0, 0, 0, [])
    assert len(index) == 12 and embedder.embedded == 12

    again = index.update(photos, embedder)
    assert (again.added, again.unchanged) == (0, 12) and embedder.embedded == 12

    changed = colour_image(photos / "red-04.png", COLOURS["blue"], 99)  # new content
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000_000))
    (photos / "sub" / "green-09.png").unlink()
    colour_image(photos / "new-red.png", COLOURS["red"], 100)
    touched = photos / "green-01.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5_000_000_000))
    report = index.update(photos, embedder)
    assert (report.added, report.changed, report.removed, report.unchanged) == (1, 1, 1, 10)  # touched: unchanged
    assert embedder.embedded == 14 and len(index) == 12

    def no_reading(path):
        raise AssertionError(f"read {path} although its size and mtime are unchanged")

    monkeypatch.setattr(scan_mod, "read_bytes", no_reading)  # the touched file's new mtime was recorded
    assert index.update(photos, embedder).unchanged == 12

    blue = [Path(h.path).name for h in index.search_text("blue", embedder, k=4)]
    assert sorted(blue) == ["blue-02.png", "blue-06.png", "blue-10.png", "red-04.png"]
    assert not any("green-09" in h.path for h in index.search_text("green", embedder, k=12))


def test_text_and_image_queries(tmp_path, photos):
    embedder = PixelEmbedder()
    index = indexed(tmp_path, photos, embedder)
    hits = index.search_text("红", embedder, k=3)
    assert [Path(h.path).name.split("-")[0] for h in hits] == ["red"] * 3
    assert all(Path(h.path).is_file() for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    top = index.search_image(photos / "green-05.png", embedder, k=1)[0]
    assert Path(top.path) == photos / "green-05.png" and top.score == pytest.approx(1.0, abs=1e-5)


def test_exact_search_matches_brute_force(tmp_path, photos, monkeypatch):
    monkeypatch.setattr(Store, "compact", lambda self: False)  # keep several segments and a deleted row
    embedder = PixelEmbedder()
    index = indexed(tmp_path, photos, embedder, batch_size=4, commit_every=4)
    (photos / "blue-10.png").unlink()
    index.update(photos, embedder)
    assert len(index.store.snapshot().segments) == 3
    files = sorted(p for p in photos.rglob("*.png"))
    reference = embedder.embed_images([Image.open(p) for p in files])
    queries = np.random.default_rng(0).standard_normal((7, 48)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    monkeypatch.setattr(exact_mod, "SCORE_BUDGET_BYTES", 1024)  # force many small chunks
    for q, hits in zip(queries, index.search(queries, k=5, mode="exact")):
        scores = reference @ q
        order = np.argsort(-scores)[:5]
        assert [Path(h.path) for h in hits] == [files[i] for i in order]
        np.testing.assert_allclose([h.score for h in hits], scores[order], rtol=1e-5, atol=1e-6)
    assert len(index.search(queries[:1], k=50)[0]) == 11  # k larger than the index: every live image once


def test_exact_topk_skips_dead_rows_and_pads():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((25, 8)).astype(np.float32)
    ids_a, ids_b = np.arange(40), np.arange(100, 125)
    ids_b[[3, 7]] = -1
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    scores, ids = exact_topk(queries, [(a, ids_a), (b, ids_b)], k=6)
    everything, all_ids = np.concatenate([a, b]), np.concatenate([ids_a, ids_b])
    brute = queries @ everything.T
    brute[:, all_ids < 0] = -np.inf
    expected = np.argsort(-brute, axis=1)[:, :6]
    np.testing.assert_array_equal(ids, all_ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-6)
    scores, ids = exact_topk(queries, [(b[:2], np.array([5, -1]))], k=3)
    assert ids.tolist() == [[5, -1, -1]] * 3 and np.isinf(scores[:, 1:]).all()


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 40 fixed centres, like embeddings of a collection with 40 kinds of picture."""
    centres = np.random.default_rng(1234).standard_normal((40, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 40, n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vector_index(tmp_path: Path, vectors: np.ndarray, threshold: int) -> ImageIndex:
    """An index filled straight from vectors (paths are made up): ANN tests need thousands of rows, not files."""
    store = Store.create(tmp_path / "vec-idx", "fake-vectors", vectors.shape[1])
    for start in range(0, len(vectors), 1000):
        part = vectors[start : start + 1000]
        store.commit([FileEntry(f"v{start + i:05d}.png", 1, 1, "x") for i in range(len(part))], part)
    return ImageIndex(store, ann_threshold=threshold)


def test_approximate_search_recall_and_refresh(tmp_path):
    vectors = clustered(3000, 32, seed=0)
    index = vector_index(tmp_path, vectors, threshold=1000)
    held_out = clustered(300, 32, seed=1)  # same kinds of picture, new points
    report = index.measure_recall(k=10, queries=held_out)
    assert report.recall >= 0.99, report
    assert report.nprobe <= report.nlist // 4  # really approximate: a quarter of the lists or fewer
    far_off = np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)  # like no picture at all
    assert index.measure_recall(k=10, queries=far_off).recall >= 0.99
    hits = index.search(vectors[:5], k=10)  # "auto" above the threshold: approximate, saved
    assert [Path(h[0].path).name for h in hits] == [f"v{i:05d}.png" for i in range(5)]
    assert (index.path / "ann.json").is_file() and index.info()["approximate"]["nprobe"] == report.nprobe

    store = index.store  # rows change: the approximate index is refreshed, not stale
    store.remove(["v00000.png"])
    extra = clustered(10, 32, seed=2)
    store.commit([FileEntry(f"new{i}.png", 1, 1, "y") for i in range(10)], extra)
    top = index.search(np.concatenate([vectors[:1], extra[:3]]), k=1)
    assert top[0][0].path != str(Path(".") / "v00000.png")
    assert [Path(h[0].path).name for h in top[1:]] == ["new0.png", "new1.png", "new2.png"]
    reopened = ImageIndex(Store.open(index.path), ann_threshold=1000)
    assert reopened.measure_recall(k=10, queries=held_out).recall >= 0.99


def test_model_mismatch_is_refused(tmp_path, photos):
    indexed(tmp_path, photos, PixelEmbedder())
    other = PixelEmbedder("other-model", 48)
    with pytest.raises(CaptchalabError, match=r"idx: .*fake-pixels-4x4.*other-model"):
        ImageIndex.open(tmp_path / "idx", other)
    with pytest.raises(CaptchalabError, match="other-model"):
        update_index(tmp_path / "idx", photos, other)
    index = ImageIndex.open(tmp_path / "idx")
    with pytest.raises(CaptchalabError, match=r"dim 48\), not fake-pixels-4x4 \(dim 24\)"):
        index.search_image(photos / "red-00.png", PixelEmbedder(dim=24))


class FailingEmbedder(PixelEmbedder):
    def __init__(self, fail_on_call: int) -> None:
        super().__init__()
        self.fail_on_call = fail_on_call

    def embed_images(self, images):
        if self.calls + 1 == self.fail_on_call:
            raise RuntimeError("model crashed")
        return super().embed_images(images)


def test_failure_mid_update_keeps_finished_work(tmp_path, photos):
    index = ImageIndex.open(tmp_path / "idx", PixelEmbedder(), create=True)
    with pytest.raises(RuntimeError, match="model crashed"):
        index.update(photos, FailingEmbedder(fail_on_call=4), batch_size=2, commit_every=4, workers=1)
    assert len(ImageIndex.open(tmp_path / "idx")) == 6  # three whole batches
    report = index.update(photos, PixelEmbedder())
    assert (report.added, report.unchanged) == (6, 6)


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from test_search_index import PixelEmbedder
    from captchalab.search import ImageIndex, store

    where = sys.argv[4]
    class Killer(PixelEmbedder):
        def embed_images(self, images):
            if where == "embed" and self.calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().embed_images(images)

    write = store.Store._write_segment
    def write_then_die(self, vectors):
        name = write(self, vectors)
        if self.count() >= 4:  # second commit: the segment is on disk, its rows never will be
            os.kill(os.getpid(), signal.SIGKILL)
        return name
    if where == "commit":
        store.Store._write_segment = write_then_die
    embedder = Killer()
    index = ImageIndex.open(sys.argv[1], embedder, create=True)
    index.update(sys.argv[2], embedder, batch_size=2, commit_every=4, workers=1)
    """
)


@pytest.mark.parametrize("where", ["embed", "commit"])
def test_kill_9_during_update(tmp_path, photos, where):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    idx = tmp_path / "idx"
    args = [sys.executable, str(script), str(idx), str(photos), str(Path(__file__).parent), where]
    result = subprocess.run(args, capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    index = ImageIndex.open(idx, PixelEmbedder())  # still readable
    assert len(index) == 4  # the first commit survived, nothing half-written shows
    assert len(index.search_text("red", PixelEmbedder(), k=20)) == 4
    if where == "commit":
        assert len(list((idx / SEGMENTS).iterdir())) == 2  # one committed, one orphan
    report = index.update(photos, PixelEmbedder())
    assert (report.added, report.unchanged) == (8, 4) and len(index) == 12
    assert len(list((idx / SEGMENTS).iterdir())) == 1  # orphan removed, segments compacted
    red = index.search_text("red", PixelEmbedder(), k=3)
    assert [Path(h.path).name.split("-")[0] for h in red] == ["red"] * 3


def test_unreadable_images_are_listed_and_skipped(tmp_path, photos, monkeypatch):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "empty.jpg").write_bytes(b"")
    embedder = PixelEmbedder()
    index = ImageIndex.open(tmp_path / "idx", embedder, create=True)
    report = index.update(photos, embedder)
    assert report.added == 12 and len(report.skipped) == 2
    assert any("broken.png" in line for line in report.skipped)
    assert any("empty.jpg" in line for line in report.skipped)
    assert all("\n" not in line for line in report.skipped)

    real_read = scan_mod.read_bytes
    monkeypatch.setattr(scan_mod, "read_bytes", lambda path: pytest.fail(f"re-read unchanged {path}"))
    assert len(index.update(photos, embedder).skipped) == 2  # remembered, not re-read
    monkeypatch.setattr(scan_mod, "read_bytes", real_read)

    colour_image(photos / "broken.png", COLOURS["red"], 7)  # repaired
    report = index.update(photos, embedder)
    assert report.added == 1 and [Path(s.split(":")[0]).name for s in report.skipped] == ["empty.jpg"]


def test_near_duplicates(tmp_path):
    root, rng = tmp_path / "noise", np.random.default_rng(3)
    root.mkdir()
    for i in range(10):  # random pixels: unrelated images, cosine far below the threshold
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"n{i}.png")
    Image.open(root / "n2.png").save(root / "n2-copy.png")
    brighter = np.asarray(Image.open(root / "n5.png")).astype(np.int16) + 3
    Image.fromarray(np.clip(brighter, 0, 255).astype(np.uint8)).save(root / "n5-brighter.png")
    index = indexed(tmp_path, root, PixelEmbedder())
    pairs = index.near_duplicates(threshold=0.95)
    names = [(Path(a).name, Path(b).name) for a, b, _ in pairs]
    assert names == [("n2-copy.png", "n2.png"), ("n5-brighter.png", "n5.png")]
    assert pairs[0][2] == pytest.approx(1.0, abs=1e-5) and 0.95 <= pairs[1][2] < 0.9999
    approx = index.near_duplicates(threshold=0.95, mode="approx")
    assert [(a, b) for a, b, _ in approx] == [(a, b) for a, b, _ in pairs]


def test_bad_input_gets_one_line(tmp_path, photos):
    embedder = PixelEmbedder()
    with pytest.raises(CaptchalabError, match=r"nowhere: no index here; run 'captchalab search index DIR' first"):
        ImageIndex.open(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(CaptchalabError, match=r"empty: no images found"):
        update_index(tmp_path / "idx", empty, embedder)
    with pytest.raises(CaptchalabError, match="no such folder"):
        update_index(tmp_path / "idx", tmp_path / "missing", embedder)
    index = indexed(tmp_path, photos, embedder)
    text_file = tmp_path / "query.png"
    text_file.write_text("hello")
    with pytest.raises(CaptchalabError, match=r"query.png: not a readable image"):
        index.search_image(text_file, embedder)
    with pytest.raises(CaptchalabError, match="no text tower"):
        index.search_text("red", ImageOnlyEmbedder())
    with pytest.raises(CaptchalabError, match="holds images of"):
        index.update(tmp_path / "empty" / "..", embedder)  # another folder into the same index
    with pytest.raises(CaptchalabError, match="not empty and holds no index"):
        ImageIndex.open(photos, embedder, create=True)


def test_index_inside_the_folder_is_not_indexed(tmp_path, photos):
    embedder = PixelEmbedder()
    index = ImageIndex.open(photos / ".index", embedder, create=True)
    index.update(photos, embedder)
    Image.new("RGB", (4, 4)).save(photos / ".index" / "stray.png")
    assert index.update(photos, embedder).added == 0 and len(index) == 12


def test_runtime_imports_neither_torch_nor_faiss():
    code = "import sys, captchalab.search; print(sorted(m for m in sys.modules if m in ('torch', 'faiss')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
