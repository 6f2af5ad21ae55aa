"""Finding a running ``search serve`` for an index (its discovery file) and querying it over HTTP (stdlib only).

The server writes ``server.json`` (host, port, pid, model_id) into the index folder once it listens, and removes
it on shutdown. A file whose pid is gone (e.g. after kill -9) is stale and ignored.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from captchalab.errors import CaptchalabError

log = logging.getLogger(__name__)

DISCOVERY = "server.json"
TIMEOUT_S = 30.0


class ServerUnavailable(Exception):
    """The server named by the discovery file did not answer: the caller falls back to searching in-process."""


@dataclass(frozen=True)
class ServerInfo:
    host: str
    port: int
    pid: int
    model_id: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return False
    return True


def find_server(index_path: str | os.PathLike) -> ServerInfo | None:
    """The live server for this index, per its discovery file; None when there is none or it is stale."""
    path = Path(index_path) / DISCOVERY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info = ServerInfo(str(data["host"]), int(data["port"]), int(data["pid"]), data.get("model_id"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("%s: ignoring unreadable discovery file (%s)", path, exc)
        return None
    if not pid_alive(info.pid):
        log.debug("%s: ignoring stale discovery file (pid %d is gone)", path, info.pid)
        return None
    return info


def _request(request: urllib.request.Request) -> object:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # the server answered: a 4xx names the problem
        try:
            message = json.loads(exc.read()).get("error")
        except (ValueError, AttributeError):
            message = None
        if message and 400 <= exc.code < 500:
            raise CaptchalabError(message) from None
        raise ServerUnavailable(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerUnavailable(str(exc)) from None


def _params(values: dict) -> str:
    """URL parameters; a file name that is not valid UTF-8 (surrogate escapes) is sent as its bytes."""
    return urllib.parse.urlencode(values, errors="surrogateescape")


def query_text(server: ServerInfo, text: str, k: int) -> list[dict]:
    params = _params({"text": text, "k": k})
    answer = _request(urllib.request.Request(f"{server.url}/api/query?{params}"))
    return answer["results"]  # type: ignore[index]


def query_image(server: ServerInfo, data: bytes, name: str, k: int) -> list[dict]:
    params = _params({"k": k, "name": name})
    request = urllib.request.Request(
        f"{server.url}/api/query?{params}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    return _request(request)["results"]  # type: ignore[index]
