"""tools/install_detectron2.sh: which Detectron2 it finds, and what it then does.

The environment the tests run in must hold what the script installs (CI's `make setup` runs
it). The other cases run against fake Detectron2 trees on an interpreter without its
site-packages (`python -S`), with `--check`, or where the script must not install anything.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "install_detectron2.sh"
MARKER = "vpose_d2 backport export-optional-caffe2"
V06_EXPORT_INIT = "from .api import *\nfrom .flatten import TracingAdapter\n"


def _script(python: str, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run(
        ["bash", str(SCRIPT), python, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture
def bare_python(tmp_path) -> str:
    """This interpreter without site-packages: only the fake trees on PYTHONPATH are seen."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def _fake_detectron2(
    root: Path, *, compiled: bool = False, pb1: bool = True, configs: bool, backport: bool
) -> str:
    pkg = root / "detectron2"
    (pkg / "export").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if compiled:
        (pkg / "_C.py").write_text("")  # what find_spec sees of a compiled _C*.so
    init = f"# {MARKER}\ntry:\n    pass\nexcept ImportError:\n    pass\n" if backport else ""
    (pkg / "export" / "__init__.py").write_text(init + V06_EXPORT_INIT)
    if configs:
        zoo = pkg / "model_zoo" / "configs" / "COCO-Keypoints"
        zoo.mkdir(parents=True)
        (zoo / "keypoint_rcnn_R_50_FPN_1x.yaml").write_text("")
    if pb1:
        info = root / "pb1_detectron2-0.6.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: pb1-detectron2\nVersion: 0.6\n"
        )
        (info / "top_level.txt").write_text("detectron2\n")
    return str(root)


def test_this_environment_holds_what_the_script_installs():
    """`make setup` ran the script here: its install is current, or Detectron2 is a source
    build it left alone."""
    proc = _script(sys.executable, "--check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in {"current", "source-build"}, (
        f"{proc.stdout.strip()}: run `make setup` (tools/install_detectron2.sh) to update "
        "Detectron2's install"
    )


@pytest.mark.parametrize(
    "tree, state",
    [
        (None, "absent"),
        (dict(compiled=True, pb1=False, configs=False, backport=False), "source-build"),
        (dict(compiled=True, configs=False, backport=False), "source-build"),
        (dict(pb1=False, configs=False, backport=False), "foreign"),
        (dict(configs=False, backport=False), "stale"),  # the older script's install
        (dict(configs=True, backport=False), "stale"),
        (dict(configs=False, backport=True), "stale"),
        (dict(configs=True, backport=True), "current"),
    ],
)
def test_states(tmp_path, bare_python, tree, state):
    path = _fake_detectron2(tmp_path, **tree) if tree is not None else str(tmp_path)
    proc = _script(bare_python, "--check", pythonpath=path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == state


@pytest.mark.parametrize(
    "tree, says",
    [
        (dict(compiled=True, configs=False, backport=False), "left untouched"),
        (dict(pb1=False, configs=False, backport=False), "left untouched"),
        (dict(configs=True, backport=True), "already installed by this script"),
    ],
)
def test_installs_nothing_where_nothing_is_to_do(tmp_path, bare_python, tree, says):
    """A source build, a Detectron2 of someone else's, and a current install are kept: the
    fake trees are not installable, so any install attempt would fail here."""
    path = _fake_detectron2(tmp_path, **tree)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = _script(bare_python, pythonpath=path)
    assert proc.returncode == 0, proc.stderr
    assert says in proc.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
