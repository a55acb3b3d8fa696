#!/bin/bash
# torchrun command lines for fastmine (copy the one you need). Every command takes the usual
# `fastmine mine [CONFIG.yaml] key=value ...` arguments after `-m fastmine.cli mine`.
# On CPU-only machines add device=cpu (gloo); on GPUs each rank takes cuda:LOCAL_RANK.
set -euo pipefail
case "${1:-help}" in
  one-node)      # data parallel, 2 processes on this machine
    shift; torchrun --standalone --nproc-per-node=2 -m fastmine.cli mine "$@" ;;
  one-node-fsdp2) # + the frozen generator sharded over the processes
    shift; torchrun --standalone --nproc-per-node=2 -m fastmine.cli mine "$@" dist.shard=fsdp2 ;;
  one-node-zero3) # + DeepSpeed ZeRO-3 partitioning (pip install 'fastmine[deepspeed]')
    shift; torchrun --standalone --nproc-per-node=2 -m fastmine.cli mine "$@" dist.shard=zero3 \
      dist.deepspeed_config=launch/deepspeed/zero3.json ;;
  node)          # multi-node: run on every node with NODE_RANK=0..NNODES-1, MASTER_ADDR=node 0
    shift; torchrun --nnodes="${NNODES:-2}" --node-rank="${NODE_RANK:?set NODE_RANK}" \
      --nproc-per-node="${NPROC_PER_NODE:-1}" --master-addr="${MASTER_ADDR:?set MASTER_ADDR}" \
      --master-port="${MASTER_PORT:-29500}" -m fastmine.cli mine "$@" ;;
  *) sed -n '2,4p' "$0"; echo "usage: $0 one-node|one-node-fsdp2|one-node-zero3|node [fastmine mine args]" ;;
esac
