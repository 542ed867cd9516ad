#!/usr/bin/env bash
# GPU check of wtal on one CUDA device, no network; at most 10 minutes (the steps' time limits
# add up to 600 s), typically 3-5:
#   1. the CUDA tests of the suite (pytest -m gpu);
#   2. training throughput on CUDA (benchmarks/bench_train.py --device cuda, 50 videos);
#   3. feature extraction throughput, GPU vs CPU: benchmarks/bench_features.py on each device
#      (when it has --device), and `wtal features` on a few synthetic videos written here,
#      timed on cuda and on cpu (videos/min and sampled frames/s);
#   4. `wtal infer --device cuda` on those videos with a 2-epoch run trained on their features.
# Every step runs under its own time limit; a failing step is reported and the others still run.
# One summary at the end; the exit status is 0 only if every step passed.
#
# Usage, from anywhere:  bash benchmarks/gpu_check.sh        (PYTHON=... to pick the interpreter)
# Outputs (logs, videos, features, run) go to $GPU_CHECK_OUT (default: a new temporary folder).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
VIDEOS=4          # synthetic videos for the extraction timing
SECONDS_EACH=8    # their length: 8 s at 25 fps = 200 sampled frames, 13 snippets each
SAMPLE_FPS=25     # the extractor's sampling rate (FeatureSpec.fps default)

summary=()
failed=0
note() { summary+=("$1"); }

# step NAME LIMIT_S CMD...: run CMD under a time limit, its output in $OUT/NAME.log (and on screen).
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start rc
    start=$(date +%s.%N)
    set +e
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    ELAPSED=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    STATUS=$rc
    return 0
}

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: '$PY' cannot import torch; install wtal's dependencies first" >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" -c "import torch; print('torch', torch.__version__, 'built with CUDA', torch.version.cuda)" >&2
    echo "gpu_check: torch sees no CUDA device (CPU-only torch build, no driver, or" \
        "CUDA_VISIBLE_DEVICES hides it); this script checks the GPU path, nothing was run" >&2
    exit 2
fi
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t wtal-gpu-check.XXXXXX)}
mkdir -p "$OUT"
echo "wtal GPU check: outputs in $OUT"
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import torch

p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
note "device: $(cat "$OUT/device.txt")"

# 1. CUDA tests. pytest exits 5 when no test carries the gpu mark: reported, not a failure.
step pytest_gpu 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
case $STATUS in
    0) note "pytest -m gpu: passed ($(tail -n 1 "$OUT/pytest_gpu.log"), ${ELAPSED}s)" ;;
    5) note "pytest -m gpu: no test is marked gpu (nothing to run)" ;;
    *) note "pytest -m gpu: FAILED (exit $STATUS, see $OUT/pytest_gpu.log)"; failed=1 ;;
esac

# 2. Training throughput on CUDA (seconds per 200-video epoch, by batching mode).
step bench_train 120 "$PY" benchmarks/bench_train.py --device cuda --videos 50 --repeats 1
if [ "$STATUS" = 0 ]; then
    note "bench_train --device cuda (s per 200-video epoch, ${ELAPSED}s):"
    while IFS= read -r line; do note "    $line"; done < <(grep -E "x$" "$OUT/bench_train.log")
else
    note "bench_train --device cuda: FAILED (exit $STATUS, see $OUT/bench_train.log)"; failed=1
fi

# 3a. bench_features.py, on each device when it takes --device.
if [ ! -f benchmarks/bench_features.py ]; then
    note "bench_features.py: not in this checkout (skipped)"
elif "$PY" benchmarks/bench_features.py --help 2>/dev/null | grep -q -- "--device"; then
    for device in cuda cpu; do
        step "bench_features_$device" 75 "$PY" benchmarks/bench_features.py --device "$device"
        if [ "$STATUS" = 0 ]; then
            note "bench_features --device $device (${ELAPSED}s): see $OUT/bench_features_$device.log"
        else
            note "bench_features --device $device: FAILED (exit $STATUS)"; failed=1
        fi
    done
else
    # CPU only: the GPU side of extraction is timed by `wtal features` below
    step bench_features 75 "$PY" benchmarks/bench_features.py --threads "$(nproc)"
    note "bench_features.py (CPU only, no --device flag, $(nproc) threads, ${ELAPSED}s):"
    while IFS= read -r line; do note "    $line"; done < <(tail -n 8 "$OUT/bench_features.log")
    [ "$STATUS" = 0 ] || { note "bench_features: FAILED (exit $STATUS)"; failed=1; }
