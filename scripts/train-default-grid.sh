#!/usr/bin/env bash
# Reproduce the shipped default grid bundle (src/captchalab/assets/grid-default) from scratch on a 2-core CPU.
# Stage 1 (6 emoji sets, from ImageNet): icons ~1 min, cells ~3 min, training ~40 min.
# Stage 2 (+3 training-only sets, fine-tuned from stage 1): cells ~2 min, training ~26 min; export + calibration ~1 min.
# Stage 3 (+Streamline Emojis, a tenth set, training-only): cells ~4 min, training ~30 min.
# Stage 4 (fresh renderings of the same ten sets, fine-tuned from stage 3): cells ~4 min, training ~20 min.
set -euo pipefail
DATA=${DATA:-data/grid}
RUNS=${RUNS:-runs}
cl=captchalab
NINE=twemoji,noto,fluent-emoji-flat,fluent-emoji,fxemoji,emojione,noto-v1,emojione-monotone,fluent-emoji-high-contrast
TEN=$NINE,streamline-emojis
python scripts/build_grid_icons.py --out data/grid-icons            # npm pack + cairosvg (pip install '.[build]')

# One stage: styled training cells (each word's held-out test style is never drawn) -> dataset -> fine-tuning.
# stage NAME INIT EPOCHS LR WARMUP [grid cells options...]  ->  $RUNS/grid-NAME
stage() {
    local name=$1 init=$2 epochs=$3 lr=$4 warmup=$5
    shift 5
    $cl grid cells "$DATA/cells-$name" --split train --workers 2 "$@"
    $cl grid dataset build "$DATA/cells-$name" --out "$DATA/ds-$name" --split 0.9,0.05,0.05
    $cl grid train "$DATA/ds-$name" --out "$RUNS/grid-$name" --init "$init" --augment --epochs "$epochs" \
        --batch-size 128 --lr "$lr" --warmup "$warmup" --wd 0.01 --valid-every 100 --save-every 50
}

# stage 1: 100 cells per word from the six default sets, from ImageNet
stage stage1 imagenet 4 1e-3 100 --per-word 100 --seed 1
$cl grid export "$RUNS/grid-stage1" --out "$RUNS/grid-stage1-bundle" --aliases data/grid-icons/words.json

# stage 2: 120 cells per word over nine sets (the three extra ones never for a word whose test style is of their family)
stage v2 "$RUNS/grid-stage1-bundle" 3 3e-4 50 --per-word 120 --seed 11 --styles $NINE
$cl grid export "$RUNS/grid-v2" --out "$RUNS/grid-v2-bundle" --aliases data/grid-icons/words.json \
    --licenses scripts/grid-default-licenses.json \
    --data-statement "48,000 styled cells (120 per word) of 400 emoji words, drawn by captchalab grid cells from 9 open emoji sets (Twemoji, Noto, Noto v1, Fluent Emoji flat, colour and high-contrast, Firefox OS Emoji, Emoji One and Emoji One monotone), each word's held-out style (and extra sets of its family) excluded; names from emojibase-data (CLDR zh/en). Fine-tuned from the previous default (40,000 cells of the first 6 sets)"

# stage 3: 150 cells per word over ten sets (Streamline Emojis added; it is of no default set's family)
stage v3 "$RUNS/grid-v2-bundle" 3 2e-4 50 --per-word 150 --seed 41 --styles $TEN
$cl grid export "$RUNS/grid-v3" --out "$RUNS/grid-v3-bundle" --aliases data/grid-icons/words.json

# stage 4: the same ten sets, fresh renderings (another seed), two more epochs
stage v4 "$RUNS/grid-v3-bundle" 2 1.5e-4 50 --per-word 150 --seed 51 --styles $TEN
$cl grid export "$RUNS/grid-v4" --out "$RUNS/final/grid-v4" --aliases data/grid-icons/words.json \
    --licenses scripts/grid-default-licenses.json \
    --data-statement "60,000 styled cells (150 per word) of 400 emoji words, drawn by captchalab grid cells (seed 51) from 10 open emoji sets (Twemoji, Noto, Noto v1, Fluent Emoji flat, colour and high-contrast, Firefox OS Emoji, Emoji One and Emoji One monotone, Streamline Emojis), each word's held-out style (and extra sets of its family) excluded; names from emojibase-data (CLDR zh/en). Fine-tuned from stage 3 (60,000 cells of the same ten sets, seed 41), itself fine-tuned from stage 2 (48,000 cells of the first nine sets) and stage 1 (40,000 cells of the six default sets, from ImageNet)"

# decision rule: re-fitted on grids of a style the model never saw (OpenMoji) and of words the benchmark's new-style
# set does not use (--skip-words 60 vs its --words 60), so that it holds on pictures unlike the training data
$cl grid generate "$DATA/openmoji-calib" --count 600 --styles openmoji --split all --skip-words 60 --seed 901
$cl grid calibrate "$RUNS/final/grid-v4" "$DATA/openmoji-calib" --out "$RUNS/final/grid-v4-cal"

# pictures: 8 prototypes per word from fresh styled training cells (no held-out style), blended with the text
# similarity; blend and rules re-fitted on the same OpenMoji grids
$cl grid cells "$DATA/cells-pictures-v3" --per-word 64 --seed 31 --split train --workers 2 --styles $TEN
$cl grid calibrate "$RUNS/final/grid-v4-cal" "$DATA/openmoji-calib" --out "$RUNS/final/grid-v4-pictures" \
    --pictures "$DATA/cells-pictures-v3"

# context rule: a logistic model of each cell's margin among its grid's cells and of its likeness to the most alike
# other cell (runtime.grid_rules.CONTEXT_FEATURES), fitted on the OpenMoji grids and on
# as many grids of the training designs freshly rendered (seed 702; the benchmark's seen-design set is seed 700), so
# that it holds both on a new style and on the known ones; made the bundle's rule (chosen on the dev grids, seed 600)
# and on grids whose matching cells show different drawings of two designs the model never saw (OpenMoji and the
# monochrome Noto Emoji, words outside the benchmark's 60), since real grids do not repeat one picture; the text share
# stays the pictures step's 0.5 (fitting it here chose 0.25 by 4 of 1,800 grids and lost on every dev set)
$cl grid generate "$DATA/seen-calib" --count 600 --split train --seed 702 --styles $NINE
$cl grid generate "$DATA/distinct-calib" --count 600 --split all --styles openmoji,noto-emoji-mono --skip-words 60 \
    --seed 911
$cl grid calibrate "$RUNS/final/grid-v4-pictures" "$DATA/openmoji-calib" "$DATA/seen-calib" "$DATA/distinct-calib" \
    --out "$RUNS/final/grid-v4-context" --rule context --text-share 0.5
rm -r src/captchalab/assets/grid-default && cp -r "$RUNS/final/grid-v4-context" src/captchalab/assets/grid-default
