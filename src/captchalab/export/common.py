"""What every exporter shares: int8 static quantisation and moving a finished bundle into place."""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from captchalab.errors import CaptchalabError
from captchalab.runtime.bundle import MANIFEST


def quantize_int8(
    fp32: Path, out: Path, input_name: str, calibration: np.ndarray, batch: int = 32, keep_fp32: tuple[str, ...] = ()
) -> None:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on ``calibration`` model inputs; the nodes
    named in ``keep_fp32`` stay fp32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: calibration[i : i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):  # noqa: ANN201
            return next(self._batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(keep_fp32))  # fmt: skip


def output_layer(model_file: Path) -> str:
    """Name of the last Conv / Gemm / MatMul node of an ONNX graph: the layer that writes the scores. Kept fp32 by
    the OCR exports: with it in int8 the default CTC model (after 6 of its 15 epochs) read upper-case development
    captchas 97.35 %, with it in fp32 97.70 % (fp32 model: 97.80 %), at the same speed
    (scripts/quantize-default-ocr.py)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    names = [node.name for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    if not names:
        raise CaptchalabError(f"{model_file}: no Conv, Gemm or MatMul node to keep in fp32")
    return names[-1]


# Every file an export, refine or calibrate writes into a bundle: an earlier bundle holding anything else holds the
# user's own files, which replacing the bundle would delete.
BUNDLE_FILES = frozenset(
    (MANIFEST, "model.onnx", "model.fp32.onnx", "refiner.onnx", "refiner.fp32.onnx", "image.onnx", "text.onnx",
     "vocab.txt", "pictures.npz", "weights.safetensors")
)  # fmt: skip


def check_bundle_destination(out: Path) -> None:
    """Before any work: ``out`` must be new or an earlier bundle of only our files (``install_bundle`` replaces
    only those)."""
    if not out.exists():
        return
    if not (out / MANIFEST).is_file():
        raise CaptchalabError(f"{out}: exists and is not a bundle; refusing to overwrite it")
    try:
        foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in BUNDLE_FILES)
    except OSError as exc:
        raise CaptchalabError(f"{out}: cannot list the earlier bundle ({exc.strerror or exc})") from None
    if foreign:
        raise CaptchalabError(
            f"{out}: the earlier bundle also holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
            "which replacing it would delete; move them or pick another --out"
        )


def make_work_folder(out: Path) -> Path:
    """A private folder beside ``out`` to build the bundle in (then renamed onto ``out`` by ``install_bundle``)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    except OSError as exc:
        raise CaptchalabError(f"{out}: cannot write the bundle there ({exc.strerror or exc})") from None


@contextmanager
def bundle_copy(source: Path, out: Path, leave_out: Iterable[str] = ()) -> Iterator[Path]:
    """A work folder beside ``out`` holding copies of ``source``'s files except its manifest and ``leave_out``: add
    or replace files there, then ``install_bundle(work, out, manifest)``. Removed when the block ends otherwise."""
    work = make_work_folder(out)
    skip = {MANIFEST, *leave_out}
    try:
        for file in source.iterdir():
            if file.is_file() and file.name not in skip:
                shutil.copy2(file, work / file.name)
        yield work
    finally:
        if work.exists():
            shutil.rmtree(work)


def read_licenses(path: Path | None) -> list | None:
    """The ``--licenses`` file: a JSON list of licence entries (objects or strings) for the manifest."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptchalabError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptchalabError(f"{path}: cannot read the licences ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CaptchalabError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(item, (dict, str)) for item in data):
        raise CaptchalabError(f"{path}: licences must be a JSON list of objects (or strings)")
    return data


def install_bundle(work: Path, out: Path, manifest: dict) -> None:
    """Write ``manifest`` into the finished bundle folder ``work`` (with the licences given, a creation time and
    the captchalab version), then replace ``out`` with it; never overwrites a folder that is not a bundle."""
    from captchalab import __version__

    manifest["licenses"] = manifest.get("licenses") or []
    manifest["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    manifest["captchalab_version"] = __version__
    (work / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    if out.exists():
        check_bundle_destination(out)
        shutil.rmtree(out)
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared and shipped
    for file in work.iterdir():
        file.chmod(0o644)
    work.replace(out)
