"""Side-by-side speed of two variants of a shipped model, interleaved on the same inputs so that a noisy machine
moves both alike.

    python benchmarks/ab.py ocr  [--rounds 2]                  # int8 default vs its fp32 original, auto vs any
    python benchmarks/ab.py grid --grids DIR [--count 200]     # default grid bundle with vs without word pictures
    python benchmarks/ab.py rule --grids DIR [--count 200]     # default grid bundle, context rule vs margin rule
    python benchmarks/ab.py split --grids DIR [--count 200]    # cutting a grid: split_grid vs guess + split_cells
    python benchmarks/ab.py blas --grids DIR [--count 200]     # default grid bundle, numpy's BLAS on 1 thread vs as is

``ocr``: one image one thread (median ms) and batched throughput (2 workers, img/s) on 2,000 captcha-library images
(4 chars a-z0-9, seed 9001). ``grid``: per 9-cell grid from PNG bytes, the two solvers alternating grid by grid, on
1 and 2 threads; ``rule`` and ``blas`` likewise. ``split``: the layout guess and the cut of decoded grids, in one scan
(``split_grid``, what the solver does) vs two (``guess_layout`` then ``split_cells``). Writes
benchmarks/results/ab-<what>.json, or ``--out`` (e.g. to keep a run made while the machine was busy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ocr import SETS, latency_ms, png_set, throughput  # noqa: E402

from captchalab.grid import read_grid_manifest  # noqa: E402
from captchalab.runtime.bundle import MANIFEST, default_bundle_path, load_bundle  # noqa: E402
from captchalab.runtime.clip import ClipModel  # noqa: E402
from captchalab.runtime.grid import GridSolver  # noqa: E402
from captchalab.runtime.grid_layout import guess_layout, split_cells, split_grid  # noqa: E402
from captchalab.runtime.ocr import OcrReader  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def variant(task: str, folder: Path, edit) -> Path:  # noqa: ANN001
    """A copy of the default ``task`` bundle in ``folder`` with ``edit(manifest)`` applied to its manifest."""
    shutil.copytree(default_bundle_path(task), folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    return folder


def ocr_ab(rounds: int, tmp: Path) -> dict:
    def fp32(manifest: dict) -> None:
        manifest["files"]["model"] = "model.fp32.onnx"

    models = {"int8": "default", "fp32": str(variant("ocr", tmp / "fp32", fp32))}
    images, _ = png_set(SETS["captcha 160x60, 4 chars a-z0-9"][0], 2000)
    rows = []
    for round_ in range(rounds):
        for precision, model in models.items():
            for charset in ("auto", "any"):
                reader = OcrReader(model, threads=1, case_sensitive=False, charset=charset)
                row = {"round": round_, "precision": precision, "charset": charset,
                       "latency_median_ms": latency_ms(reader.read, images, 400)["median_ms"],
                       "img_per_s": throughput(reader, images, 256, 2)["end_to_end_img_per_s"]}  # fmt: skip
                rows.append(row)
                print(f"round {round_} {precision} {charset:4s}: {row['latency_median_ms']:.3f} ms, "
                      f"{row['img_per_s']:.0f} img/s", flush=True)  # fmt: skip
    return {"images": len(images), "rows": rows}


def grid_ab(grids: Path, count: int, tmp: Path) -> dict:
    def no_pictures(manifest: dict) -> None:
        manifest["files"].pop("pictures", None)

    return solvers_ab({"with pictures": "default", "without pictures": str(variant("grid", tmp / "text", no_pictures))},
                      grids, count)  # fmt: skip


def rule_ab(grids: Path, count: int, tmp: Path) -> dict:
    def margin(manifest: dict) -> None:
        manifest["decision"]["rule"] = "margin"

    return solvers_ab({"context rule": "default", "margin rule": str(variant("grid", tmp / "margin", margin))},
                      grids, count)  # fmt: skip


def nine_cell_payloads(grids: Path, count: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, prompt) of the first ``count`` 3x3 grids."""
    root, rows = read_grid_manifest(grids)
    return [((root / r["image"]).read_bytes(), r["prompt"]) for r in rows if r.get("layout") == "3x3"][:count]


