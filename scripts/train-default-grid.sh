#!/usr/bin/env bash
# Reproduce the shipped default grid bundle (src/captchalab/assets/grid-default) from scratch on a 2-core CPU.
# Icons ~1 min, cells ~3 min, dataset ~0.5 min, training ~40 min (6 epochs of 36k cells), export ~1 min.
set -euo pipefail
DATA=${DATA:-data/grid}
RUN=${RUN:-runs/grid-default}
cl=captchalab
python scripts/build_grid_icons.py --out data/grid-icons            # npm pack + cairosvg (pip install '.[build]')
# 100 styled cells per word from each word's training styles (its held-out test style is never drawn here)
$cl grid cells "$DATA/cells-train" --per-word 100 --seed 1 --split train --workers 2
$cl grid dataset build "$DATA/cells-train" --out "$DATA/ds" --split 0.9,0.05,0.05
$cl grid train "$DATA/ds" --out "$RUN" --init imagenet --augment --epochs 6 --batch-size 128 --lr 1e-3 \
    --warmup 100 --wd 0.01 --valid-every 100 --save-every 50
$cl grid export "$RUN" --out src/captchalab/assets/grid-default --aliases data/grid-icons/words.json \
    --licenses scripts/grid-default-licenses.json \
    --data-statement "40,000 styled cells (100 per word) of 400 emoji words, drawn by captchalab grid cells from 6 open emoji sets (Twemoji, Noto, Fluent Emoji flat and 3D, Firefox OS Emoji, Emoji One), each word's held-out style excluded; names from emojibase-data (CLDR zh/en)"
