"""runtime.blas: numpy's BLAS limited inside the block only."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from captchalab.runtime.blas import blas_threads


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in ThreadpoolController().info() if lib["user_api"] == "blas"]


def test_limit_holds_inside_the_block_and_is_undone_after() -> None:
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    before = _blas_threads()
    if not before:
        pytest.skip("numpy is built without a BLAS threadpoolctl can see")
    with blas_threads(1):
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_none_leaves_blas_as_configured() -> None:
    before = _blas_threads()
    with blas_threads(None):
        assert _blas_threads() == before
