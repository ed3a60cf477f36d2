#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or attach to it), copy and install this checkout on
# every worker (`make install-tpu`: the pinned set plus jax[tpu]), check that JAX computes on the
# TPU on every worker (fails at once, naming the fix, when it does not), prepare the data on every
# worker, run `python -m jima_jax.main` on all workers at once (jax.distributed reads the slice
# from the TPU metadata), and stream worker 0's log.
#
#   launch/tpu_pod.sh --name jima-v4 --zone us-central2-b --accelerator-type v4-32 --create \
#       -- --config configs/iu_xray.py --workdir /mnt/shared/runs/iu [--config.key=value ...]
#
# Everything after `--` goes to jima_jax.main unchanged (the same configs as every other launch).
# Checkpoints are written by every worker: --workdir must be storage all workers share, or pass
# --config.train.checkpoint_dir=gs://bucket/run (logs and results stay on worker 0).
# --dry-run prints every command (gcloud and local) instead of running it.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [options] -- MAIN_FLAGS...
  --name NAME              TPU VM slice name (required)
  --zone ZONE              its zone (required)
  --project PROJECT        GCP project (default: gcloud's configured project)
  --accelerator-type TYPE  slice type when creating it (default: v4-32)
  --version VERSION        TPU VM runtime when creating it (default: tpu-ubuntu2204-base)
  --create                 create the slice if it does not exist (default: attach only)
  --spot                   create it as a Spot VM
  --remote-dir DIR         checkout location on the workers, under $HOME (default: jima_jax)
  --python PYTHON          the workers' Python >= 3.11 for the venv (default: python3)
  --skip-install           the workers already hold this checkout and its venv
  --skip-prepare           the data is already prepared on every worker
  --dry-run                print the commands, run nothing
EOF
  exit 2
}

name="" zone="" project="" accelerator=v4-32 version=tpu-ubuntu2204-base
create=0 spot=0 remote_dir=jima_jax python=python3 install=1 prepare=1 dry_run=0
main_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --zone) zone=${2:?--zone needs a value}; shift 2 ;;
    --project) project=${2:?--project needs a value}; shift 2 ;;
    --accelerator-type) accelerator=${2:?--accelerator-type needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --remote-dir) remote_dir=${2:?--remote-dir needs a value}; shift 2 ;;
    --python) python=${2:?--python needs a value}; shift 2 ;;
    --create) create=1; shift ;;
    --spot) spot=1; shift ;;
    --skip-install) install=0; shift ;;
    --skip-prepare) prepare=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "error: unknown option $1 (jima_jax.main flags go after --)" >&2; usage ;;
  esac
done
[[ -n $name && -n $zone ]] || { echo "error: --name and --zone are required." >&2; usage; }
[[ ${#main_args[@]} -gt 0 ]] || { echo "error: no jima_jax.main flags after -- (at least --config and --workdir)." >&2; usage; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
where=("--zone=$zone")
[[ -n $project ]] && where+=("--project=$project")
tpu=(gcloud compute tpus tpu-vm)

# Prints a command the way a shell would read it back (single quotes where needed).
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+="$arg "; else out+="'${arg//\'/\'\\\'\'}' "; fi
  done
  echo "${out% }"
}

run() {
  show "$@"
  ((dry_run)) || "$@"
}

# The main.py flags, quoted for the remote shell.
printf -v flags_q '%q ' "${main_args[@]}"

# 1. attach to the slice, or create it
create_cmd=("${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator"
            "--version=$version")
((spot)) && create_cmd+=(--spot)
if ((dry_run)); then
  show "${tpu[@]}" describe "$name" "${where[@]}"
  if ((create)); then echo "# only if the slice does not exist yet:"; show "${create_cmd[@]}"; fi
elif ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  if ((create)); then
    run "${create_cmd[@]}"
  else
    echo "error: TPU VM $name not found in $zone; pass --create to create it." >&2
    exit 1
  fi
else
  echo "attaching to TPU VM $name ($zone)"
fi

# 2. copy this checkout to every worker and install it there (a venv with jax[tpu]; make is
#    installed first where the image lacks it)
if ((install)); then
  tarball=${TMPDIR:-/tmp}/jima_jax_$$.tar.gz
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./runs \
    -C "$root" .
  run "${tpu[@]}" scp "$tarball" "$name:jima_jax.tar.gz" --worker=all "${where[@]}"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="set -e; mkdir -p $remote_dir; \
tar -xzf jima_jax.tar.gz -C $remote_dir; cd $remote_dir; command -v make >/dev/null || \
{ sudo apt-get update -qq && sudo apt-get install -y -qq make; }; make install-tpu PYTHON=$python"
  ((dry_run)) || rm -f "$tarball"
fi

# 3. JAX must compute on the TPU on every worker (with a CPU-only jax it would train on the CPU)
if ! run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="cd $remote_dir && .venv/bin/python -m jima_jax.accelerator tpu"; then
  echo "error: JAX does not compute on tpu on every worker of $name (the lines above say why);" \
    "nothing was prepared or trained. Fix: rerun without --skip-install (it runs make" \
    "install-tpu on every worker), or run make install-tpu in ~/$remote_dir on each." >&2
  exit 3
fi

# 4. prepare the data on every worker (each has its own disk; skip when data_dir is shared and done)
if ((prepare)); then
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="cd $remote_dir && .venv/bin/python -m jima_jax.main ${flags_q}--mode=prepare"
fi

# 5. start training on every worker at once (in the background, so a dropped ssh does not kill it)
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="cd $remote_dir && \
TF_CPP_MIN_LOG_LEVEL=2 nohup .venv/bin/python -m jima_jax.main --distributed=tpu ${flags_q% } \
> ~/jima_run.log 2>&1 < /dev/null & echo \$! > ~/jima_run.pid"

# 6. stream worker 0's log until its process ends (other workers: ~/jima_run.log on each)
run "${tpu[@]}" ssh "$name" --worker=0 "${where[@]}" \
  --command="tail --pid=\$(cat ~/jima_run.pid) -n +1 -f ~/jima_run.log"
