#!/usr/bin/env bash
# Several jaxtrain processes on this machine, each with simulated CPU devices: multi-host training on a laptop.
#
#   launch/multiprocess_cpu.sh 2 4 --config configs/digits_cnn.py --workdir runs/mp
#
# Arguments: NUM_PROCESSES DEVICES_PER_PROCESS, then the usual jaxtrain arguments. Process 0 writes the
# workdir's logs; all of them train their shard of each batch and save checkpoints together. If one process
# dies, the others stop within JAXTRAIN_HEARTBEAT_TIMEOUT seconds (default 30) and the script exits non-zero.
# The interpreter is $PYTHON, else the active virtual environment's python, else python3.
set -euo pipefail
num_processes=${1:?usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS jaxtrain-arguments...}
devices=${2:?usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS jaxtrain-arguments...}
shift 2
port=${JAXTRAIN_PORT:-$((20000 + RANDOM % 20000))}
export JAXTRAIN_COORDINATOR="127.0.0.1:${port}" JAXTRAIN_NUM_PROCESSES="${num_processes}"
export XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}"

python=${PYTHON:-$(command -v python || command -v python3)}

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM EXIT
for ((id = 0; id < num_processes; id++)); do
  JAXTRAIN_PROCESS_ID=${id} "${python}" -m jaxtrain.main "$@" &
  pids+=($!)
done
# The first process to fail takes the others down (they would wait for it in a collective otherwise).
for ((left = num_processes; left > 0; left--)); do
  status=0
  wait -n || status=$?
  if ((status != 0)); then
    exit "${status}"
  fi
done
