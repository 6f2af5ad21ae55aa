"""The search server: its endpoints through FastAPI's TestClient, and the CLI finding a real one by its
discovery file (and ignoring a stale one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from test_search_commands import error_line

from captchalab.search.client import DISCOVERY
from captchalab.search.service import MAX_TEXT, index_folder
from conftest import CLI, run_cli

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # TestClient


@pytest.fixture
def indexed(tmp_path: Path, tiny_grid_cells: Path, tiny_grid_bundle: Path) -> Path:
    """An index (in its default place) of 3 words x 6 cells, plus a non-image file and an outside file."""
    root = tmp_path / "photos"
    for word in ("猫", "狗", "鱼"):
        (root / word).mkdir(parents=True)
        for source in sorted((tiny_grid_cells / word).glob("*.png"))[:6]:
            shutil.copy2(source, root / word / source.name)
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "secret.png").write_bytes((root / "猫" / "00.png").read_bytes())
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    return index_folder(root, model=tiny_grid_bundle).index


@pytest.fixture
def api(indexed: Path):  # noqa: ANN201
    from fastapi.testclient import TestClient

    from captchalab.search.server import create_app

    app = create_app(indexed)
    with TestClient(app) as test_client:
        yield test_client
    app.state.index.close()


def test_queries_and_info(api, indexed: Path):  # noqa: ANN001
    answer = api.get("/api/query", params={"text": "猫", "k": 5})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert len(results) == 5 and [set(r) for r in results] == [{"path", "score"}] * 5
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    picture = indexed.parent / "狗" / "01.png"
    answer = api.post("/api/query", params={"k": 3}, content=picture.read_bytes())
    assert answer.status_code == 200 and answer.json()["results"][0]["path"] == str(picture.resolve())

    info = api.get("/api/info").json()
    assert info["images"] == 19 and info["dim"] == 32 and info["model_id"].startswith("grid:")  # 18 + the symlink


@pytest.mark.parametrize(
    "request_args, status, words",
    [
        (("post", "/api/query", {"params": {"name": "junk.png"}, "content": b"junk"}), 400, "junk.png"),
        (("post", "/api/query", {"files": {"f": ("a.png", b"x")}}), 415, "request body"),
        (("get", "/api/query", {"params": {"text": "猫", "k": 0}}), 422, "k"),
        (("get", "/api/query", {}), 422, "text"),
        (("get", "/no/such/page", {}), 404, "Not Found"),
    ],
)
def test_bad_requests_get_json_errors(api, request_args, status, words):  # noqa: ANN001
    method, url, kwargs = request_args
    answer = getattr(api, method)(url, **kwargs)
    assert answer.status_code == status and words in answer.json()["error"]
    assert "Traceback" not in answer.text


def test_thumbnails_only_inside_the_indexed_folder(api, indexed: Path):  # noqa: ANN001
    root = indexed.parent.resolve()
    ok = api.get("/thumb", params={"path": "猫/00.png", "size": 32})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert api.get("/thumb", params={"path": str(root / "狗" / "00.png")}).status_code == 200
    for outside in ("../secret.png", "猫/../../secret.png", str(root.parent / "secret.png"), "/etc/passwd",
                    "escape.png"):  # fmt: skip
        answer = api.get("/thumb", params={"path": outside})
        assert answer.status_code == 403 and "outside the indexed folder" in answer.json()["error"], outside
    assert api.get("/thumb", params={"path": "猫/99.png"}).status_code == 404
    assert api.get("/thumb", params={"path": "notes.txt"}).status_code == 400


def test_page_is_self_contained(api):  # noqa: ANN001
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "/api/query" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()}")
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def test_cli_uses_a_running_server(tmp_path: Path, tiny_grid_cells: Path, tiny_grid_bundle: Path):
    """The server holds the model: with the bundle deleted, only a query through it can succeed."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_grid_bundle, bundle)
    index = index_folder(tiny_grid_cells / "猫", tmp_path / "idx", model=bundle).index
    server = subprocess.Popen([*CLI, "search", "serve", "--index", str(index), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})  # fmt: skip
    try:
        _wait_for(index / DISCOVERY, server)
        assert json.loads((index / DISCOVERY).read_text())["pid"] == server.pid
        shutil.rmtree(bundle)
        hits = json.loads(run_cli("search", "query", "--index", str(index), "--text", "猫", "--json").stdout_text)
        assert len(hits) == 10
        image = str(tiny_grid_cells / "猫" / "05.png")
        hits = json.loads(run_cli("search", "query", "--index", str(index), "--image", image, "--json").stdout_text)
        assert hits[0]["path"].endswith("05.png")
        second = run_cli("search", "serve", "--index", str(index), "--port", "0", check=False)
        assert second.returncode == 2 and "already running" in second.stderr_text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    assert not (index / DISCOVERY).exists()  # removed on shutdown
    assert "is gone" in run_cli("search", "query", "--index", str(index), "--text", "猫", check=False).stderr_text

    dead = subprocess.Popen(["true"])
    dead.wait()
    (index / DISCOVERY).write_text(json.dumps({"host": "127.0.0.1", "port": 9, "pid": dead.pid}))
    stale = run_cli("search", "query", "--index", str(index), "--text", "猫", check=False)
    assert stale.returncode == 2 and "is gone" in stale.stderr_text  # the stale file was ignored


