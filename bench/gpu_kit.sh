#!/usr/bin/env bash
# What bench/gpu_check.sh needs on a lent GPU machine that its image lacks (it reaches no network):
# scratchlm's pure-Python dependencies missing there (jsonargparse and its signature extras) as wheels in
# .whl/, and Tiny Shakespeare in .gpu/. Both folders are git-ignored; name them in the device call's carry.
set -eu
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl .gpu
"$PIP" download -q --no-deps --only-binary :all: -d .whl jsonargparse docstring-parser typeshed-client
cp "${SHARED_DATA:-../shared/data}/tinyshakespeare.txt" .gpu/
ls .whl .gpu
