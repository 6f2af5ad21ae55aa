"""The onnxruntime path: no torch, thread safety, the Python API."""

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.conftest import run_cli

from captchalab import ocr
from captchalab.errors import CaptchalabError
from captchalab.ocr import OcrReader, evaluate, load_reader
from captchalab.runtime.bundle import default_bundle_path, load_bundle

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, BlockTorch())
""")


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_runtime_reads_without_torch(tiny_bundle: Path, tiny_data: Path):
    image = sorted(tiny_data.glob("*.png"))[0]
    result = _run_without_torch(f"""
        from captchalab.ocr import OcrReader
        reading = OcrReader({str(tiny_bundle)!r}).read({str(image)!r})
        assert "torch" not in sys.modules
        print(reading.text)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == OcrReader(tiny_bundle).read(image).text


def test_cli_predict_without_torch(tiny_bundle: Path, tiny_data: Path):
    image = sorted(tiny_data.glob("*.png"))[0]
    result = _run_without_torch(f"""
        sys.argv = ["captchalab", "ocr", "predict", "--json", "--model", {str(tiny_bundle)!r}, {str(image)!r}]
        from captchalab.cli import main
        try:
            main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file"] == str(image)


def test_training_without_torch_says_what_to_install(tiny_data: Path, tmp_path: Path):
    result = _run_without_torch(f"""
        sys.argv = ["captchalab", "ocr", "train", {str(tiny_data)!r}, "--out", {str(tmp_path / "run")!r}]
        from captchalab.cli import main
        main()
    """)
    assert result.returncode == 2
    assert "needs torch" in result.stderr and "Traceback" not in result.stderr


def test_one_reader_many_threads(tiny_bundle: Path, tiny_data: Path):
    images = sorted(tiny_data.glob("*.png"))[:48]
    reader = OcrReader(tiny_bundle, threads=1)
    expected = [reader.read(p) for p in images]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(reader.read, images * 4))
    assert got == expected * 4


def test_batch_matches_single_reads(tiny_bundle: Path, tiny_data: Path):
    images = sorted(tiny_data.glob("*.png"))[:20]
    reader = OcrReader(tiny_bundle)
    singles = [reader.read(p).text for p in images]
    assert [r.text for r in reader.read_batch(images, batch_size=7)] == singles
    assert [r.text for r in reader.read_batch(images, batch_size=3, workers=3)] == singles


def test_evaluate_refuses_labels_outside_the_model_charset(tiny_bundle: Path, tmp_path: Path, tiny_data: Path):
    source = sorted(tiny_data.glob("*.png"))[0]
    (tmp_path / "0-AB.png").write_bytes(source.read_bytes())
    with pytest.raises(CaptchalabError, match="cannot output"):
        evaluate(tiny_bundle, tmp_path)


def test_bundle_errors(tmp_path: Path, tiny_bundle: Path):
    with pytest.raises(CaptchalabError, match="not a model bundle"):
        load_bundle(tmp_path, "ocr")
    with pytest.raises(CaptchalabError, match="not 'grid'"):
        load_bundle(tiny_bundle, "grid")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{oops")
    with pytest.raises(CaptchalabError, match="not valid JSON"):
        load_bundle(broken, "ocr")
    with pytest.raises(CaptchalabError, match="no such model bundle"):
        load_reader(tmp_path / "missing")


def _broken_copy(tiny_bundle: Path, where: Path, change) -> Path:  # noqa: ANN001 - change(manifest dict) -> object
    import shutil

    copy = shutil.copytree(tiny_bundle, where)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    (copy / "manifest.json").write_text(json.dumps(change(manifest)), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: [1, 2], "not a JSON object"),
        (lambda m: {k: v for k, v in m.items() if k != "files"}, "no 'files'"),
        (lambda m: {**m, "format_version": "1"}, "format_version '1'"),
        (lambda m: {k: v for k, v in m.items() if k != "charset"}, "no 'charset' entry"),
        (lambda m: {**m, "preprocess": 7}, "malformed bundle manifest"),
    ],
)
def test_malformed_manifests_give_one_clear_line(tmp_path: Path, tiny_bundle: Path, change, message):  # noqa: ANN001
    broken = _broken_copy(tiny_bundle, tmp_path / "broken", change)
    with pytest.raises(CaptchalabError, match=message):
        OcrReader(broken)
    result = run_cli("ocr", "predict", "--model", str(broken), str(tiny_bundle / "manifest.json"), check=False)
    assert result.returncode == 2 and "manifest.json" in result.stderr_text and "Traceback" not in result.stderr_text


def test_corrupt_onnx_file_names_the_file(tmp_path: Path, tiny_bundle: Path):
    broken = _broken_copy(tiny_bundle, tmp_path / "broken", lambda m: m)
    (broken / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(CaptchalabError, match=r"model\.onnx: cannot load the ONNX model"):
        OcrReader(broken)
    (broken / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CaptchalabError, match="not UTF-8"):
        OcrReader(broken)


def test_predict_and_eval_with_a_given_alphabet(tiny_bundle: Path, tiny_data: Path, tmp_path: Path):
    charset = json.loads((tiny_bundle / "manifest.json").read_text())["charset"]
    digits = "".join(c for c in charset if c.isdigit())
    image = sorted(tiny_data.glob("*.png"))[0]
    out = run_cli("ocr", "predict", "--json", "--model", str(tiny_bundle), "--charset", digits, str(image))
    assert set(json.loads(out.stdout_text)["text"]) <= set(digits)
    reading = ocr.read(image, model=tiny_bundle, charset="digits" if len(digits) == 10 else digits)
    assert set(reading.text) <= set(digits)
    run_cli("ocr", "eval", str(tiny_bundle), str(tiny_data), "--charset", charset, "-o", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["images"] > 0
    bad = run_cli("ocr", "predict", "--model", str(tiny_bundle), "--charset", "%", str(image), check=False)
    assert bad.returncode == 2 and "cannot output" in bad.stderr_text and "Traceback" not in bad.stderr_text


def _constant_bundle(folder: Path, log_probs, chars: str, alphabets: dict | None) -> Path:  # noqa: ANN001
    """A bundle whose ONNX model ignores the image and always outputs ``log_probs`` (T, K+1): the reader's whole path
    (manifest, session, decoding) on an output we choose."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.asarray(log_probs, dtype=np.float32)[None], "table")  # (1, T, K+1)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),  # (B, 1, 1, 1)
        helper.make_node("Squeeze", ["mean", "last"], ["per_image"]),  # (B, 1, 1)
        helper.make_node("Mul", ["per_image", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "table"], ["log_probs"]),  # (B, T, K+1)
    ]
    graph = helper.make_graph(
        nodes, "constant", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 16, 48])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["batch", *table.dims[1:]])],
        [table, numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
         numpy_helper.from_array(np.array([3], np.int64), "last")],
    )  # fmt: skip
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "model.onnx")
    manifest = {"format_version": 1, "task": "ocr", "files": {"model": "model.onnx"}, "charset": chars,
                "case_sensitive": True, "decoder": "ctc-greedy", "max_length": 6,
                "preprocess": {"height": 16, "width": 48, "channels": 1, "mean": 0.5, "std": 0.5}}  # fmt: skip
    if alphabets:
        manifest["alphabets"] = alphabets
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_auto_charset_reads_within_the_inferred_alphabet(tiny_data: Path, tmp_path: Path):
    from tests.test_decode import MIXED, ROUND, _steps

    blank = {"": 1.0}
    output = _steps(MIXED, [{"k": 1.0}, blank, {"w": 1.0}, blank, ROUND, blank, {"q": 1.0}, blank])[0]
    alphabets = {"lower+digits": 0.2, "upper+digits": 0.2, "alnum": 0.6}
    bundle = _constant_bundle(tmp_path / "constant", output, MIXED, alphabets)
    image = sorted(tiny_data.glob("*.png"))[0]
    assert OcrReader(bundle).read(image).text == "kw0q"  # charset='auto' is the default
    assert OcrReader(bundle, charset="any").read(image).text == "kwOq"
    assert ocr.read(image, model=bundle).text == "kw0q"
    out = run_cli("ocr", "predict", "--json", "--model", str(bundle), str(image), str(image))
    assert [json.loads(line)["text"] for line in out.stdout_text.splitlines()] == ["kw0q", "kw0q"]
    out = run_cli("ocr", "predict", "--model", str(bundle), "--charset", "any", "--case-insensitive", str(image))
    assert out.stdout_text.split("\t")[1] == "kwoq"
    plain = _constant_bundle(tmp_path / "plain", output, MIXED, None)  # no recorded alphabets: auto reads anything
    assert OcrReader(plain).read(image).text == "kwOq"


