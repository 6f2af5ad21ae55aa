#!/usr/bin/env bash
# Add the refiner of look-alike characters (0 / O / o) to the shipped default OCR bundle.
# About 230k generated captchas in which each character is one of the group with probability 0.3 (~10 min), crops
# collected by the default model (~5 min), 9 epochs of a small CNN (~80 min on a 2-core CPU; if interrupted, run
# the refine line again with --resume); then gated on the development sets (seeds 8001-8005: no set may lose more
# than 0.3 pt) before it replaces the shipped bundle, and made int8 (scripts/quantize-default-ocr-refiner.py, its
# own gate).
set -euo pipefail
DATA=${DATA:-data/ocr-refiner}
RUN=${RUN:-runs/ocr-default}  # named like the shipped bundle: the manifest takes the folder's name
cl=captchalab
$cl ocr generate "$DATA/a" --count 70000 --style captcha --charset upper+digits --length 4   --favour 0O:0.3  --seed 111 --workers 2
$cl ocr generate "$DATA/b" --count 40000 --style captcha --charset alnum        --length 4-6 --favour 0Oo:0.3 --seed 112 --workers 2
$cl ocr generate "$DATA/c" --count 15000 --style captcha --charset lower+digits --length 4-6 --favour 0o:0.3  --seed 113 --workers 2
$cl ocr generate "$DATA/d" --count 35000 --style builtin --charset alnum        --length 4-6 --favour 0Oo:0.3 --seed 114 --workers 2
$cl ocr generate "$DATA/e" --count 70000 --style captcha --charset upper+digits --length 4   --favour 0O:0.3  --seed 115 --workers 2
STATEMENT="230,000 synthetic 160x60 captchas made by captchalab ocr generate (scripts/train-default-ocr-refiner.sh), each character one of the look-alikes with probability 0.3 (--favour): 140k captcha-library 4-char A-Z0-9 (0O; seeds 111 and 115), 40k captcha-library 4-6-char a-zA-Z0-9 (0Oo; 112), 15k captcha-library 4-6-char a-z0-9 (0o; 113), 35k builtin 4-6-char a-zA-Z0-9 (0Oo; 114); crops of every 0/O/o the default model read in them"
$cl ocr refine src/captchalab/assets/ocr-default "$DATA" --out "$RUN" --chars 0Oo --epochs 9 --channels 32,64,96,128 --seed 0 \
    --data-statement "$STATEMENT"
python benchmarks/ocr_refiner_dev.py --model "$RUN"
rm -rf src/captchalab/assets/ocr-default && cp -r "$RUN" src/captchalab/assets/ocr-default
python scripts/quantize-default-ocr-refiner.py  # int8 refiner, gated on the development sets; fp32 kept beside it
