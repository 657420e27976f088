#!/usr/bin/env bash
# Dry run of scripts/slurm_train.sbatch on this one machine, before queueing it: a 2-node job on loopback (CPU, gloo,
# one process per "node"), with stub `srun`/`scontrol`, in a throwaway copy of the repository, on 16 px digits for a
# few steps. It checks the script's launch line, the rendezvous and that training saw a world of 2 processes.
#   scripts/slurm_local_check.sh            (from anywhere; about a minute on 2 cores)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$W" 2>/dev/null) || true
mkdir -p "$W/bin"
printf '#!/usr/bin/env bash\necho 127.0.0.1\n' > "$W/bin/scontrol"
cat > "$W/bin/srun" <<'EOF'
#!/usr/bin/env bash
# Stub: one task per "node", all on this machine, each with its own SLURM_NODEID.
while [[ $1 == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do SLURM_NODEID=$n SLURM_PROCID=$n "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
EOF
chmod +x "$W/bin/scontrol" "$W/bin/srun"
cd "$W"
TINY=(--set data.image_size=16 --set model.z_dim=16 --set model.g_channels=8 --set model.d_channels=8
      --set train.steps=6 --set train.batch_size=32 --set train.log_every_steps=3 --set train.checkpoint_every_steps=3
      --set train.mixed_precision=no --set tracking.enabled=false)
python3 -m stages.prepare --out data/prepared --set data.image_size=16 >/dev/null
PATH="$W/bin:$PATH" SLURM_JOB_NUM_NODES=2 SLURM_JOB_NODELIST=stub SLURM_JOB_ID=$RANDOM GPUS_PER_NODE=1 \
  ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1 bash scripts/slurm_train.sbatch "${TINY[@]}"
python3 -c "
import json; m = json.load(open('metrics/train.json'))
assert m['world_size'] == 2, m
print('OK: 2 machines x 1 process, world size', m['world_size'], 'steps', m['steps'])"