def test_export_records_training_alphabets(tiny_run: Path, tmp_path: Path):
    bundle = tmp_path / "two-alphabets"
    run_cli("ocr", "export", str(tiny_run), "--out", str(bundle), "--alphabets", "01234:1,56789:3")
    assert json.loads((bundle / "manifest.json").read_text())["alphabets"] == {"01234": 0.25, "56789": 0.75}
    assert OcrReader(bundle).output.alphabets == ("01234", "56789")
    bad = run_cli("ocr", "export", str(tiny_run), "--out", str(tmp_path / "x"), "--alphabets", "digits:x", check=False)
    assert bad.returncode == 2 and "must be a number" in bad.stderr_text and not (tmp_path / "x").exists()


@pytest.mark.skipif(not (default_bundle_path("ocr") / "manifest.json").exists(), reason="no default bundle yet")
def test_default_bundle_is_complete_and_reads():
    from captchalab import ocr
    from captchalab.data.generate import GenerateConfig, iter_samples
    from captchalab.runtime.bundle import sha256_file

    bundle = load_bundle("default", "ocr")
    for name, digest in bundle.manifest["sha256"].items():  # the int8 model and the fp32 original it came from
        assert sha256_file(bundle.path / name) == digest, name
    assert bundle.manifest["precision"] == "int8" and bundle.manifest["quantization"]["accuracy"]
    assert set(bundle.manifest["charset"]) == set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    assert bundle.manifest["training"]["command"] and bundle.manifest["licenses"]
    refiner = bundle.manifest["refiner"]  # the second look at 0 / O / o, with how it was trained and on what
    assert bundle.manifest["files"]["refiner"] == "refiner.onnx" and refiner["chars"] == "0Oo"
    assert refiner["parity"]["mismatches"] == 0 and "ocr generate" in refiner["training"]["data"]
    assert ocr.OcrReader("default").refiner is not None
    samples = list(iter_samples(GenerateConfig(charset="abcdefghijklmnopqrstuvwxyz0123456789", seed=424242), 50))
    right = sum(ocr.read(image).text.lower() == label for label, image in samples)
    assert right >= 45  # the benchmark measures >= 99% on thousands; this only guards against a broken bundle


