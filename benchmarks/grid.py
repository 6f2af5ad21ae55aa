"""Grid benchmark: solve rate and cell F1 of a bundle on held-out generated grids, every decision rule side by side,
zero-shot vs fine-tuned on a style the default never saw, and latency per 9-cell grid on 1 and 2 threads.

    python benchmarks/grid.py [--model default] [--grids DIR] [--new-style-grids DIR --finetuned BUNDLE]
                              [--seen-design-grids DIR] [--distinct-grids DIR...] [--out benchmarks/results/grid.json]

Without --grids it generates 1,000 grids (half 2x3, half 3x3) from each word's held-out icon style with seed 500:
cell images never seen in training, words seen. Needs the icon library (python scripts/build_grid_icons.py).
Those grids repeat one drawing in all their matching cells (a word has one held-out icon); --distinct-grids are
held-out grids whose matching cells show different drawings, as real grids do (``grid generate --split test
--add-styles ...`` with designs the model never saw).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from captchalab.export.grid_calibrate import fit_rule
from captchalab.export.grid_recalibrate import embed_grids, score_grids
from captchalab.grid import evaluate, read_grid_manifest
from captchalab.runtime.bundle import load_bundle
from captchalab.runtime.clip import ClipModel
from captchalab.runtime.grid import GridSolver
from captchalab.runtime.grid_rules import ALL_RULES


def generate(out: Path, count: int, seed: int, *extra: str) -> Path:
    command = [sys.executable, "-m", "captchalab", "grid", "generate", str(out), "--count", str(count),
               "--layout", "mixed", "--seed", str(seed), *extra]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "CAPTCHALAB_PROGRESS": "0"})
    return out


def oracles(model: str, grids: Path, rule: str) -> dict[str, float]:
    """Two upper bounds of ``rule`` on these grids. ``ranking``: share of grids whose matching cells all score above
    every other cell (the solve rate of a rule that knew how many cells match). ``fitted_here``: the solve rate of the
    rule's threshold and relative margin fitted on these very grids (what better calibration data could reach)."""
    solver = GridSolver(ClipModel(load_bundle(model, "grid")))
    embedded, truths, _ = embed_grids(solver, grids)
    scores = score_grids(solver, embedded)[rule]
    return {"ranking": float(np.mean([s[t].min() > s[~t].max() for s, t in zip(scores, truths)])),
            "fitted_here": fit_rule(scores, truths)[2] / len(truths)}  # fmt: skip


def accuracy(model: str, grids: Path) -> dict:
    """The calibrated rule's full report, and the solve rate of every other rule on the same grids."""
    report = evaluate(model, grids)
    bounds = oracles(model, grids, report["rule"])
    report["ranking_oracle"], report["rule_fitted_on_these_grids"] = bounds["ranking"], bounds["fitted_here"]
    report["by_rule"] = {}
    for rule in [r for r in load_bundle(model, "grid").manifest["decision"]["rules"] if r in ALL_RULES]:
        other = report if rule == report["rule"] else evaluate(model, grids, rule=rule)
        report["by_rule"][rule] = {k: other[k] for k in ("solve_rate", "cell_f1", "unsure_rate")}
    return report


