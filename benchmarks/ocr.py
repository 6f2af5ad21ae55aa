"""OCR benchmark: accuracy of a bundle on fresh seeded captcha-library sets, latency and throughput,
with ddddocr measured side by side in the same run when it is installed (pip install 'captchalab[bench]').

    python benchmarks/ocr.py [--model default] [--count 2000] [--out benchmarks/results/ocr.json]

Images are rendered in memory with seeds that the default model never saw in training (its sets used 101-105),
encoded to PNG bytes, and read back from bytes by every reader, so decoding is part of what is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from captchalab.data.charset import parse_charset_spec
from captchalab.data.fonts import cjk_fonts, latin_fonts
from captchalab.data.generate import GenerateConfig, iter_samples
from captchalab.evaluation import ocr_report
from captchalab.ocr import OcrReader

SETS = {  # name -> (images, the set's alphabet for the "alphabet given" readings)
    "captcha 160x60, 4 chars a-z0-9": (
        GenerateConfig(parse_charset_spec("lower+digits"), 4, 4, seed=9001),
        "lower+digits",
    ),
    "captcha 160x60, 4 chars A-Z0-9": (
        GenerateConfig(parse_charset_spec("upper+digits"), 4, 4, seed=9002),
        "upper+digits",
    ),
    "captcha 160x60, 5-6 chars a-z0-9": (
        GenerateConfig(parse_charset_spec("lower+digits"), 5, 6, seed=9003),
        "lower+digits",
    ),
    "captcha 160x60, 4-6 chars a-zA-Z0-9": (GenerateConfig(parse_charset_spec("alnum"), 4, 6, seed=9004), "alnum"),
    "builtin 160x60, 4-6 chars a-zA-Z0-9": (
        GenerateConfig(parse_charset_spec("alnum"), 4, 6, style="builtin", seed=9005),
        "alnum",
    ),
}


def png_set(config: GenerateConfig, count: int) -> tuple[list[bytes], list[str]]:
    images, labels = [], []
    for label, image in iter_samples(config, count):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(buffer.getvalue())
        labels.append(label)
    return images, labels


def development_sets(count: int, offset: int = -1000) -> Iterator[tuple[str, list[bytes], list[str]]]:
    """(name, PNG bytes, labels) of the development sets: the benchmark's five sets with seeds 8001-8005 instead of
    9001-9005, on which choices are made so that they never touch the benchmark's numbers (``offset`` moves the
    seeds elsewhere, e.g. -980 for the check sets 8021-8025)."""
    for name, (config, _) in SETS.items():
        yield name, *png_set(dataclasses.replace(config, seed=config.seed + offset), count)


def int8_gate(
    work: Path, manifest: dict, role: str, fp32_file: str, count: int, max_drop: float, threads: int | None = None
) -> dict[str, dict[str, float]]:
    """Read the development sets (case-insensitively) with the bundle in ``work`` twice: with its int8 file for
    ``role`` ('model' or 'refiner'; ``manifest`` names it) and with the fp32 original ``fp32_file`` in its place. Per
    set the two accuracies and their agreement; SystemExit (nothing is written) when int8 reads a set more than
    ``max_drop`` worse. ``work/manifest.json`` is left as ``manifest``."""
    readers = {}
    for precision, files in (("fp32", {**manifest["files"], role: fp32_file}), ("int8", manifest["files"])):
        (work / "manifest.json").write_text(json.dumps(dict(manifest, files=files)), encoding="utf-8")
        readers[precision] = OcrReader(work, threads=threads, case_sensitive=False)
    report = {}
    for name, images, labels in development_sets(count):
        texts = {k: [r.text for r in reader.read_batch(images, 256, workers=2)] for k, reader in readers.items()}
        row = {k: ocr_report(v, labels, False)["exact_accuracy"] for k, v in texts.items()}
        row["agreement"] = float(np.mean([a == b for a, b in zip(texts["fp32"], texts["int8"])]))
        report[name] = row
        print(f"{name:38s} fp32 {row['fp32']:.4f}  int8 {row['int8']:.4f}  agreement {row['agreement']:.4f}")
        if row["fp32"] - row["int8"] > max_drop:
            raise SystemExit(f"int8 refused: {name} falls from {row['fp32']:.4f} to {row['int8']:.4f}")
    return report


def ddddocr_reader(threads: int | None, alphabet: str | None = None) -> Callable[[bytes], str] | None:
    """ddddocr's classifier, its onnxruntime session capped at ``threads`` (None: its own default); with
    ``alphabet`` (a charset spec), limited to it (letters in both cases: scoring ignores case, and ddddocr's own
    charset is mostly lower case)."""
    try:
        import ddddocr
        import onnxruntime
    except ImportError:
        return None
    original = onnxruntime.InferenceSession

    def capped(path, *args, **kwargs):  # noqa: ANN001, ANN202
        if threads:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            kwargs.setdefault("sess_options", options)
        return original(path, *args, **kwargs)

    onnxruntime.InferenceSession = capped
    try:
        ocr = ddddocr.DdddOcr(show_ad=False)
    finally:
        onnxruntime.InferenceSession = original
    if not alphabet:
        return ocr.classification
    # ddddocr 1.6's set_ranges only drops characters outside the range after decoding; its documented way to read
    # within a range is to decode the probabilities yourself, which this does (greedy CTC over the allowed classes)
    chars = parse_charset_spec(alphabet)
    allowed = set(chars + chars.swapcase())

    def read_within(image: bytes) -> str:
        result = ocr.classification(image, probability=True)
        charset = result["charset"]
        keep = np.array([i for i, c in enumerate(charset) if c == "" or c in allowed])
        probs = np.asarray(result["probabilities"], dtype=np.float32).reshape(-1, len(charset))[:, keep]
        best = keep[probs.argmax(1)]
        return "".join(charset[k] for j, k in enumerate(best) if k != 0 and (j == 0 or k != best[j - 1]))

    return read_within


def latency_ms(read: Callable[[bytes], object], images: list[bytes], repeats: int) -> dict:
    for image in images[:20]:
        read(image)
    times = []
    for image in images[:repeats]:
        started = time.perf_counter()
        read(image)
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "images": len(times)}


def throughput(reader: OcrReader, images: list[bytes], batch_size: int, workers: int, rounds: int = 3) -> dict:
    """Images per second reading PNG bytes in batches (decode + preprocess + inference + decode): median of rounds.

    ``workers`` threads each decode and run whole batches on a one-thread session (see OcrReader.read_batch).
    """
    reader.read_batch(images[: batch_size * workers], batch_size, workers)
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        reader.read_batch(images, batch_size, workers)
        rates.append(len(images) / (time.perf_counter() - started))
    return {
        "end_to_end_img_per_s": statistics.median(rates),
        "rounds": rates,
        "batch_size": batch_size,
        "workers": workers,
        "session_threads": reader.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--count", type=int, default=2000, help="images per accuracy set")
    parser.add_argument("--latency-images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-ddddocr", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ocr.json")
    args = parser.parse_args()

    # Scored case-insensitively (ddddocr answers in lower case), so our reader folds letter case too.
    # Ours reads as shipped (charset 'auto': the alphabet inferred per image among the model's training alphabets);
    # speed is measured on this reader too.
    ours = OcrReader(args.model, threads=1, case_sensitive=False)
    anything = OcrReader(args.model, threads=1, case_sensitive=False, charset="any")
    # a bundle with a refiner of look-alike characters is also read without it, to show what the refiner adds
    unrefined = OcrReader(args.model, threads=1, case_sensitive=False, refine=False) if ours.refiner else None
    # the opt-in slower, more accurate reading (--average-shifts): unsure captchas read again moved by a pixel
    steady = OcrReader(args.model, threads=1, case_sensitive=False, average_shifts=True)
    peer = None if args.no_ddddocr else ddddocr_reader(threads=1)
    results: dict = {
        "model": args.model,
        "manifest_sha256": ours.bundle.manifest.get("sha256"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            # the builtin style draws with every font it finds: its sets differ between font sets
            "builtin_fonts": [Path(f).name for f in (*latin_fonts(), *cjk_fonts())],
        },
        "accuracy": {},
        "latency_one_thread": {},
    }
    first_set = None
    for name, (config, alphabet) in SETS.items():
        images, labels = png_set(config, args.count)
        first_set = first_set or images
        row: dict = {"images": len(labels), "alphabet": alphabet}

        def score(texts: list[str]) -> float:
            return ocr_report(texts, labels, case_sensitive=False)["exact_accuracy"]  # noqa: B023

        # "auto" (ours as shipped): the alphabet inferred per image; "any": the reader may answer any character it
        # knows; "alphabet given": told the set's alphabet (our --charset, ddddocr's set_ranges), as a user who knows
        # their captchas would
        given = OcrReader(args.model, threads=1, case_sensitive=False, charset=alphabet)
        shipped = ocr_report([r.text for r in ours.read_batch(images, args.batch_size, 2)], labels, False)
        row["captchalab"], row["captchalab_ci95"] = shipped["exact_accuracy"], shipped["exact_accuracy_ci95"]
        row["captchalab_any"] = score([r.text for r in anything.read_batch(images, args.batch_size, workers=2)])
        row["captchalab_alphabet_given"] = score([r.text for r in given.read_batch(images, args.batch_size, workers=2)])
        row["captchalab_average_shifts"] = score([r.text for r in steady.read_batch(images, args.batch_size, 2)])
        if unrefined:
            row["captchalab_no_refiner"] = score([r.text for r in unrefined.read_batch(images, args.batch_size, 2)])
        if peer:
            row["ddddocr"] = score([peer(i) for i in images])
            peer_given = ddddocr_reader(threads=1, alphabet=alphabet)
            row["ddddocr_alphabet_given"] = score([peer_given(i) for i in images])
        results["accuracy"][name] = row
        print(
            f"{name:38s} captchalab {row['captchalab']:.4f} [{row['captchalab_ci95'][0]:.4f}-"
            f"{row['captchalab_ci95'][1]:.4f}] (any {row['captchalab_any']:.4f}, "
            f"alphabet given {row['captchalab_alphabet_given']:.4f}"
            + f", average shifts {row['captchalab_average_shifts']:.4f}"
            + (f", no refiner {row['captchalab_no_refiner']:.4f})" if unrefined else ")")
            + (f"   ddddocr {row['ddddocr']:.4f} (given {row['ddddocr_alphabet_given']:.4f})" if peer else ""),
            flush=True,
        )

    results["latency_one_thread"]["captchalab"] = latency_ms(ours.read, first_set, args.latency_images)
    if unrefined:
        results["latency_one_thread"]["no refiner"] = latency_ms(unrefined.read, first_set, args.latency_images)
    results["latency_one_thread"]["avg shifts"] = latency_ms(steady.read, first_set, args.latency_images)
    if peer:
        results["latency_one_thread"]["ddddocr"] = latency_ms(peer, first_set, args.latency_images)
        results["latency_ratio_ddddocr_over_captchalab"] = (
            results["latency_one_thread"]["ddddocr"]["median_ms"]
            / results["latency_one_thread"]["captchalab"]["median_ms"]
        )
    for who, row in results["latency_one_thread"].items():
        print(f"latency one image, one thread  {who:10s} median {row['median_ms']:.3f} ms  p95 {row['p95_ms']:.3f} ms")
    if "latency_ratio_ddddocr_over_captchalab" in results:
        print(f"captchalab is {results['latency_ratio_ddddocr_over_captchalab']:.1f}x faster than ddddocr (median)")
    results["throughput_two_cores"] = throughput(ours, first_set, args.batch_size, workers=2)
    results["throughput_two_cores_average_shifts"] = throughput(steady, first_set, args.batch_size, workers=2)
    tp, tp_steady = results["throughput_two_cores"], results["throughput_two_cores_average_shifts"]
    print(
        f"batched throughput, 2 worker threads: {tp['end_to_end_img_per_s']:.0f} img/s from PNG bytes"
        f" ({tp_steady['end_to_end_img_per_s']:.0f} with --average-shifts)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