def test_shift_rows_moves_images_and_repeats_the_edge():
    import numpy as np

    from captchalab.runtime.ocr import shift_rows

    batch = np.arange(2 * 1 * 4 * 3, dtype=np.float32).reshape(2, 1, 4, 3)
    down, up = shift_rows(batch, 1), shift_rows(batch, -1)
    np.testing.assert_array_equal(down[:, :, 1:], batch[:, :, :-1])
    np.testing.assert_array_equal(down[:, :, 0], batch[:, :, 0])
    np.testing.assert_array_equal(up[:, :, :-1], batch[:, :, 1:])
    np.testing.assert_array_equal(up[:, :, -1], batch[:, :, -1])
    assert shift_rows(batch, 0) is batch


def test_average_shifts_rereads_only_unsure_captchas():
    import numpy as np

    from captchalab.data.generate import GenerateConfig, iter_samples
    from captchalab.runtime.ocr import SHIFT_GATE, shift_rows

    images = [image for _, image in iter_samples(GenerateConfig(charset="ABCDEFGHJK0O1234", seed=515151), 64)]
    plain = OcrReader("default", threads=1, case_sensitive=False)
    steady = OcrReader("default", threads=1, case_sensitive=False, average_shifts=True)
    batch, loaded = plain.prepare(images)
    (lp,) = plain._session.run(None, {plain._input: batch})
    sure = np.array([r.confidence >= SHIFT_GATE for r in plain.output.readings(lp, plain.decoder)])
    assert sure.any() and not sure.all()  # both kinds in the batch, or the test shows nothing
    expected = np.exp(lp)
    for dy in (1, -1):
        expected += np.exp(plain._session.run(None, {plain._input: shift_rows(batch, dy)})[0])
    expected = np.where(sure[:, None, None], lp, np.log(np.maximum(expected / 3, 1e-30)))
    np.testing.assert_allclose(steady._averaged_over_shifts(batch, lp), expected, atol=1e-4)
    readings, plain_readings = steady.run(batch, loaded), plain.run(batch, loaded)
    assert [r.text for r, s in zip(readings, sure) if s] == [r.text for r, s in zip(plain_readings, sure) if s]


def test_average_shifts_through_the_cli(tiny_bundle: Path, tiny_run: Path, tiny_data: Path):
    image = str(sorted(tiny_data.glob("*.png"))[0])
    result = run_cli("ocr", "predict", "--average-shifts", "--json", "--model", str(tiny_bundle), image)
    assert json.loads(result.stdout_text)["file"] == image
    result = run_cli("ocr", "predict", "--average-shifts", "--model", str(tiny_run), image, check=False)
    assert result.returncode == 2 and "--average-shifts reads exported bundles only" in result.stderr_text
    assert "Traceback" not in result.stderr_text