NOT_UTF8 = b"\xff\xfe-latin1-\xe9.png"


@pytest.fixture
def cells(tmp_path: Path, tiny_grid_cells: Path) -> Path:
    root = tmp_path / "cells"
    shutil.copytree(tiny_grid_cells / "猫", root)
    colour = Image.new("RGB", (40, 40), (20, 200, 20))  # like no other cell
    colour.save(os.fsdecode(os.path.join(os.fsencode(root), NOT_UTF8)), format="PNG")
    return root


def test_server_answers_names_that_are_not_utf8_and_limits_text_as_in_process(cells, tiny_grid_bundle):
    from fastapi.testclient import TestClient

    from captchalab.search.server import create_app

    odd = os.path.join(os.fsencode(cells), NOT_UTF8)
    index = index_folder(cells, model=tiny_grid_bundle).index
    app = create_app(index)
    with TestClient(app) as client:
        answer = client.post("/api/query", params={"k": 1}, content=Path(os.fsdecode(odd)).read_bytes())
        assert answer.status_code == 200
        assert os.fsencode(answer.json()["results"][0]["path"]).endswith(NOT_UTF8)
        too_long = client.get("/api/query", params={"text": "猫" * (MAX_TEXT + 1)})
        assert too_long.status_code == 400
        assert too_long.json()["error"] == "the query text is 2,001 characters long; the limit is 2,000"
    app.state.index.close()


def test_cli_through_a_running_server_with_odd_names_and_long_text(tmp_path, cells, tiny_grid_bundle):
    """The server holds the model (the bundle is deleted once it runs), so these answers come through it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_grid_bundle, bundle)
    odd = os.fsdecode(os.path.join(os.fsencode(cells), NOT_UTF8))
    index = index_folder(cells, model=bundle).index
    server = subprocess.Popen([*CLI, "search", "serve", "--index", str(index), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for(index / DISCOVERY, server)
        shutil.rmtree(bundle)
        hits = json.loads(run_cli("search", "query", "--index", str(index), "--image", odd, "-k", "1", "--json").stdout)
        assert os.fsencode(hits[0]["path"]).endswith(NOT_UTF8)
        query = ("search", "query", "--index", str(index), "--text")
        assert "limit is 2,000" in error_line(*query, "猫" * (MAX_TEXT + 1))
        assert "not valid UTF-8" in error_line(*query, os.fsdecode(b"\xff\xe7\x8c\xab"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
