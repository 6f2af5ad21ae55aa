"""Second bad-input review of the OCR side: foreign checkpoints, empty or unusable charsets, generator limits,
Ctrl-C while workers run, resuming and exporting a run whose data has moved, labels with outer spaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from captchalab.data.charset import parse_charset_spec
from captchalab.data.generate import GenerateConfig, generate, parse_length
from captchalab.data.labels import read_labelled_images
from captchalab.errors import CaptchalabError
from conftest import run_cli


def _one_image(tiny_data: Path) -> str:
    return str(sorted(tiny_data.glob("*.png"))[0])


def test_run_folder_with_a_foreign_checkpoint(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    import torch

    other = tmp_path / "grid-run"  # e.g. a grid run's folder given to ocr eval
    other.mkdir()
    torch.save({"model": {}, "config": {"arch": "gridclip"}, "epoch": 1}, other / "best.pt")
    result = run_cli("ocr", "eval", str(other), str(tiny_data), "-o", str(tmp_path / "r.json"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert f"{other / 'best.pt'}: not a captchalab OCR checkpoint" in result.stderr_text

    listed = tmp_path / "list-run"
    listed.mkdir()
    torch.save([1, 2], listed / "best.pt")
    result = run_cli("ocr", "predict", "-m", str(listed), _one_image(tiny_data), check=False)
    assert result.returncode == 2 and "not a captchalab OCR checkpoint" in result.stderr_text

    damaged = tmp_path / "damaged-run"
    damaged.mkdir()
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["model"] = {}
    torch.save(state, damaged / "best.pt")
    result = run_cli("ocr", "predict", "-m", str(damaged), _one_image(tiny_data), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr_text
    assert "damaged OCR checkpoint" in result.stderr_text


@pytest.mark.parametrize("spec", ["+", "++"])
def test_charset_spec_naming_no_characters(spec: str) -> None:
    with pytest.raises(CaptchalabError, match="names no characters"):
        parse_charset_spec(spec)


def test_empty_charsets_refused_by_the_cli(tiny_data: Path, tmp_path: Path) -> None:
    for args in (
        ["ocr", "generate", str(tmp_path / "g"), "--count", "2", "--charset", "+"],
        ["ocr", "train", str(tiny_data), "--out", str(tmp_path / "run"), "--charset", ""],
        ["ocr", "predict", "--charset", "", _one_image(tiny_data)],
    ):
        result = run_cli(*args, check=False)
        assert result.returncode == 2, args
        assert "charset spec" in result.stderr_text and "Traceback" not in result.stderr_text
    assert not (tmp_path / "g").exists() or not list((tmp_path / "g").iterdir())
    assert not (tmp_path / "run").exists()


def test_generate_refuses_spaces_and_labels_too_long_for_a_file_name() -> None:
    with pytest.raises(CaptchalabError, match="spaces"):
        GenerateConfig(charset=" ab")
    with pytest.raises(CaptchalabError, match="--charset is empty"):
        GenerateConfig(charset="")
    with pytest.raises(CaptchalabError, match="--length 300"):
        GenerateConfig(charset="abc", min_length=4, max_length=300)
    with pytest.raises(CaptchalabError, match="bad --length '3-'"):
        parse_length("3-")


def test_generate_huge_count_allocates_nothing_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import captchalab.data.generate as gen

    written = []

    def fake_write(job: tuple[int, str, int]) -> str:
        if len(written) == 3:
            raise KeyboardInterrupt  # the user gives up long before a million captchas
        written.append(job)
        return f"{job[0]}"

    monkeypatch.setattr(gen, "_write_one", fake_write)
    tracemalloc.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(tmp_path, 1_000_000, GenerateConfig(seed=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(written) == 3
    assert peak < 20_000_000  # a list of a million jobs alone takes far more


def test_generate_never_leaves_a_truncated_captcha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    def interrupted_save(self: Image.Image, fp, format: str | None = None) -> None:  # noqa: ANN001, A002
        Path(fp).write_bytes(b"\x89PNG\r\n")  # half written when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, 2, GenerateConfig(seed=1))
    assert list(tmp_path.iterdir()) == []


def _sigint_state(_: int) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_pool_workers_leave_ctrl_c_to_the_main_process() -> None:
    import itertools

    from captchalab.parallel import pool_map

    assert all(pool_map(_sigint_state, range(8), workers=2, chunksize=2))
    endless = pool_map(_sigint_state, itertools.count(), workers=2, chunksize=2)  # jobs are taken as needed
    assert list(itertools.islice(endless, 5)) == [True] * 5
    endless.close()


def test_ctrl_c_stops_the_pool_at_once_without_worker_tracebacks(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from captchalab.parallel import pool_map

        def slow(i):
            time.sleep(0.2)
            return i

        for i in pool_map(slow, range(200), workers=2, chunksize=1):
            print(i, flush=True)
        """
    )
    # a shell's background job ignores SIGINT, and Python keeps an inherited SIG_IGN: give the child the default
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        proc.stdout.readline()  # the pool is running
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group gets it
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - started < 8  # the ~20 s of jobs left are dropped, not run
    assert "KeyboardInterrupt" in err and "ForkProcess" not in err and "SpawnProcess" not in err


