"""Atomic file writes: a crash (even kill -9) leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic(path: Path, write) -> None:  # noqa: ANN001 - write(file_object)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_torch(obj: Any, path: Path) -> None:
    import torch

    _atomic(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: Path, map_location: str = "cpu") -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def write_json(path: Path, data: Any) -> None:
    _atomic(Path(path), lambda handle: handle.write(json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of the same keys as a CSV file with a header, written atomically."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))
