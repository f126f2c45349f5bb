#!/usr/bin/env bash
# Installs Detectron2 v0.6 into the given Python's environment when it is not importable yet.
#
# Detectron2 is not on PyPI. `pb1-detectron2==0.6` is upstream v0.6's Python code, byte for
# byte, without its C++ sources, so a plain `pip install` dies building the missing `_C`
# extension. We unpack the sdist, drop the extension from its setup.py, and install the rest.
# vpose_d2/compat.py then stands in for `detectron2._C` (none of its ops are used here).
# A Detectron2 already importable (e.g. built from source) is left untouched.
set -euo pipefail
PY=${1:-python}

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-build-isolation: the sdist's setup.py imports torch, which is already installed.
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  -d "$work" pb1-detectron2==0.6
tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
src="$work/pb1-detectron2-0.6"
# The one edit: build no extension (its sources are not in the sdist).
sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
grep -q 'ext_modules=\[\],' "$src/setup.py" || { echo "unexpected setup.py layout" >&2; exit 1; }
# --no-deps: its runtime requirements are pinned in requirements.txt (it also pins
# black==21.4b2, which only its LazyConfig.save uses, and which breaks with current click).
"$PY" -m pip install -q --no-deps --no-build-isolation "$src"
"$PY" -c "import detectron2; print('installed detectron2', detectron2.__version__)"
