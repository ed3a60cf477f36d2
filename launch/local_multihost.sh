#!/usr/bin/env bash
# N processes x M simulated CPU devices on this machine, joined with jax.distributed and gloo
# collectives: the multi-host code path (per-process batch slices, global arrays, process-0-only
# writing, multi-process checkpoints) without a cluster. Same flags and configs as jima_jax.main:
#
#   launch/local_multihost.sh 2 2 --config configs/smoke.py --workdir runs/mh [--config.key=value ...]
#
# Process 0 prints to this terminal; process i > 0 logs to <workdir>/logs/process_<i>.log ($LOG_DIR
# overrides). If any process fails, or on Ctrl-C / SIGTERM, every process group is stopped.
# Environment: PYTHON (default: the repo's .venv, else python3), JIMA_COORDINATOR_PORT (default: a
# free port). Needs bash >= 4.3.
set -euo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS --config CONFIG [--workdir DIR] [main.py flags...]" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
num_processes=$1
devices=$2
shift 2
if ! [[ $num_processes =~ ^[1-9][0-9]*$ && $devices =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES ($num_processes) and DEVICES_PER_PROCESS ($devices) must be positive integers." >&2
  usage
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $root/.venv/bin/python ]]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi

workdir=""
prev=""
for arg in "$@"; do
  case $arg in
    --workdir=*) workdir=${arg#--workdir=} ;;
    *) [[ $prev == --workdir ]] && workdir=$arg ;;
  esac
  prev=$arg
done
log_dir=${LOG_DIR:-${workdir:+$workdir/logs}}
[[ -n $log_dir ]] || log_dir=$(mktemp -d "${TMPDIR:-/tmp}/jima_multihost.XXXXXX")
mkdir -p "$log_dir"

port=${JIMA_COORDINATOR_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# Each process gets exactly M CPU devices from --num_cpu_devices; a device count forced through
# XLA_FLAGS would fight it, so that one flag is dropped.
xla_flags=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")

pids=()
running() {  # a launched process that has not exited (an unreaped zombie has)
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}
stop_all() {
  # SIGTERM first: a training process saves its position at the next step boundary. One that is
  # blocked in a collective, waiting for a peer that died, never gets there: SIGKILL after
  # $STOP_GRACE_S seconds (default 20). Each process has its own group (setsid): its children go too.
  local pid i any
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < ${STOP_GRACE_S:-20}; i++)); do
    any=0
    for pid in "${pids[@]}"; do running "$pid" && any=1; done
    ((any)) || break
    sleep 1
  done
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

launcher=()
command -v setsid >/dev/null && launcher=(setsid)  # own process group: stop_all kills children too

for ((i = 0; i < num_processes; i++)); do
  cmd=("${launcher[@]}" "$PYTHON" -m jima_jax.main "$@"
       "--coordinator_address=127.0.0.1:$port" "--num_processes=$num_processes"
       "--process_id=$i" "--num_cpu_devices=$devices")
  if ((i == 0)); then
    JAX_PLATFORMS=cpu XLA_FLAGS=$xla_flags PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
      "${cmd[@]}" &
  else
    JAX_PLATFORMS=cpu XLA_FLAGS=$xla_flags PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
      "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

for ((k = 0; k < num_processes; k++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0)); then
    echo "error: a process exited with status $rc; stopping the others." >&2
    stop_all
    wait || true
    for ((i = 1; i < num_processes; i++)); do
      echo "---- $log_dir/process_$i.log (last lines)" >&2
      tail -n 20 "$log_dir/process_$i.log" >&2 || true
    done
    exit "$rc"
  fi
done
