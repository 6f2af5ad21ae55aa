"""Model bundles: a folder with ONNX file(s) and manifest.json. Resolves ``default`` to the shipped bundle."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from captchalab.errors import CaptchalabError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    def file(self, key: str = "model") -> Path:
        """Absolute path of the ONNX file named by ``manifest["files"][key]``."""
        return self.path / self.manifest["files"][key]


def default_bundle_path(task: str) -> Path:
    return Path(str(resources.files("captchalab") / "assets" / f"{task}-default"))


def load_bundle(spec: str | os.PathLike, task: str) -> Bundle:
    """``default`` or a bundle folder -> Bundle, checking the manifest's task and that its files exist."""
    path = default_bundle_path(task) if str(spec) == "default" else Path(spec)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        what = (
            "the shipped default model is missing from the installation"
            if str(spec) == "default"
            else "not a model bundle (no manifest.json)"
        )
        raise CaptchalabError(f"{path}: {what}")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CaptchalabError(f"{manifest_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise CaptchalabError(f"{manifest_file}: not UTF-8 text") from None
    if not isinstance(manifest, dict):
        raise CaptchalabError(f"{manifest_file}: malformed bundle manifest (not a JSON object)")
    if manifest.get("task") != task:
        raise CaptchalabError(f"{path}: is a {manifest.get('task')!r} bundle, not {task!r}")
    version, files = manifest.get("format_version", 0), manifest.get("files")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CaptchalabError(f"{manifest_file}: malformed bundle manifest (format_version {version!r})")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        raise CaptchalabError(f"{manifest_file}: malformed bundle manifest (no 'files' naming the model files)")
    if version > FORMAT_VERSION:
        raise CaptchalabError(
            f"{path}: bundle format {manifest['format_version']} is newer than this captchalab; upgrade"
        )
    bundle = Bundle(path, manifest)
    for key in files:
        if not bundle.file(key).is_file():
            raise CaptchalabError(f"{bundle.file(key)}: model file named in the manifest is missing")
    return bundle


@contextmanager
def reading_manifest(bundle: Bundle) -> Iterator[None]:
    """Turn a missing or ill-typed manifest entry, met while a runtime reads the bundle, into one clear error."""
    where = bundle.path / MANIFEST
    try:
        yield
    except CaptchalabError:
        raise
    except KeyError as exc:
        raise CaptchalabError(f"{where}: malformed bundle manifest (no {exc} entry)") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CaptchalabError(f"{where}: malformed bundle manifest ({exc})") from None


def onnx_session(model_path: Path, threads: int | None = None, providers: list[str] | None = None):  # noqa: ANN201
    """An onnxruntime session: CUDA when available (and not overridden), else CPU; ``threads`` caps CPU threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # idle worker threads sleep instead of spinning: a spinning pool steals the cores that image decoding and numpy
    # need between two model calls (measured: a 9-cell grid went from 35 to ~20 ms on 2 busy cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for broken files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CaptchalabError(f"{model_path}: cannot load the ONNX model ({reason})") from None
