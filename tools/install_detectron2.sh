#!/usr/bin/env bash
# Installs Detectron2 v0.6 (Python code only) into the given Python's environment.
#
# Detectron2 is not on PyPI. `pb1-detectron2==0.6` is upstream v0.6's Python code, byte for
# byte, without its C++ sources, so a plain `pip install` dies building the missing `_C`
# extension. We unpack the sdist and install it with three named edits (below); nothing else of
# Detectron2 is changed. vpose_d2/compat.py then stands in for `detectron2._C`.
#
# What is already there decides what happens:
#   - a real source build (it has a compiled `detectron2._C`): left untouched;
#   - an install made by this script with every edit below: left as it is;
#   - an install of pb1-detectron2 missing any of them (e.g. made by an older version of this
#     script): reinstalled;
#   - any other Detectron2 without compiled ops: left untouched, with a note.
#
# Usage: tools/install_detectron2.sh [PYTHON] [--check]
#   --check prints which of those cases holds (absent, source-build, current, stale, foreign)
#   and changes nothing.
set -euo pipefail
PY=${1:-python}
MODE=${2:-install}
case "$MODE" in install | --check) ;; *) echo "usage: $0 [PYTHON] [--check]" >&2; exit 2 ;; esac

# The installed file that carries the backport's marker, and one model-zoo config: an install
# holding both was made by this version of the script.
MARKER="vpose_d2 backport export-optional-caffe2"
state=$("$PY" - "$MARKER" <<'EOF'
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys

# Located, not imported: importing detectron2 would import torch, for nothing.
spec = importlib.util.find_spec("detectron2")
if spec is None:
    print("absent")
    sys.exit()
locations = list(spec.submodule_search_locations)
if importlib.machinery.PathFinder.find_spec("_C", locations) is not None:
    print("source-build")
    sys.exit()
owners = importlib.metadata.packages_distributions().get("detectron2", [])
if "pb1-detectron2" not in owners:
    print("foreign")
    sys.exit()
root = locations[0]
zoo = os.path.join(root, "model_zoo", "configs", "COCO-Keypoints", "keypoint_rcnn_R_50_FPN_1x.yaml")
with open(os.path.join(root, "export", "__init__.py")) as f:
    backported = sys.argv[1] in f.read()
print("current" if os.path.isfile(zoo) and backported else "stale")
EOF
)
if [ "$MODE" = "--check" ]; then
  echo "$state"
  exit 0
fi
where() { "$PY" -c 'import importlib.util as u; print(u.find_spec("detectron2").submodule_search_locations[0])'; }
case "$state" in
  source-build)
    echo "detectron2 with compiled ops found, left untouched: $(where)"
    exit 0 ;;
  current)
    echo "detectron2 already installed by this script: $(where)"
    exit 0 ;;
  foreign)
    echo "detectron2 without compiled ops, not installed by this script, left untouched: $(where)"
    echo "  (model_zoo configs and the export backport are this script's; see README)"
    exit 0 ;;
  stale)
    echo "detectron2 from an older install lacks the model_zoo configs or the export backport: reinstalling" ;;
  absent) ;;
  *) echo "could not inspect the environment's detectron2 (got '$state')" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-build-isolation: the sdist's setup.py imports torch, which is already installed.
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
  -d "$work" pb1-detectron2==0.6
tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
src="$work/pb1-detectron2-0.6"

# Edit 1, no-extension: build no extension (its C++ sources are not in the sdist).
sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
grep -q 'ext_modules=\[\],' "$src/setup.py" || { echo "unexpected setup.py layout" >&2; exit 1; }

# Edit 2, model-zoo-configs: the sdist holds the configs at detectron2/model_zoo/configs, but
# its setup.py lists package data by globbing a top-level configs/ (the repository's layout)
# and links that folder into the package; without it the install has no configs and
# `model_zoo.get_config_file` fails. Moving the folder back to where setup.py looks restores
# the repository layout, so setup.py's own mechanism installs them.
zoo_src="$src/detectron2/model_zoo/configs"
[ -d "$zoo_src" ] && [ ! -e "$src/configs" ] || { echo "unexpected sdist layout: $zoo_src" >&2; exit 1; }
mv "$zoo_src" "$src/configs"
n_configs=$(find "$src/configs" -type f \( -name '*.yaml' -o -name '*.py' \) | wc -l)

# Edit 3, export-optional-caffe2: backport of upstream Detectron2 commit 07a4f3e2 (after v0.6,
# "caffe2 is optional"). v0.6's detectron2/export/__init__.py imports the Caffe2 exporters
# (export/api.py -> caffe2.proto) at module level, and PyTorch no longer ships caffe2, so
# `import detectron2.export` fails, and with it `detectron2.utils.analysis` (FlopCountAnalysis,
# tools/analyze_model.py), which only needs export's TracingAdapter. Upstream imports api.py
# only where caffe2 imports; this is that change, with a comment naming the backport.
"$PY" - "$src/detectron2/export/__init__.py" "$MARKER" <<'EOF'
import sys

path, marker = sys.argv[1], sys.argv[2]
with open(path) as f:
    text = f.read()
line = "from .api import *\n"
if text.count(line) != 1:
    sys.exit(f"{path}: not Detectron2 v0.6's layout, the backport does not apply")
guarded = (
    f"# {marker}: upstream Detectron2 07a4f3e2, applied by\n"
    "# vpose_d2's tools/install_detectron2.sh. The Caffe2 exporters need caffe2, which\n"
    "# PyTorch no longer ships; the rest of detectron2.export does not.\n"
    "try:\n"
    "    from caffe2.proto import caffe2_pb2 as _tmp\n"
    "\n"
    "    # caffe2 is optional\n"
    "except ImportError:\n"
    "    pass\n"
    "else:\n"
    "    from .api import *\n"
)
with open(path, "w") as f:
    f.write(text.replace(line, guarded))
EOF

# --no-deps: its runtime requirements are pinned in requirements.txt (it also pins
# black==21.4b2, which only its LazyConfig.save uses, and which breaks with current click).
# --force-reinstall: replaces a stale install of the same version.
"$PY" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$src"

"$PY" - "$n_configs" "$MARKER" <<'EOF'
import importlib.util
import os
import sys

expected, marker = int(sys.argv[1]), sys.argv[2]
spec = importlib.util.find_spec("detectron2")
root = os.path.dirname(spec.origin)
zoo = os.path.join(root, "model_zoo", "configs")
found = sum(
    name.endswith((".yaml", ".py")) for _, _, names in os.walk(zoo) for name in names
)
if found != expected:
    sys.exit(f"{zoo}: {found} model-zoo configs installed, the sdist has {expected}")
with open(os.path.join(root, "export", "__init__.py")) as f:
    if marker not in f.read():
        sys.exit(f"{root}/export/__init__.py: the backport is missing after the install")
# detectron2.model_zoo imports pkg_resources, which setuptools >= 82 no longer ships; the pin
# is requirements.txt's (make setup installs it first), so here it is only pointed out.
if importlib.util.find_spec("pkg_resources") is None:
    print(
        "warning: pkg_resources is missing (setuptools >= 82 dropped it), so "
        "detectron2.model_zoo cannot import: install the setuptools requirements.txt pins",
        file=sys.stderr,
    )
print(f"installed detectron2 0.6 (Python only) at {root}: {found} model-zoo configs, "
      "export backport applied")
EOF
