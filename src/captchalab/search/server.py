"""``captchalab search serve``: a long-lived HTTP server (FastAPI + uvicorn, the ``[serve]`` extra) that holds the
model and the index in memory, so a query costs only its embedding and the search.

Endpoints: ``GET /api/query?text=&k=``, ``POST /api/query?k=`` (the image bytes as the body), ``GET /api/info``,
``GET /thumb?path=`` (images inside the indexed folder only) and ``GET /`` (a small self-contained page).
Errors are JSON ``{"error": "..."}`` with a 4xx status; a bug is logged here and answered with a bare 500.
(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at definition time.)
"""

import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.imaging import load_image
from captchalab.search import client
from captchalab.search.index import ImageIndex
from captchalab.search.models import model_for_index
from captchalab.search.page import PAGE
from captchalab.search.service import MAX_K, check_query, search, to_json
from captchalab.search.store import write_json_atomic

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 << 20
THUMB_MAX = 512


def _fastapi():  # noqa: ANN202
    try:
        import fastapi
        import uvicorn  # noqa: F401
    except ImportError:
        raise CaptchalabError("the search server needs FastAPI and uvicorn: pip install 'captchalab[serve]'") from None
    return fastapi


def resolve_inside(root: Path, requested: str) -> Path:
    """``requested`` (relative to ``root`` or absolute) as a real path inside ``root``; anything else is refused."""
    if "\x00" in requested or not requested:
        raise PermissionError("not a valid path")
    candidate = Path(requested) if os.path.isabs(requested) else root / requested
    real, base = os.path.realpath(candidate), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise PermissionError(f"{requested}: outside the indexed folder")
    return Path(real)


def create_app(index_path: str | os.PathLike, model: str | os.PathLike | None = None, threads: int | None = None):  # noqa: ANN201
    """The FastAPI app for one index; the index and its model are opened here, once, and warmed up."""
    fastapi = _fastapi()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    class Json(JSONResponse):
        def render(self, content: object) -> bytes:
            return to_json(content).encode("utf-8")  # file names that are not valid UTF-8 too

    index = ImageIndex.open(index_path)
    embedder = model_for_index(index, model, threads)
    embedder.load_all()  # both towers in memory now: queries never pay (or depend on) loading
    _warm_up(index)
    app = fastapi.FastAPI(
        title="captchalab search", docs_url=None, redoc_url=None, openapi_url=None, default_response_class=Json
    )
    app.state.index, app.state.embedder = index, embedder

    def error(status: int, message: str) -> JSONResponse:
        return Json({"error": message}, status_code=status)

    @app.exception_handler(CaptchalabError)
    async def _user_error(request: object, exc: CaptchalabError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: object, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return error(422, "; ".join(parts) or "bad request")

    @app.exception_handler(HTTPException)
    async def _http_error(request: object, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request: object, exc: Exception) -> JSONResponse:
        log.exception("error while answering a request")
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

    def answer(query: dict, started: float, hits: list) -> dict:
        took = (time.perf_counter() - started) * 1000
        return {**query, "results": [hit.to_dict() for hit in hits], "took_ms": round(took, 3)}

    k_param = fastapi.Query(10, ge=1, le=MAX_K)

    @app.get("/api/query")
    def query_text(text: str = fastapi.Query(...), k: int = k_param) -> dict:
        started = time.perf_counter()
        check_query(text, None, k)  # the same limits as an in-process query, in the same words
        return answer({"text": text, "k": k}, started, search(index, embedder, text, None, k))

    @app.post("/api/query")
    async def query_image(request: fastapi.Request, k: int = k_param, name: str = "upload") -> JSONResponse:
        started = time.perf_counter()
        if request.headers.get("content-type", "").startswith("multipart/"):
            return error(415, "send the image bytes as the request body (curl --data-binary @FILE), not a form")
        data = await request.body()
        if len(data) > MAX_UPLOAD_BYTES:
            return error(413, f"{name}: {len(data):,} bytes, over the {MAX_UPLOAD_BYTES:,}-byte upload limit")
        hits = await run_in_threadpool(lambda: search(index, embedder, None, load_image(data, name=name), k))
        return Json(answer({"image": name, "k": k}, started, hits))

    @app.get("/api/info")
    def info() -> dict:
        return {**index.info(), "model_id": embedder.model_id, "pid": os.getpid()}

    @app.get("/thumb")
    def thumb(path: str, size: int = fastapi.Query(160, ge=16, le=THUMB_MAX)) -> Response:
        root = index.root
        if root is None:
            return error(404, "the index is empty")
        try:
            file = resolve_inside(root, path)
        except PermissionError as exc:
            return error(403, str(exc))
        if not file.is_file():
            return error(404, f"{path}: no such file")
        picture = load_image(file)
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    return app


def _warm_up(index: ImageIndex) -> None:
    """Map the vectors (and load or build the approximate index) now, not on the first query."""
    if len(index):
        index.search(np.ones((1, index.dim), np.float32), k=1)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise CaptchalabError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def serve(
    index_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str | os.PathLike | None = None,
    on_ready: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> None:
    """Serve the index until Ctrl-C / SIGTERM, advertising itself in the index folder's discovery file."""
    import uvicorn

    _fastapi()
    index_path = Path(index_path)
    running = client.find_server(index_path)
    if running is not None:
        raise CaptchalabError(f"{index_path}: a server for this index is already running at {running.url}")
    app = create_app(index_path, model, threads)
    sock = _listen(host, port)
    info = client.ServerInfo(host, sock.getsockname()[1], os.getpid(), app.state.embedder.model_id)
    discovery = index_path / client.DISCOVERY
    try:
        write_json_atomic(discovery, {"host": info.host, "port": info.port, "pid": info.pid, "model_id": info.model_id})
    except OSError as exc:
        log.warning("%s: cannot write the discovery file (%s); the CLI will not find this server", discovery, exc)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn re-raises it after a clean shutdown
    try:
        if on_ready is not None:
            on_ready(info.url)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        _remove_discovery(discovery)
        sock.close()
        app.state.index.close()


def _remove_discovery(path: Path) -> None:
    """Remove the discovery file if it is still this process's."""
    current = client.find_server(path.parent)
    if current is None or current.pid == os.getpid():
        path.unlink(missing_ok=True)
