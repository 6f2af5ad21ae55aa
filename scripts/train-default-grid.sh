#!/usr/bin/env bash
# Reproduce the shipped default grid bundle (src/captchalab/assets/grid-default) from scratch on a 2-core CPU.
# Stage 1 (6 emoji sets, from ImageNet): icons ~1 min, cells ~3 min, training ~40 min.
# Stage 2 (+3 training-only sets, fine-tuned from stage 1): cells ~2 min, training ~26 min; export + calibration ~1 min.
set -euo pipefail
DATA=${DATA:-data/grid}
RUNS=${RUNS:-runs}
cl=captchalab
python scripts/build_grid_icons.py --out data/grid-icons            # npm pack + cairosvg (pip install '.[build]')

# stage 1: 100 styled cells per word from each word's training styles (its held-out test style is never drawn here)
$cl grid cells "$DATA/cells-train" --per-word 100 --seed 1 --split train --workers 2
$cl grid dataset build "$DATA/cells-train" --out "$DATA/ds" --split 0.9,0.05,0.05
$cl grid train "$DATA/ds" --out "$RUNS/grid-stage1" --init imagenet --augment --epochs 4 --batch-size 128 --lr 1e-3 \
    --warmup 100 --wd 0.01 --valid-every 100 --save-every 50
$cl grid export "$RUNS/grid-stage1" --out "$RUNS/grid-stage1-bundle" --aliases data/grid-icons/words.json

# stage 2: 120 cells per word over nine sets (the three extra ones never for a word whose test style is of their family)
$cl grid cells "$DATA/cells-v2" --per-word 120 --seed 11 --split train --workers 2 \
    --styles twemoji,noto,fluent-emoji-flat,fluent-emoji,fxemoji,emojione,noto-v1,emojione-monotone,fluent-emoji-high-contrast
$cl grid dataset build "$DATA/cells-v2" --out "$DATA/ds-v2" --split 0.9,0.05,0.05
$cl grid train "$DATA/ds-v2" --out "$RUNS/grid-v2" --init "$RUNS/grid-stage1-bundle" --augment --epochs 3 \
    --batch-size 128 --lr 3e-4 --warmup 50 --wd 0.01 --valid-every 100 --save-every 50
$cl grid export "$RUNS/grid-v2" --out "$RUNS/grid-v2-bundle" --aliases data/grid-icons/words.json \
    --licenses scripts/grid-default-licenses.json \
    --data-statement "48,000 styled cells (120 per word) of 400 emoji words, drawn by captchalab grid cells from 9 open emoji sets (Twemoji, Noto, Noto v1, Fluent Emoji flat, 3D and high-contrast, Firefox OS Emoji, Emoji One and Emoji One monotone), each word's held-out style (and extra sets of its family) excluded; names from emojibase-data (CLDR zh/en). Fine-tuned from the previous default (40,000 cells of the first 6 sets)"

# decision rule: re-fitted on grids of a style the model never saw (OpenMoji) and of words the benchmark's new-style
# set does not use (--skip-words 60 vs its --words 60), so that it holds on pictures unlike the training data
$cl grid generate "$DATA/openmoji-calib" --count 600 --styles openmoji --split all --skip-words 60 --seed 901
$cl grid calibrate "$RUNS/grid-v2-bundle" "$DATA/openmoji-calib" --out src/captchalab/assets/grid-default

# pictures: 8 prototypes per word from fresh styled training cells (no held-out style), blended with the text
# similarity; blend and rules re-fitted on the same OpenMoji grids
$cl grid cells "$DATA/cells-pictures" --per-word 64 --seed 31 --split train --workers 2 \
    --styles twemoji,noto,fluent-emoji-flat,fluent-emoji,fxemoji,emojione,noto-v1,emojione-monotone,fluent-emoji-high-contrast
$cl grid calibrate src/captchalab/assets/grid-default "$DATA/openmoji-calib" --out "$RUNS/grid-default-pictures" \
    --pictures "$DATA/cells-pictures"
rm -r src/captchalab/assets/grid-default && cp -r "$RUNS/grid-default-pictures" src/captchalab/assets/grid-default
