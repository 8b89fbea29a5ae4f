#!/bin/sh
# Which torch build to install: `deploy/torch_build.sh [auto|cpu|cuda]` prints `cpu` or the CUDA wheel tag
# (cu130, cu128, cu126) of download.pytorch.org that the NVIDIA driver here runs.
# auto (the default): cuda when `nvidia-smi` answers, else cpu. cuda: fails when no driver answers.
mode=${1:-auto}
case "$mode" in
  cpu) echo cpu; exit 0 ;;
  auto|cuda) ;;
  *) echo "GPU must be auto, cpu or cuda (got '$mode')" >&2; exit 2 ;;
esac
# the highest CUDA version the driver supports, from nvidia-smi's header ("CUDA Version: 12.8")
version=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n 1)
if [ -z "$version" ]; then
  if [ "$mode" = cuda ]; then echo "GPU=cuda, but nvidia-smi does not answer: install the NVIDIA driver" >&2; exit 1; fi
  echo cpu; exit 0
fi
set -- $version
major=$1 minor=$2
if [ "$major" -ge 13 ]; then echo cu130
elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo cu128
elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then echo cu126
elif [ "$mode" = cuda ]; then echo "the driver supports CUDA $major.$minor; torch 2.13 needs 12.6 or newer: update the driver" >&2; exit 1
else echo "the NVIDIA driver supports CUDA $major.$minor only (12.6+ needed): installing the CPU build" >&2; echo cpu
fi
