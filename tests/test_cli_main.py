"""The CLI's entry point: what every command shares (Ctrl-C)."""

import signal
import subprocess
import time

from tests.conftest import CLI


def test_ctrl_c_says_interrupted_and_exits_130():
    # the interactive loop waits on stdin: a safe place to be interrupted
    process = subprocess.Popen(
        [*CLI, "ocr", "predict"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a shell's background job ignores SIGINT, and Python keeps an inherited SIG_IGN: give the child the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while b"Image path" not in process.stdout.read1(4096) and time.monotonic() < deadline:  # ready for input
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
