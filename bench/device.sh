#!/usr/bin/env bash
# The device benchmark in one go: pretraining throughput, FLOPs per image, MFU and peak memory
# for dense and sparse encoding, fp32 and bf16, eager and compiled, at 224, 384, 512 and
# 1024x832 px (the largest with and without activation checkpointing), and the cache loader's
# rate with 8 workers. Prints one Markdown table (bench/table.py) built from the JSON lines.
#
#   bash bench/device.sh              # one GPU (H100/H200 class): under 5 minutes
#   bash bench/device.sh --dry-run    # every cell once on the CPU at tiny sizes: a test of the script
#   options: --out FILE (keep the JSON lines; default: a temporary file), --budget SECONDS
#            (for all cells together; default 280 on the GPU, 3600 for the dry run)
#
# Each cell is one process (its own peak memory), with a few warm-up and timed steps. A cell that
# fails or overruns its time limit gets a row saying so; once the budget is spent the remaining
# cells are skipped, each with a row. The compiled cells come last because compiling costs the most.
#
# Window sizes: the sparse encoder needs every stage's map to tile into its windows (sparse_swin),
# which the presets' window 7 does only at 224 px. So 384 px runs with window 12 and 512 px with
# window 8, dense and sparse alike. At 1024x832 the last map is 32x26 tokens: no window but 2 tiles
# both sides, so the sparse path cannot run there; its cells run at 1024x768 with window 8 instead,
# next to a dense cell of the same shape, and 1024x832 itself is measured dense with window 7.
# torch.compile runs at 224 px in bf16 only (about a minute per cell on a GPU host); the sparse
# path's data-dependent window layout makes Dynamo split its graph.

set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT=""
BUDGET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/device.sh: unknown option $1 (expected --dry-run, --out FILE, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "${PYTHON:-}" ]; then :
elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
else PYTHON=python3
fi
if [ -z "$OUT" ]; then
    OUT=$(mktemp -t vismae-device-XXXXXX.jsonl)
else
    : > "$OUT"
fi
ERRORS=$(mktemp -t vismae-device-errors-XXXXXX)
LINES=$(mktemp -t vismae-device-lines-XXXXXX)
trap 'rm -f "$ERRORS" "$LINES"' EXIT

if [ "$DRY_RUN" = 1 ]; then
    # The CPU: the tiny preset (window 4 tiles every map below), batch 2, one step, no warm-up.
    # bf16 autocast is about 18x slower than fp32 on a CPU without bf16 units, so only the two
    # 224 px eager cells keep bf16 (the code path, at tiny size); the others run fp32.
    # Compiling uses the aot_eager backend: it traces the same graphs through Dynamo and
    # AOTAutograd but skips Inductor's C++ code generation, which takes minutes per graph here.
    COMMON=(--preset tiny --device cpu --threads 1 --warmup 0 --steps 1)
    COMPILE=(--compile --compile-backend aot_eager)
    CELL_LIMIT=900
    BUDGET=${BUDGET:-3600}
    LOADER=(--images 8 --batch 4 --epochs 1)
else
    COMMON=(--preset vismae --device cuda --warmup 3 --steps 20)
    COMPILE=(--compile)
    CELL_LIMIT=150
    BUDGET=${BUDGET:-280}
    LOADER=(--images 256 --batch 32 --epochs 2)
fi

START=$SECONDS

record_error() {  # label, message: a row for a cell without a result
    "$PYTHON" -c 'import json, sys; print(json.dumps({"label": sys.argv[1], "error": sys.argv[2]}))' "$1" "$2" >> "$OUT"
}

run_cell() {  # label, command...: run within the cell limit and the budget left, keep its JSON line
    local label=$1; shift
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 5 ]; then
        record_error "$label" "skipped: the ${BUDGET} s budget was spent"
        return
    fi
    local limit=$((left < CELL_LIMIT ? left : CELL_LIMIT))
    echo "[device.sh $((SECONDS - START)) s] $label" >&2
    timeout "$limit" "$@" > "$LINES" 2> "$ERRORS"
    local status=$? line
    line=$(grep '^{' "$LINES" | tail -n 1)
    if [ "$status" = 0 ] && [ -n "$line" ]; then
        echo "$line" >> "$OUT"
    elif [ "$status" = 124 ]; then
        record_error "$label" "stopped at its ${limit} s limit (cell limit ${CELL_LIMIT} s, or the budget left)"
    else
        local reason
        reason=$(grep -v '^[[:space:]]*$' "$ERRORS" | tail -n 1 | cut -c1-160)
        record_error "$label" "failed (exit $status): ${reason:-no message}"
    fi
}

# pretrain LABEL SIZE BATCH PRECISION WINDOW [more bench/pretrain.py flags]
pretrain() {
    local label=$1 size=$2 batch=$3 precision=$4 window=$5
    shift 5
    local extra=("$@")
    if [ "$DRY_RUN" = 1 ]; then
        case "$size" in
            224) size=64 ;;
            384|512) size=128 ;;
            *x*) size=128x64 ;;  # keeps a non-square image
        esac
        batch=2
        window=""
        case "$label" in *"bf16 224") ;; *) precision=fp32 ;; esac
    fi
    local args=("${COMMON[@]}" --size "$size" --batch "$batch" --precision "$precision")
    [ -n "$window" ] && args+=(--window "$window")
    run_cell "$label" "$PYTHON" bench/pretrain.py "${args[@]}" "${extra[@]}" --label "$label"
}

loader() {  # LABEL SIZE: the cache loader with 8 workers
    local label=$1 size=$2
    [ "$DRY_RUN" = 1 ] && size=64
    run_cell "$label" "$PYTHON" bench/loader.py --size "$size" --workers 8 "${LOADER[@]}" --label "$label"
}

#        label                            size      batch precision window flags
pretrain "dense fp32 224"                 224       64    fp32      ""
pretrain "sparse fp32 224"                224       64    fp32      ""     --sparse
pretrain "dense bf16 224"                 224       64    bf16      ""
pretrain "sparse bf16 224"                224       64    bf16      ""     --sparse
pretrain "dense bf16 384"                 384       32    bf16      12
pretrain "sparse bf16 384"                384       32    bf16      12     --sparse
pretrain "dense bf16 512"                 512       16    bf16      8
pretrain "sparse bf16 512"                512       16    bf16      8      --sparse
pretrain "dense bf16 1024x832"            1024x832  8     bf16      ""
pretrain "dense bf16 1024x832 ckpt"       1024x832  8     bf16      ""     --grad-checkpointing
pretrain "dense bf16 1024x768 ckpt"       1024x768  8     bf16      8      --grad-checkpointing
pretrain "sparse bf16 1024x768"           1024x768  8     bf16      8      --sparse
pretrain "sparse bf16 1024x768 ckpt"      1024x768  8     bf16      8      --sparse --grad-checkpointing
loader   "loader 224"                     224
loader   "loader 1024x832"                1024x832
pretrain "dense bf16 224 compiled"        224       64    bf16      ""     "${COMPILE[@]}"
pretrain "sparse bf16 224 compiled"       224       64    bf16      ""     --sparse "${COMPILE[@]}"

echo "[device.sh $((SECONDS - START)) s] done; JSON lines in $OUT" >&2
"$PYTHON" bench/table.py "$OUT"
