"""How often the grid splitter gets generated grids wrong: the layout guessed (``--layout auto``), and every cell's
box against the geometry the manifest records (cell size, gutter, border; off by more than 1 px counts).

    python benchmarks/grid_split.py GRIDS... [--out benchmarks/results/grid-split.json]

GRIDS: folders written by ``captchalab grid generate`` (their manifest.jsonl has cell_size, gutter and border).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captchalab.data.gridgen import LAYOUTS
from captchalab.errors import CaptchalabError
from captchalab.grid import read_grid_manifest
from captchalab.imaging import load_image
from captchalab.runtime.grid_layout import GridLines, cell_boxes, guess_layout


def drawn_boxes(row: dict) -> list[tuple[int, int, int, int]]:
    rows, cols = LAYOUTS[row["layout"]]
    size, gutter, border = row["cell_size"], row["gutter"], row["border"]
    step = size + gutter
    return [(border + c * step, border + r * step, border + c * step + size, border + r * step + size)
            for r in range(rows) for c in range(cols)]  # fmt: skip


def check(folder: Path) -> dict:
    root, rows = read_grid_manifest(folder)
    counts = {"grids": len(rows), "refused": 0, "wrong_layout": 0, "wrong_boxes": 0}
    examples = []
    for row in rows:
        image = load_image(root / row["image"])
        shape = LAYOUTS[row["layout"]]
        lines = GridLines.of(image)
        try:
            guessed = guess_layout(image, lines)
            boxes = cell_boxes(image, *shape, lines)
        except CaptchalabError as exc:
            counts["refused"] += 1
            examples.append({"image": row["image"], "problem": str(exc)})
            continue
        if guessed != shape:
            counts["wrong_layout"] += 1
            examples.append({"image": row["image"], "problem": f"layout guessed {guessed}, drawn {shape}"})
        if any(max(abs(a - b) for a, b in zip(found, drawn)) > 1 for found, drawn in zip(boxes, drawn_boxes(row))):
            counts["wrong_boxes"] += 1
            examples.append({"image": row["image"], "problem": f"boxes {boxes[:3]}... drawn {drawn_boxes(row)[:3]}..."})
    return {**counts, "examples": examples[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid-split.json"))
    args = parser.parse_args()
    result = {str(folder): check(folder) for folder in args.grids}
    for folder, row in result.items():
        print(f"{folder}: {row['grids']} grids, {row['refused']} refused, {row['wrong_layout']} wrong layout, "
              f"{row['wrong_boxes']} wrong boxes")  # fmt: skip
    total = {k: sum(row[k] for row in result.values()) for k in ("grids", "refused", "wrong_layout", "wrong_boxes")}
    print("all: " + ", ".join(f"{k} {v}" for k, v in total.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"total": total, "sets": result}, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
