"""Bad input to ``captchalab ocr predict / eval``: one clear line each, the rest still read, exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture()
def few(tiny_data: Path, tmp_path: Path) -> Path:
    """Three labelled images in their own folder."""
    folder = tmp_path / "few"
    folder.mkdir()
    for image in sorted(tiny_data.glob("*.png"))[:3]:
        shutil.copy(image, folder / image.name)
    return folder


def test_predict_empty_folder_reports_and_goes_on(few: Path, tmp_path: Path) -> None:
    images = sorted(few.glob("*.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("ocr", "predict", str(images[0]), str(empty), str(images[1]), check=False)
    assert result.returncode == 2
    assert len(result.stdout_text.splitlines()) == 2
    assert f"{empty}: folder holds no images" in result.stderr_text
    assert "Traceback" not in result.stderr_text


def test_predict_folder_reports_a_broken_link(few: Path) -> None:
    (few / "00000-lost.png").symlink_to(few / "moved-away.png")
    result = run_cli("ocr", "predict", str(few), check=False)
    assert result.returncode == 2 and len(result.stdout_text.splitlines()) == 3
    assert result.stderr_text.strip() == f"error: {few / '00000-lost.png'}: broken symbolic link"


def test_predict_stdin_named_and_read_once(few: Path) -> None:
    result = run_cli("ocr", "predict", "-", input=b"hello", check=False)
    assert result.returncode == 2 and "<stdin>:" in result.stderr_text and "<bytes>" not in result.stderr_text
    good = sorted(few.glob("*.png"))[0].read_bytes()
    result = run_cli("ocr", "predict", "-", "-", input=good, check=False)
    assert result.returncode == 2 and len(result.stdout_text.splitlines()) == 1
    assert "only once" in result.stderr_text


def test_predict_reads_a_pipe(few: Path) -> None:
    from conftest import CLI

    image = sorted(few.glob("*.png"))[0]
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(image.read_bytes())  # a tiny PNG fits in the pipe's buffer
    try:
        command = [*CLI, "ocr", "predict", f"/dev/fd/{read_fd}"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, pass_fds=(read_fd,))
    finally:
        os.close(read_fd)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root reads mode-000 folders")
def test_predict_unreadable_folder_is_reported(few: Path, tmp_path: Path) -> None:
    locked = few / "locked"
    locked.mkdir()
    shutil.copy(sorted(few.glob("*.png"))[0], locked / "x.png")
    locked.chmod(0)
    try:
        command = ["ocr", "predict", str(few)]
        if os.geteuid() == 0:
            caps = "-dac_override,-dac_read_search"
            prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
            from conftest import CLI

            proc = subprocess.run([*prefix, *CLI, *command], capture_output=True, text=True, timeout=300)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            result = run_cli(*command, check=False)
            code, out, err = result.returncode, result.stdout_text, result.stderr_text
    finally:
        locked.chmod(0o755)
    assert code == 2
    assert len(out.splitlines()) == 3
    assert f"{locked}: cannot list folder" in err


def test_interactive_strips_quotes_json_and_exit_code(few: Path) -> None:
    image = sorted(few.glob("*.png"))[0]
    lines = f"\"{image}\"\n'{image}'\n{few}\n".encode()
    result = run_cli("ocr", "predict", "--json", input=lines, check=False)
    assert result.returncode == 2
    readings = [json.loads(line[line.index("{") :]) for line in result.stdout_text.splitlines() if "{" in line]
    assert [r["file"] for r in readings] == [str(image), str(image)]
    assert "is a folder" in result.stderr_text and "no such file" not in result.stderr_text


def test_eval_checks_report_path_first(few: Path, tmp_path: Path) -> None:
    result = run_cli("ocr", "eval", "default", str(few), "-o", str(tmp_path), check=False)
    assert result.returncode == 2 and "is a folder" in result.stderr_text
    assert "Traceback" not in result.stderr_text
    target = tmp_path / "new" / "deeper" / "report.json"
    run_cli("ocr", "eval", "default", str(few), "-o", str(target))
    report = json.loads(target.read_text(encoding="utf-8"))
    assert 0.0 <= report["char_accuracy"] <= 1.0
