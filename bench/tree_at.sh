#!/bin/sh
# Build an importable tree of Turnout as it was at a commit, for A/B runs of
# two versions side by side (bench/ab.py, bench/compare.py's numbers):
#
#     bench/tree_at.sh REV [DIR]      # prints DIR (default /tmp/turnout-at-<short hash>)
#     python bench/ab.py --env-b PYTHONPATH="$(bench/tree_at.sh HEAD~1)" --connections 1,64
#
# DIR holds a `turnout` package laid out as pyproject.toml's package-dir maps
# the source folders (python_client -> turnout, proxy -> turnout.proxy, ...).
# On PYTHONPATH it wins over the editable install of the working tree, whose
# finder comes after the path entries; the controller, proxy and replicas a
# set-up starts inherit it, so set-up B runs REV's code and A the working
# tree's. The protos' generated code is committed, so nothing is built.
set -eu
rev=${1:?usage: bench/tree_at.sh REV [DIR]}
short=$(git rev-parse --short "$rev^{commit}")
out=${2:-/tmp/turnout-at-$short}
case $out in /*) ;; *) out=$PWD/$out ;; esac
# git archive from a subfolder would take only that folder.
cd "$(git rev-parse --show-toplevel)"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git archive "$short" | tar -x -C "$src"
rm -rf "$out"
mkdir -p "$out"
python3 - "$src" "$out" <<'PY'
import shutil
import sys
import tomllib
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
config = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]
# Parents first, so that a subpackage's folder lands inside its parent's copy.
for package, folder in sorted(config["package-dir"].items(), key=lambda item: item[0].count(".")):
    target = out.joinpath(*package.split("."))
    if not target.exists():
        shutil.copytree(src / folder, target)
PY
echo "$out"
