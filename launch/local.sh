#!/usr/bin/env bash
# One host, all its GPUs, one process: the `auto` strategy shards each batch over every visible device.
#
#   launch/local.sh --config configs/cifar10_resnet18.py --config.data.data_dir=~/tensorflow_datasets
#   CUDA_VISIBLE_DEVICES=0,1 launch/local.sh --config configs/digits_cnn.py   # a subset of the GPUs
#
# The environment below is what JAX on GPUs wants: XLA may take most of the GPU memory up front (the
# default, fastest), NCCL uses the fastest path it finds, and the compiler's latency-hiding scheduler
# overlaps the gradient all-reduce with compute.
set -euo pipefail
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
exec python -m jaxtrain.main "$@"