def latency(model: str, grids: Path, threads: int, count: int) -> dict:
    """Median/p95 ms per 9-cell grid from PNG bytes (decode, split, embed, decide); the prompt's text vector is
    cached after its first use, as in a long-running solver."""
    root, rows = read_grid_manifest(grids)
    rows = [r for r in rows if r.get("layout") == "3x3"][:count]
    solver = GridSolver(ClipModel(load_bundle(model, "grid"), threads=threads))
    payloads = [((root / r["image"]).read_bytes(), r["prompt"]) for r in rows]
    for data, prompt in payloads[:20]:  # warm-up; also fills the prompt cache
        solver.solve(prompt, image=data, layout="3x3")
    for _, prompt in payloads:
        solver.model.embed_texts([prompt])
    times = []
    for data, prompt in payloads:
        started = time.perf_counter()
        solver.solve(prompt, image=data, layout="3x3")
        times.append((time.perf_counter() - started) * 1000)
    return {"threads": threads, "grids": len(times), "median_ms": statistics.median(times),
            "p95_ms": float(np.percentile(times, 95))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--grids", type=Path, help="held-out grids (manifest.jsonl); generated when omitted")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--new-style-grids", type=Path, help="grids in a style the model was not trained on")
    parser.add_argument("--finetuned", help="the model fine-tuned on that style (zero-shot vs fine-tuned)")
    parser.add_argument("--seen-design-grids", type=Path,
                        help="grids of the training designs, freshly styled (grid generate --split train)")  # fmt: skip
    parser.add_argument("--distinct-grids", type=Path, nargs="*", default=[],
                        help="held-out grids whose matching cells show different unseen drawings")  # fmt: skip
    parser.add_argument("--latency-grids", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        grids = args.grids or generate(Path(tmp) / "grids", args.count, 500, "--split", "test")
        result = {
            "model": args.model,
            "manifest_sha256": load_bundle(args.model, "grid").manifest.get("sha256"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "held_out_grids": {
                "folder": str(args.grids or "generated: --split test --seed 500"),
                **accuracy(args.model, grids),
            },  # fmt: skip
            "latency_9_cells": [latency(args.model, grids, t, args.latency_grids) for t in (1, 2)],
        }
        if args.new_style_grids:
            result["new_style"] = {"grids": str(args.new_style_grids),
                                   "zero_shot": accuracy(args.model, args.new_style_grids)}  # fmt: skip
            if args.finetuned:
                result["new_style"]["fine_tuned"] = {"model": args.finetuned,
                                                     **accuracy(args.finetuned, args.new_style_grids)}  # fmt: skip
        if args.seen_design_grids:
            result["seen_designs"] = {"folder": str(args.seen_design_grids),
                                      **accuracy(args.model, args.seen_design_grids)}  # fmt: skip
        if args.distinct_grids:
            result["distinct_drawings"] = [{"folder": str(folder), **accuracy(args.model, folder)}
                                           for folder in args.distinct_grids]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    held = result["held_out_grids"]
    print(f"held-out grids ({held['folder']}): solve rate {held['solve_rate']:.4f}, cell F1 {held['cell_f1']:.4f}, "
          f"rule {held['rule']}; ranking alone (k known) {held['ranking_oracle']:.4f}, rule fitted on these grids "
          f"{held['rule_fitted_on_these_grids']:.4f}")  # fmt: skip
    sure = [("held-out", held)] + [(row["folder"], row) for row in result.get("distinct_drawings", [])]
    for name, row in sure:
        solved, flagged = row["solve_rate_when_sure"], row["wrong_flagged_unsure"]  # None: no sure / no wrong answer
        print(f"  {name}: answers not flagged unsure solve {'n/a' if solved is None else f'{solved:.4f}'}; unsure "
              f"flags {'n/a' if flagged is None else f'{flagged:.1%}'} of the wrong answers "
              f"(unsure rate {row['unsure_rate']:.3f})")  # fmt: skip
    for rule, row in held["by_rule"].items():
        print(f"  rule {rule:9s}: solve rate {row['solve_rate']:.4f}, cell F1 {row['cell_f1']:.4f}")
    for design, row in sorted(held["per_design"].items(), key=lambda kv: kv[1]["solve_rate"]):
        print(f"  matching cells drawn in {design:18s}: solve rate {row['solve_rate']:.4f} ({row['grids']} grids)")
    for row in result["latency_9_cells"]:
        print(f"latency, 9-cell grid, {row['threads']} thread(s): median {row['median_ms']:.2f} ms, "
              f"p95 {row['p95_ms']:.2f} ms")  # fmt: skip
    if "new_style" in result:
        for name in ("zero_shot", "fine_tuned"):
            if name in result["new_style"]:
                row = result["new_style"][name]
                print(f"new style, {name}: solve rate {row['solve_rate']:.4f}, cell F1 {row['cell_f1']:.4f}")
    if "seen_designs" in result:
        row = result["seen_designs"]
        print(f"seen designs, new renderings: solve rate {row['solve_rate']:.4f}, cell F1 {row['cell_f1']:.4f}")
    for row in result.get("distinct_drawings", []):
        print(
            f"different unseen drawings ({row['folder']}): solve rate {row['solve_rate']:.4f}, cell F1 "
            f"{row['cell_f1']:.4f}; by rule "
            + ", ".join(f"{r} {v['solve_rate']:.4f}" for r, v in row["by_rule"].items())
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
