#!/usr/bin/env bash
# The GPU figures of eval/BENCHMARKS.md in one device call (issue 9), after the engine's selfcheck (issue
# 17: results, not speed; the random real-shape checkpoints it writes are the bench's): the server
# variant's targets at 256 and 1024 tokens; the stages in turn instead of overlapped; Qwen's decode ms/token
# per path; compile off (before: the eager path); DualCache on a GPU (compiled: its refreshes and block
# passes replayed as graphs), with the figures that decide DualCache on CUDA printed side by side.
# STEPS="selfcheck server decode" runs a subset. The selfcheck step is sized to ~4 minutes on an H200
# (fp32 engines, three loads with warm-up) plus writing the checkpoints the first time.
# Carry .whl (transformers 5.24.0, platformdirs: the device image has 5.17) and .gpu/data (the
# tokenizers and the HumanEval single-line file, copied from ../shared/data). Logs go to $OUT.
# Locally, to check the script itself: DEVICE=cpu CONFIG=small SAMPLES=1 REPEATS=1 bash eval/gpu/check.sh
set -uo pipefail
OUT=${OUT:-/tmp/fim-gpu-out}
DEVICE=${DEVICE:-cuda}; CONFIG=${CONFIG:-real}; SAMPLES=${SAMPLES:-8}; REPEATS=${REPEATS:-2}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=${PY:-python3}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
M=${MODELS:-/tmp/fim-random-$CONFIG}; D=${DATA:-.gpu/data}
BENCH="$PY -m fim_lsp.bench --random-config $CONFIG --models-dir $M --data-dir $D --device $DEVICE"
STEPS=${STEPS:-selfcheck server dualcache sequential decode eager}
RAN=""
step() {  # name, command...: full log under $OUT, the tables (stdout) here
  local name=$1; shift
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local t=$SECONDS
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; local rc=$?; [ $rc = 0 ] && RAN="$RAN $name"
  echo "=== $name: exit $rc, $((SECONDS - t)) s"; cat "$OUT/$name.out"; [ $rc = 0 ] || tail -25 "$OUT/$name.err"
}
step selfcheck timeout 540 $PY -m fim_lsp.selfcheck --device $DEVICE --random-config $CONFIG --models-dir $M --data-dir $D
step server $BENCH --variants server --samples "$SAMPLES" --repeats "$REPEATS" --json "$OUT/server.json"
# the same requests with DualCache's block passes (graphed): the one open choice, so right after the server
step dualcache $BENCH --variants server --dllm-cache-refresh 8 --samples "$SAMPLES" --repeats "$REPEATS" --json "$OUT/dualcache.json"
if [[ "$RAN" == *" server"*" dualcache"* ]]; then  # the figures that decide it, side by side
  $PY - "$OUT/server.json" "$OUT/dualcache.json" <<'PYEOF'
import json, sys
full, dual = (json.load(open(f))["meta"]["server_targets"] for f in sys.argv[1:])
for key, c in full.items():
    print(f"{key:<24} full passes {c['measured']:.3f}  DualCache {dual[key]['measured']:.3f}  (target {c['limit']})")
better = all(dual[k]["measured"] <= full[k]["measured"] for k in full)
print("DualCache on CUDA:", "better or equal on every target: drop DEVICE_PROFILES' editor/cuda entry" if better
      else "not better on every target: keep full passes")
PYEOF
fi
step sequential $BENCH --variants server --overlap off --samples "$SAMPLES" --repeats 1 --json "$OUT/sequential.json"
step decode timeout 300 $PY -m fim_lsp.bench.decode --random-config $CONFIG --models-dir $M --data-dir $D \
  --device $DEVICE --tokens 128 --repeats 3
step eager $BENCH --variants server --compile off --context-tokens 256 --samples 4 --repeats 1 --json "$OUT/eager.json"
