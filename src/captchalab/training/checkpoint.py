"""Atomic file writes: a crash (even kill -9) leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from captchalab.errors import CaptchalabError


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
    """A checkpoint of plain data (dicts, lists, tensors, numbers, strings), ours or Chinese-CLIP's.

    ``weights_only``: a ``.pt`` file from elsewhere is never allowed to run code while it is unpickled.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CaptchalabError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise CaptchalabError(f"{path}: holds Python objects besides tensors; refusing to unpickle it") from None
        raise CaptchalabError(f"{path}: not a PyTorch checkpoint ({error})") from None
    except Exception as error:  # torch.load raises KeyError, EOFError, RuntimeError, ... on arbitrary bytes
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = detail if isinstance(error, RuntimeError) and detail else f"{type(error).__name__} {detail}".strip()
        raise CaptchalabError(f"{path}: not a PyTorch checkpoint ({reason})") from None


def save_arrays(path: Path, **arrays: Any) -> None:
    """numpy arrays as one ``.npz`` file (uncompressed), written atomically."""
    import numpy as np

    _atomic(Path(path), lambda handle: np.savez(handle, **arrays))


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