fi

# 3b. `wtal features` on synthetic videos, cuda vs cpu (random I3D weights: timing only).
if ! "$PY" -c "import av" 2>/dev/null; then
    note "wtal features timing: PyAV missing (pip install 'wtal[video]'), skipped"
    failed=1
else
    "$PY" - "$OUT/videos" "$VIDEOS" "$SECONDS_EACH" <<'EOF'
import sys
from pathlib import Path

import av
import numpy as np

out, count, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(count):
    with av.open(str(out / f"video{i}.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for t in range(25 * seconds):  # a moving bright square on noise
            img = rng.integers(0, 60, (240, 320, 3), dtype=np.uint8)
            x = (8 * t) % 280
            img[100:140, x : x + 40] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
EOF
    frames=$((VIDEOS * SECONDS_EACH * SAMPLE_FPS))
    declare -A took=()
    for device in cuda cpu; do
        rm -rf "$OUT/features_$device"
        limit=$([ "$device" = cuda ] && echo 60 || echo 90)
        step "features_$device" "$limit" "$PY" -m wtal features "$OUT/videos" \
            "$OUT/features_$device" --extractor i3d-rgb --weights none --device "$device" --subset validation
        if [ "$STATUS" = 0 ]; then
            took[$device]=$ELAPSED
            note "$(awk -v t="$ELAPSED" -v n="$VIDEOS" -v f="$frames" -v d="$device" 'BEGIN {
                printf "wtal features --device %s: %d videos in %.1f s = %.1f videos/min, ", d, n, t, 60 * n / t
                printf "%.0f frames/s (sampled; model load included)", f / t }')"
        else
            note "wtal features --device $device: FAILED (exit $STATUS, see $OUT/features_$device.log)"
            failed=1
        fi
    done
    if [ -n "${took[cuda]:-}" ] && [ -n "${took[cpu]:-}" ]; then
        note "$(awk -v g="${took[cuda]}" -v c="${took[cpu]}" \
            'BEGIN { printf "extraction speed-up cuda vs cpu: %.1fx", c / g }')"
    fi

    # 4. wtal infer on CUDA with a 2-epoch run trained on the extracted features.
    if [ -n "${took[cuda]:-}" ]; then
        data="$OUT/features_cuda"
        "$PY" - "$data" <<'EOF'
import json
import sys
from pathlib import Path

# Label the extracted videos for a smoke training run: every video has class "square".
root = Path(sys.argv[1])
ann = json.loads((root / "annotations.json").read_text())
for i, video in enumerate(ann["database"].values()):
    video["subset"] = "validation" if i % 2 == 0 else "test"
    video["labels"] = ["square"]
    middle = [0.25 * video["duration"], 0.75 * video["duration"]]
    video["annotations"] = [{"label": "square", "segment": middle}]
(root / "annotations.json").write_text(json.dumps(ann))
EOF
        cat > "$OUT/smoke.yaml" <<'EOF'
# 2 epochs of the base stage: a smoke run, not a model
train: {epochs: 2, warmup_epoch: 0, lr_milestones: [], lr_values: [1.0e-4], batch_size: 2}
loss: {spl_milestones: [1, 2]}
pseudo: {enabled: false}
EOF
        step train_cuda 45 "$PY" -m wtal train "$OUT/smoke.yaml" --data "$data" \
            --run-dir "$OUT/run" --device cuda --quiet
        if [ "$STATUS" = 0 ]; then
            step infer_cuda 45 "$PY" -m wtal infer "$OUT"/videos/*.mp4 --run "$OUT/run" \
                --out "$OUT/infer" --device cuda --weights none
            if [ "$STATUS" = 0 ]; then
                note "wtal infer --device cuda: $VIDEOS videos in ${ELAPSED}s -> $OUT/infer"
            else
                note "wtal infer --device cuda: FAILED (exit $STATUS)"; failed=1
            fi
        else
            note "wtal train --device cuda (2 epochs): FAILED (exit $STATUS)"; failed=1
        fi
    fi
fi

echo
echo "================ wtal GPU check: summary ================"
printf '%s\n' "${summary[@]}"
if [ "$failed" = 0 ]; then
    echo "result: all steps passed (logs in $OUT)"
else
    echo "result: SOME STEPS FAILED (logs in $OUT)"
fi
exit "$failed"
