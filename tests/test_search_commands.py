"""``captchalab search index|query|classify|dupes`` through the real entry point, with the tiny grid bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from captchalab.runtime.bundle import default_bundle_path
from conftest import run_cli

WORDS = ("猫", "狗", "鱼")


@pytest.fixture
def photos(tmp_path: Path, tiny_grid_cells: Path) -> Path:
    """Three words x 8 cells, a nested copy, and one corrupt file."""
    root = tmp_path / "photos"
    for word in WORDS:
        (root / word).mkdir(parents=True)
        for source in sorted((tiny_grid_cells / word).glob("*.png"))[:8]:
            shutil.copy2(source, root / word / source.name)
    (root / "bad.png").write_bytes(b"this is not a png")
    return root


def index_json(*args: str) -> dict:
    return json.loads(run_cli("search", "index", *args, "--json").stdout_text)


def error_line(*args: str) -> str:
    """Run a command that must fail as a user error: exit 2, exactly one line on stderr, no traceback."""
    result = run_cli(*args, check=False)
    lines = result.stderr_text.strip().splitlines()
    assert result.returncode == 2, result.stderr_text
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr_text, lines
    return lines[0]


def test_index_reindex_query_dupes_classify(photos: Path, tiny_grid_bundle: Path):
    bundle = str(tiny_grid_bundle)
    index = photos / ".captchalab-index"
    first = run_cli("search", "index", str(photos), "--model", bundle, "--batch-size", "5")
    assert "added 24, updated 0, removed 0, unchanged 0, skipped 1" in first.stdout_text
    warning = [line for line in first.stderr_text.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "bad.png" in warning[0]
    assert (index / "meta.json").is_file()

    again = index_json(str(photos), "--model", bundle)
    assert (again["added"], again["changed"], again["unchanged"]) == (0, 0, 24)  # nothing re-embedded

    Image.new("RGB", (40, 40), (9, 9, 9)).save(photos / "猫" / "00.png")  # changed content
    (photos / "鱼" / "01.png").unlink()
    shutil.copy2(photos / "狗" / "02.png", photos / "狗" / "copy.png")  # an exact duplicate
    third = index_json(str(photos), "--model", bundle)
    assert (third["added"], third["changed"], third["removed"], third["unchanged"]) == (1, 1, 1, 22)

    # query: the index remembers its model, so no --model
    hits = json.loads(
        run_cli("search", "query", "--index", str(index), "--text", "猫", "-k", "5", "--json").stdout_text
    )
    assert [set(hit) for hit in hits] == [{"path", "score"}] * 5
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert sum(Path(hit["path"]).parent.name == "猫" for hit in hits) >= 3

    query_image = photos / "狗" / "03.png"
    found = run_cli("search", "query", "--index", str(index), "--image", str(query_image), "-k", "3", "--json")
    hits = json.loads(found.stdout_text)
    assert hits[0]["path"] == str(query_image.resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    plain = run_cli("search", "query", "--index", str(index), "--image", str(query_image), "-k", "2").stdout_text
    assert len(plain.splitlines()) == 2 and str(query_image.resolve()) in plain.splitlines()[0]

    pairs = json.loads(run_cli("search", "dupes", "--index", str(index), "--threshold", "0.9999", "--json").stdout_text)
    names = {frozenset(Path(p).name for p in (pair["a"], pair["b"])) for pair in pairs}
    assert frozenset({"02.png", "copy.png"}) in names

    ranked = run_cli(
        "search", "classify", str(photos / "狗" / "04.png"), "--labels", "猫，狗,鱼", "--model", bundle, "--json"
    )
    ranked = json.loads(ranked.stdout_text)
    assert {row["label"] for row in ranked} == set(WORDS)
    assert sum(row["probability"] for row in ranked) == pytest.approx(1.0, abs=1e-5)
    assert [row["probability"] for row in ranked] == sorted((row["probability"] for row in ranked), reverse=True)
    assert ranked[0]["label"] == "狗"


def test_bad_input_gets_one_line(tmp_path: Path, photos: Path, tiny_grid_bundle: Path):
    bundle = str(tiny_grid_bundle)
    index = tmp_path / "idx"
    assert "no index here" in error_line("search", "query", "--index", str(tmp_path / "none"), "--text", "猫")
    (tmp_path / "empty").mkdir()
    assert "no images found" in error_line("search", "index", str(tmp_path / "empty"), "--model", bundle)
    assert not (tmp_path / "empty" / ".captchalab-index").exists()  # no empty index left behind
    assert "no such folder" in error_line("search", "index", str(tmp_path / "missing"), "--model", bundle)

    run_cli("search", "index", str(photos), "--index", str(index), "--model", bundle)
    query = ("search", "query", "--index", str(index))
    assert "bad.png: not a readable image" in error_line(*query, "--image", str(photos / "bad.png"))
    assert "nope.png: no such file" in error_line(*query, "--image", str(tmp_path / "nope.png"))
    assert "exactly one" in error_line(*query)
    assert "exactly one" in error_line(*query, "--text", "猫", "--image", str(photos / "狗" / "00.png"))
    assert "empty" in error_line(*query, "--text", " ")

    other = tmp_path / "other-bundle"  # another model: same files, a different recorded weight hash
    shutil.copytree(tiny_grid_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    manifest["sha256"]["image.onnx"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert "index was made with model" in error_line(*query, "--text", "猫", "--model", str(other))
    assert "index was made with model" in error_line("search", "index", str(photos), "--index", str(index),
                                                     "--model", str(other))  # fmt: skip
    assert "no manifest.json" in error_line(*query, "--text", "猫", "--model", str(tmp_path))
    assert "at least two" in error_line("search", "classify", str(photos / "狗" / "00.png"), "--labels", "猫",
                                        "--model", bundle)  # fmt: skip
    assert "not a readable image" in error_line("search", "classify", str(photos / "bad.png"), "--labels", "猫,狗",
                                                "--model", bundle)  # fmt: skip
    if not (default_bundle_path("grid") / "manifest.json").is_file():
        line = error_line("search", "index", str(photos), "--index", str(tmp_path / "idx2"))
        assert "default model is missing" in line and "--model" in line