def test_cache_interrupted_leaves_no_partial_file(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import captchalab.data.cache as cache
    from captchalab.imaging import Preprocess

    def interrupted(items, total=None, description=""):  # noqa: ANN001, ANN202
        for _ in items:
            raise KeyboardInterrupt

    monkeypatch.setattr(cache, "track", interrupted)
    items = read_labelled_images(tiny_data)[:8]
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(items, Preprocess(16, 48), tmp_path / "cache", "train", workers=2)
    assert list((tmp_path / "cache").iterdir()) == []


def test_resume_and_export_after_the_data_moved(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    run_cli("ocr", "train", str(data), "--out", str(run), "--max-epochs", "1", "--batch-size", "64",
            "--size", "48x16")  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    result = run_cli("ocr", "train", str(other), "--out", str(run), "--resume", "--max-epochs", "2", check=False)
    assert result.returncode == 2 and f"was trained on {data.resolve()}" in result.stderr_text

    moved = tmp_path / "moved"
    data.rename(moved)
    result = run_cli("ocr", "train", str(data), "--out", str(run), "--resume", "--max-epochs", "2", check=False)
    assert result.returncode == 2 and "give its new place as DATA" in result.stderr_text
    run_cli("ocr", "train", str(moved), "--out", str(run), "--resume", "--max-epochs", "2")
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["data"] == str(moved.resolve())

    shutil.rmtree(moved)  # gone for good: the export reads the test images the training cached
    run_cli("ocr", "export", str(run), "--out", str(tmp_path / "bundle"))
    assert (tmp_path / "bundle" / "model.onnx").is_file()
    shutil.rmtree(run / "cache")
    result = run_cli("ocr", "export", str(run), "--out", str(tmp_path / "bundle2"), check=False)
    assert result.returncode == 2 and "no longer there" in result.stderr_text
    assert "Traceback" not in result.stderr_text


@pytest.mark.parametrize("line", ["{image}\t 12\n", "{image}\t12 \n", '{{"image": "{image}", "label": "12\\t"}}\n'])
def test_labels_with_outer_spaces_refused(tiny_data: Path, tmp_path: Path, line: str) -> None:
    suffix = ".jsonl" if line.startswith("{{") else ".tsv"
    labels = tmp_path / f"labels{suffix}"
    labels.write_text(line.format(image=_one_image(tiny_data)), encoding="utf-8")
    with pytest.raises(CaptchalabError, match=f"{labels}:1: label .* starts or ends with a space"):
        read_labelled_images(labels)


def test_eval_with_every_image_missing_one_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.tsv"
    labels.write_text("nope1.png\t123\nnope2.png\t456\n", encoding="utf-8")
    result = run_cli("ocr", "eval", "default", str(labels), check=False)
    assert result.returncode == 2
    assert result.stderr_text.strip().splitlines() == [
        f"error: {labels}: none of the 2 images could be read; first problem: {tmp_path / 'nope1.png'}: no such file"
    ]
