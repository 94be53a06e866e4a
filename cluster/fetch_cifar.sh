#!/bin/sh
# Put CIFAR-10 and CIFAR-100 (torchvision's on-disk layout: cifar-10-batches-py/,
# cifar-100-python/) under DATA_ROOT, once per node: concurrent runs wait on a lock,
# and a dataset whose download finished (marked by .<folder>.done) is not fetched again.
#
#   sh cluster/fetch_cifar.sh DATA_ROOT [PYTHON]     # PYTHON: one with torchvision (default python3)
set -eu
root=${1:?usage: fetch_cifar.sh DATA_ROOT [PYTHON]}
python=${2:-python3}
mkdir -p "$root"
exec 9>"$root/.fetch.lock"
flock 9                                    # held until this script exits
for pair in cifar10:cifar-10-batches-py cifar100:cifar-100-python; do
    dataset=${pair%%:*}
    folder=${pair#*:}
    [ -e "$root/.$folder.done" ] && continue
    "$python" - "$root" "$dataset" <<'PY'
import sys
import torchvision

root, name = sys.argv[1], sys.argv[2]
cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
for train in (True, False):
    cls(root, train=train, download=True)
PY
    touch "$root/.$folder.done"
done
