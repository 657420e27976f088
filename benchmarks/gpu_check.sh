#!/usr/bin/env bash
# One-shot GPU check for issue 5, in priority order, each part time-boxed so a failure cannot hide the rest:
#   1-2. bench_train, bce, 64 px, batch 64 and batch 1024 (reference, GANStep eager, GANStep + cuda_graphs)
#   3.   bench_train, wgan-gp (n_critic 5; gp_every 1 and 4), 64 px, batch 64
#   4.   the train stage (accelerate launch -m stages.train), digits at 64 px, tracking off, eager and cuda_graphs
#   5.   wgan-gp at batch 1024;  6. torch.compile probe
# Usage: OUT=dir benchmarks/gpu_check.sh          (on the GPU machine, from the repository root)
#        OUT=dir benchmarks/gpu_check.sh --tiny   (CPU smoke test of this script: tiny sizes, --device cpu)
# Writes at most 8 files to $OUT: env.txt, all.log, bench_*.json (4), train.json, compile.log.
set -uo pipefail
OUT=${OUT:?set OUT to an output directory}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/all.log") 2>&1

if [[ ${1:-} == --tiny ]]; then
  NET=(--device cpu --image-size 16 --width 8 --z-dim 16 --rounds 2 --warmup 1)
  B64=(--batch 16 --steps 2) B1024=(--batch 32 --steps 2) GP=(--batch 16 --gp-steps 1) GP1024=(--batch 32 --gp-steps 1)
  SIZE=16 STEPS=8 TBATCH=32 T=300 PROBE=(--device cpu --image-size 16 --width 8 --batch 8 --iters 2)
  export ACCELERATE_USE_CPU=true
else
  NET=(--device cuda --image-size 64)
  B64=(--batch 64 --steps 200 --rounds 7) B1024=(--batch 1024 --steps 20 --rounds 5)
  GP=(--batch 64 --gp-steps 30 --rounds 5) GP1024=(--batch 1024 --gp-steps 4 --rounds 3)
  SIZE=64 STEPS=400 TBATCH=256 T=100 PROBE=(--batch 64)
fi

section() { echo; echo "=== $* ($(date +%T))"; }
bench() {  # name, args...
  local name=$1; shift
  section "bench $name: python -m benchmarks.bench_train $*"
  timeout "$T" "$PY" -m benchmarks.bench_train "$@" --json "$OUT/bench_$name.json" || echo "bench $name: exit $?"
}

section env
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'accelerate', accelerate.__version__); import torch.cuda as c; \
print(c.get_device_name() if c.is_available() else 'no cuda')"
  "$PY" -c "import mlflow" 2>/dev/null && echo "mlflow present" || echo "mlflow absent (as expected on the GPU image)"
} | tee "$OUT/env.txt"

section "graph check: cuda_graphs trains exactly as eager does (fp32 and bf16)"
GRAPHS=both  # a crash in capture can poison the process: then the benches leave the graph variants out
if [[ ${1:-} != --tiny ]]; then
  for mp in no bf16; do
    timeout 60 "$PY" -m benchmarks.graph_check --mixed-precision $mp --steps 10; rc=$?
    echo "graph_check $mp: exit $rc"
    (( rc == 0 || rc == 1 )) || GRAPHS=off
  done
fi

bench b64 "${NET[@]}" "${B64[@]}" --cases bce --profile --cuda-graphs $GRAPHS --ref-data both
bench b1024 "${NET[@]}" "${B1024[@]}" --cases bce --profile --cuda-graphs $GRAPHS --ref-data both
bench wgangp_b64 "${NET[@]}" "${GP[@]}" --cases wgan-gp --cuda-graphs $GRAPHS

section "train stage: digits at $SIZE px, batch $TBATCH, $STEPS steps, tracking off"
WORK=$(mktemp -d)
"$PY" -m stages.prepare --out "$WORK/prepared" --set data.image_size=$SIZE || echo "prepare: exit $?"
for graphs in false true; do
  if [[ $graphs == true && $GRAPHS == off ]]; then echo "skipping the cuda_graphs=true run"; continue; fi
  D="$WORK/run_$graphs"
  SET=(--set data.image_size=$SIZE --set tracking.enabled=false --set train.steps=$STEPS --set train.batch_size=$TBATCH
       --set train.log_every_steps=$((STEPS / 4)) --set train.checkpoint_every_steps=$((STEPS / 2))
       --set train.sample_every_steps=$((STEPS / 2)) --set train.cuda_graphs=$graphs)
  echo "accelerate launch -m stages.train ... ${SET[*]}"
  start=$(date +%s%N)
  timeout "$T" "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --dynamo_backend no \
    -m stages.train --prepared "$WORK/prepared" --models "$D/models" --metrics "$D/train.json" --plots "$D/plots" \
    --run-file "$D/run.json" --checkpoints "$D/checkpoints" --tensorboard "$D/tb" "${SET[@]}" \
    || echo "train (cuda_graphs=$graphs): exit $?"
  ms=$((($(date +%s%N) - start) / 1000000))
  echo "$graphs $ms" >> "$WORK/walls"
done
"$PY" - "$WORK" "$OUT/train.json" <<'EOF_PY'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), {}
for line in (work / "walls").read_text().splitlines():
    graphs, ms = line.split()
    m = work / f"run_{graphs}" / "train.json"
    out[f"cuda_graphs={graphs}"] = {"process_wall_s": int(ms) / 1000,
                                    "metrics": json.loads(m.read_text()) if m.exists() else None}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
EOF_PY

bench wgangp_b1024 "${NET[@]}" "${GP1024[@]}" --cases wgan-gp --cuda-graphs $GRAPHS

section "torch.compile probe"
timeout 90 "$PY" -m benchmarks.compile_probe "${PROBE[@]}" 2>&1 | tee "$OUT/compile.log" || echo "probe: exit $?"
section done