def summarise(times: dict[str, list[float]], threads: int) -> dict[str, dict[str, float]]:
    """Median / p95 ms of each variant's solves, printed one line each."""
    rows = {name: {"median_ms": statistics.median(t), "p95_ms": float(np.percentile(t, 95))}
            for name, t in times.items()}  # fmt: skip
    for name, row in rows.items():
        print(f"{threads} thread(s), {name:16s}: median {row['median_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms")
    return rows


def blas_ab(grids: Path, count: int, tmp: Path) -> dict:
    """The default solver with numpy's BLAS on one thread vs as configured, in alternating blocks of ``count`` grids
    (not grid by grid: a BLAS pool left spinning by one variant would slow the other's next grid)."""
    payloads = nine_cell_payloads(grids, count)
    limits = {"BLAS on 1 thread": 1, "BLAS as is": None}
    result = {"grids": len(payloads), "blocks": 3, "threads": {}}
    for threads in (1, 2):
        solver = GridSolver(ClipModel(load_bundle("default", "grid"), threads=threads))
        for data, prompt in payloads:  # warm-up; fills the prompt caches
            solver.solve(prompt, image=data, layout="3x3")
        times: dict[str, list[float]] = {name: [] for name in limits}
        for _ in range(result["blocks"]):
            for name, limit in limits.items():
                solver.blas_threads = limit
                for data, prompt in payloads:
                    started = time.perf_counter()
                    solver.solve(prompt, image=data, layout="3x3")
                    times[name].append((time.perf_counter() - started) * 1000)
        result["threads"][threads] = summarise(times, threads)
    return result


def solvers_ab(models: dict[str, str], grids: Path, count: int) -> dict:
    """Median / p95 ms per 9-cell grid of each grid bundle in ``models``, alternating grid by grid."""
    payloads = nine_cell_payloads(grids, count)
    result = {"grids": len(payloads), "threads": {}}
    for threads in (1, 2):
        solvers = {name: GridSolver(ClipModel(load_bundle(m, "grid"), threads=threads)) for name, m in models.items()}
        for solver in solvers.values():  # warm-up; fills the prompt caches
            for data, prompt in payloads:
                solver.solve(prompt, image=data, layout="3x3")
        times: dict[str, list[float]] = {name: [] for name in solvers}
        for data, prompt in payloads * 2:
            for name, solver in solvers.items():
                started = time.perf_counter()
                solver.solve(prompt, image=data, layout="3x3")
                times[name].append((time.perf_counter() - started) * 1000)
        result["threads"][threads] = summarise(times, threads)
    return result


def split_ab(grids: Path, count: int) -> dict:
    from PIL import Image

    root, rows = read_grid_manifest(grids)
    images = [Image.open(root / r["image"]).convert("RGB") for r in rows[:count]]
    variants = {"split_grid (one scan)": split_grid,
                "guess_layout + split_cells": lambda grid: split_cells(grid, *guess_layout(grid))}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(2):
        for image in images:
            for name, cut in variants.items():
                started = time.perf_counter()
                cut(image)
                times[name].append((time.perf_counter() - started) * 1000)
    result = {"grids": len(images), "median_ms": {name: statistics.median(t) for name, t in times.items()}}
    for name, ms in result["median_ms"].items():
        print(f"{name:28s}: median {ms:.2f} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ocr", "grid", "rule", "split", "blas"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--grids", type=Path, help="grid: held-out grids (manifest.jsonl), as benchmarks/grid.py")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/ab-<what>.json)")
    args = parser.parse_args()
    if args.what != "ocr" and not args.grids:
        parser.error(f"{args.what} needs --grids")
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "ocr":
            result = ocr_ab(args.rounds, Path(tmp))
        elif args.what in ("grid", "rule", "blas"):
            result = {"grid": grid_ab, "rule": rule_ab, "blas": blas_ab}[args.what](args.grids, args.count, Path(tmp))
        else:
            result = split_ab(args.grids, args.count)
    out = args.out or RESULTS / f"ab-{args.what}.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
