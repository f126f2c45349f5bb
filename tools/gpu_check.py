#!/usr/bin/env python
"""One prepared check of vpose_d2's CUDA paths on a lent GPU machine, and the wheels it needs.

The GPU machine (one H200, Python 3.12 with torch, torchvision, timm, scipy, OpenCV, pytest,
tensorboard; no network) lacks Detectron2 and some of its requirements. They travel with the
working tree as wheels (``make gpu-wheels``), and ``tools/gpu_check.sh`` (which runs
``python3 tools/gpu_check.py run``) installs them there, builds the extension for sm_90 and
runs every CUDA check in one call, each step under a timeout, writing a log and a JSON
summary under ``$OUT``. A failing step does not stop the later ones.

Subcommands::

    wheels        build the wheel folder (what ``make gpu-wheels`` runs), then check it
    check-wheels  check a wheel folder against what the GPU machine needs
    run           the whole check (``--dry-run`` prints the plan, ``--steps`` picks steps)

and the single steps that ``run`` starts as subprocesses (``env-info``, ``build-info``,
``op-bench``, ``train``, ``latency``). Only the standard library is imported at module level:
``run`` and the wheel checks work before anything is installed.

On a lent machine, from a checkout where ``make gpu-wheels`` has run: one device call with
the command ``bash tools/gpu_check.sh --out $OUT --budget 500``, ``gpu_wheels`` carried and
a timeout of 560 s (the steps stop themselves at the budget and every finished step is
already in ``$OUT/gpu_check.json``). ``--steps`` reruns a subset, e.g. what failed.
"""

import argparse
import base64
import collections
import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = REPO / "gpu_wheels"
#: What may travel to the device machine in one call: working tree and carried paths together.
TRAVEL_LIMIT_BYTES = 64 * 2**20

# ----------------------------------------------------------------------------------------------
# What the GPU machine has, and what must travel
# ----------------------------------------------------------------------------------------------
GPU_PYTHON = (3, 12)
#: The GPU machine image's Python distributions, as listed for that image on 2026-11-17.
#: Versions are not all known; only names are checked against it.
GPU_IMAGE_PACKAGES_TEXT = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


GPU_IMAGE_PACKAGES = frozenset(canonical(n) for n in GPU_IMAGE_PACKAGES_TEXT.split())


@dataclass(frozen=True)
class Carried:
    """A distribution the GPU machine lacks, and how its wheel is made here.

    ``how``: "installed" packs the copy installed in the building Python (Detectron2: what
    tools/install_detectron2.sh made, so its edits travel too); "binary" downloads the
    registry's wheel for CPython 3.12 manylinux x86_64; "sdist" builds a wheel from the
    registry's source release (projects that publish no wheel). The version is always the one
    installed in the building Python, so the GPU runs what the tests here ran.
    """

    name: str
    how: str
    why: str


CARRIED: Tuple[Carried, ...] = (
    Carried("pb1-detectron2", "installed", "Detectron2 v0.6, Python code only"),
    Carried("fvcore", "sdist", "Detectron2's config and FLOP counter (no wheel published)"),
    Carried("iopath", "binary", "fvcore's and Detectron2's file I/O"),
    Carried("yacs", "binary", "fvcore's CfgNode"),
    Carried("pycocotools", "binary", "COCO keypoint evaluation (compiled: cp312 wheel)"),
    Carried("omegaconf", "binary", "imported by detectron2.config"),
    Carried("antlr4-python3-runtime", "sdist", "omegaconf's parser (no wheel published)"),
    Carried("termcolor", "binary", "fvcore's and Detectron2's logging"),
)
CARRIED_NAMES = frozenset(canonical(c.name) for c in CARRIED)

#: Requirements a carried wheel declares that nothing the check runs imports; the import test
#: in tests/test_gpu_check.py runs the project with only the image's and the carried packages.
UNUSED_REQUIREMENTS: Dict[str, Dict[str, str]] = {
    "pb1-detectron2": {
        "black": "only LazyConfig.save formats with it",
        "future": "only the caffe2 export uses it",
        "pydot": "only the caffe2 export uses it",
        "hydra-core": "only Detectron2's lazy-config tools use it",
    },
}

#: Binary wheels are fetched for these platform tags (pip matches manylinux_2_N exactly).
_MANYLINUX = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
#: Platforms the GPU machine installs: its Python 3.12.3 is Ubuntu 24.04's, whose glibc is 2.39
#: (inferred from the version, not read there), so manylinux up to 2_39.
_GPU_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]


# ----------------------------------------------------------------------------------------------
# Building the wheel folder
# ----------------------------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _installed_tree(dist_name: str) -> Tuple[str, Dict[str, bytes], Dict[str, bytes]]:
    """The files of an installed distribution, read from disk (not from its RECORD, so files a
    set-up script added or edited after ``pip install`` are the ones that count).

    Returns:
        (version, package files by wheel path, dist-info files by wheel path). Bytecode
        caches are left out; RECORD, INSTALLER, REQUESTED and direct_url.json too (they
        describe this installation, not the package).
    """
    from importlib import metadata

    dist = metadata.distribution(dist_name)
    site = Path(dist.locate_file(""))
    info_dirs = {Path(str(f)).parts[0] for f in dist.files or [] if ".dist-info" in str(f)}
    if len(info_dirs) != 1:
        raise RuntimeError(f"{dist_name}: cannot find its .dist-info folder in {site}")
    info_dir = info_dirs.pop()
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:
        raise RuntimeError(f"{dist_name}: {info_dir}/top_level.txt names no package")
    package: Dict[str, bytes] = {}
    for top in tops:
        base = site / top
        paths = sorted(base.rglob("*")) if base.is_dir() else [site / f"{top}.py"]
        for p in paths:
            if not p.is_file() or "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            if p.suffix in (".so", ".pyd", ".dylib"):
                raise RuntimeError(
                    f"{dist_name}: {p} is compiled for this machine's Python; the GPU machine "
                    "runs CPython 3.12, so only a pure-Python install can be packed"
                )
            package[p.relative_to(site).as_posix()] = p.read_bytes()
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
    info: Dict[str, bytes] = {}
    for p in sorted((site / info_dir).rglob("*")):
        rel = p.relative_to(site / info_dir).as_posix()
        if p.is_file() and rel not in skip and "__pycache__" not in p.parts:
            info[f"{info_dir}/{rel}"] = p.read_bytes()
    return dist.version, package, info


def pack_installed(dist_name: str, dest: Path) -> Path:
    """A py3-none-any wheel of the pure-Python distribution installed in this interpreter.

    Used for Detectron2: tools/install_detectron2.sh installs it from the pb1-detectron2 sdist
    with its extension removed (and whatever else the script changes); packing the result
    carries exactly the Detectron2 that the tests here run against. Deterministic: the same
    files give the same bytes.
    """
    version, package, info = _installed_tree(dist_name)
    info_dir = next(iter(info)).split("/")[0]
    stem = f"{re.sub(r'[-_.]+', '_', dist_name).lower()}-{version}"
    if info_dir != f"{stem}.dist-info":
        raise RuntimeError(f"{dist_name}: unexpected metadata folder {info_dir} for {stem}")
    wheel_meta = (
        "Wheel-Version: 1.0\n"
        "Generator: vpose_d2 tools/gpu_check.py (packed from the installed distribution)\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    ).encode()
    files = dict(package)
    files.update(info)
    files[f"{info_dir}/WHEEL"] = wheel_meta
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{info_dir}/RECORD,,")
    files[f"{info_dir}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = dest / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():  # dist-info last, RECORD last of all (PEP 427)
            zinfo = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            zinfo.external_attr = 0o644 << 16
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zinfo, data)
    return out


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{shlex.join(cmd)}` failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )


def build_wheels(dest: Path) -> List[Path]:
    """Fills ``dest`` with one wheel per :data:`CARRIED` distribution, at the versions
    installed in this interpreter (the project venv, when ``make gpu-wheels`` runs it).

    ``dest`` is replaced when it holds only wheels (an earlier run); any other content is
    refused. Needs the package registry (pip download / pip wheel).
    """
    from importlib import metadata

    dest = Path(dest)
    if dest.exists():
        foreign = [p.name for p in dest.iterdir() if p.suffix != ".whl"]
        if foreign:
            raise RuntimeError(f"{dest} holds files that are not wheels ({foreign[:5]}); refusing")
    versions = {}
    for c in CARRIED:
        try:
            versions[c.name] = metadata.version(c.name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(
                f"{c.name} is not installed in {sys.executable} ({c.why}); run `make setup` "
                "first, or point PY at the project venv"
            ) from None
    with tempfile.TemporaryDirectory(prefix="gpu_wheels.") as tmp:
        tmp_dir = Path(tmp)
        for c in CARRIED:
            pin = f"{c.name}=={versions[c.name]}"
            if c.how == "installed":
                print(f"+ pack installed {pin}", flush=True)
                pack_installed(c.name, tmp_dir)
            elif c.how == "binary":
                platforms = [x for p in _MANYLINUX for x in ("--platform", p)]
                fetch = "download -q --no-deps --only-binary=:all: --python-version 3.12"
                _pip(*fetch.split(), "--implementation", "cp", *platforms, "-d", str(tmp_dir), pin)
            elif c.how == "sdist":
                # --no-build-isolation: setuptools/wheel of this venv, no download of them.
                build = "wheel -q --no-deps --no-build-isolation --no-binary"
                _pip(*build.split(), c.name, "-w", str(tmp_dir), pin)
            else:
                raise ValueError(f"{c.name}: unknown way {c.how!r}")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        built = []
        for p in sorted(tmp_dir.glob("*.whl")):
            built.append(Path(shutil.copy2(p, dest / p.name)))
    return built


# ----------------------------------------------------------------------------------------------
# Checking a wheel folder
# ----------------------------------------------------------------------------------------------
@dataclass
class WheelReport:
    wheels: List[Dict[str, Any]] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    total_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def _gpu_supported_tags() -> set:
    from packaging import tags

    supported = set(tags.cpython_tags(GPU_PYTHON, ["cp312", "abi3", "none"], _GPU_PLATFORMS))
    supported |= set(tags.compatible_tags(GPU_PYTHON, "cp312", _GPU_PLATFORMS))
    return supported


def _gpu_marker_env(extra: str = "") -> Dict[str, str]:
    return {
        "python_version": "3.12",
        "python_full_version": "3.12.3",
        "implementation_name": "cpython",
        "implementation_version": "3.12.3",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_release": "",
        "platform_version": "",
        "sys_platform": "linux",
        "os_name": "posix",
        "extra": extra,
    }


def _wheel_requirements(path: Path) -> List[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{path.name}: expected one .dist-info/METADATA, found {len(names)}")
        text = zf.read(names[0]).decode("utf-8", "replace")
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def check_wheels(folder: Path, compare_installed: bool = True) -> WheelReport:
    """Checks ``folder`` against what the GPU machine needs.

    Errors: no folder; a file that is not an installable CPython 3.12 manylinux x86_64
    wheel; two versions of one distribution (pip then refuses the whole install); a
    :data:`CARRIED` distribution missing; a requirement (for Python 3.12 on Linux, no extras)
    that neither the image nor the folder has, or that a carried version does not satisfy;
    more than fits the device call; a Detectron2 wheel whose files differ from the Detectron2
    installed here (``compare_installed``: a stale folder). Warnings: wheels nothing needs,
    versions other than those installed here.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    report = WheelReport()
    folder = Path(folder)
    if not folder.is_dir():
        report.errors.append(f"{folder}: no such folder (run `make gpu-wheels`)")
        return report
    supported = _gpu_supported_tags()
    by_name: Dict[str, List[Tuple[str, Path]]] = collections.defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.suffix != ".whl":
            report.warnings.append(f"{path.name}: not a wheel (the install step ignores it)")
            continue
        size = path.stat().st_size
        report.total_bytes += size
        try:
            name, version, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename as e:
            report.errors.append(f"{path.name}: not a wheel file name ({e})")
            continue
        name = canonical(str(name))
        report.wheels.append(dict(file=path.name, name=name, version=str(version), bytes=size))
        by_name[name].append((str(version), path))
        if not wheel_tags & supported:
            shown = ", ".join(sorted(str(t) for t in wheel_tags))
            report.errors.append(
                f"{path.name}: tags {shown}; none installs on CPython 3.12 manylinux x86_64"
            )
    for name, found in sorted(by_name.items()):
        if len(found) > 1:
            files = ", ".join(p.name for _, p in found)
            report.errors.append(f"{name}: {len(found)} versions ({files}); keep one")
    for c in CARRIED:
        if canonical(c.name) not in by_name:
            report.errors.append(f"missing {c.name} ({c.why}); run `make gpu-wheels`")
    for name in sorted(set(by_name) - CARRIED_NAMES):
        where = (
            "already on the GPU image, would shadow it"
            if name in GPU_IMAGE_PACKAGES
            else "nothing needs it"
        )
        report.warnings.append(f"{name}: not in the carried list ({where})")
    carried_versions = {name: found[0][0] for name, found in by_name.items()}
    env = _gpu_marker_env()
    for name, found in sorted(by_name.items()):
        version, path = found[0]
        unused = UNUSED_REQUIREMENTS.get(name, {})
        try:
            lines = _wheel_requirements(path)
        except (zipfile.BadZipFile, ValueError) as e:
            report.errors.append(f"{path.name}: unreadable ({e})")
            continue
        for line in lines:
            try:
                req = Requirement(line)
            except InvalidRequirement as e:
                report.errors.append(f"{path.name}: bad requirement {line!r} ({e})")
                continue
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another Python / platform
            dep = canonical(req.name)
            if dep in unused:
                continue
            if dep in carried_versions:
                if req.specifier and not req.specifier.contains(
                    carried_versions[dep], prereleases=True
                ):
                    report.errors.append(
                        f"{path.name} requires {req}, the folder has {dep} {carried_versions[dep]}"
                    )
            elif dep not in GPU_IMAGE_PACKAGES:
                report.errors.append(
                    f"{path.name} requires {req}: neither the GPU image nor the folder has {dep}"
                )
    travel = report.total_bytes + (travel_bytes(REPO, exclude=folder) or 0)
    if travel > TRAVEL_LIMIT_BYTES:
        report.errors.append(
            f"working tree + wheels = {travel / 2**20:.1f} MiB, over the device call's "
            f"{TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB"
        )
    if compare_installed:
        _compare_with_installed(by_name, report)
    return report


def _compare_with_installed(
    by_name: Dict[str, List[Tuple[str, Path]]], report: WheelReport
) -> None:
    """Versions (and for packed distributions, files) against this interpreter's installs."""
    from importlib import metadata

    for c in CARRIED:
        found = by_name.get(canonical(c.name))
        if not found or len(found) > 1:
            continue
        version, path = found[0]
        try:
            installed = metadata.version(c.name)
        except metadata.PackageNotFoundError:
            continue  # nothing to compare with (e.g. on the GPU machine)
        if installed != version:
            report.warnings.append(
                f"{path.name}: version {version}, but {installed} is installed here "
                "(the tests here ran that one; rerun `make gpu-wheels`)"
            )
            continue
        if c.how != "installed":
            continue
        _, package, _ = _installed_tree(c.name)
        with zipfile.ZipFile(path) as zf:
            in_wheel = {
                n: zf.read(n)
                for n in zf.namelist()
                if ".dist-info/" not in n and not n.endswith("/")
            }
        differ = sorted(
            n for n in set(package) | set(in_wheel) if package.get(n) != in_wheel.get(n)
        )
        if differ:
            report.errors.append(
                f"{path.name} is stale: {len(differ)} file(s) differ from the installed "
                f"{c.name} (e.g. {', '.join(differ[:3])}); rerun `make gpu-wheels`"
            )


def travel_bytes(repo: Path, exclude: Optional[Path] = None) -> Optional[int]:
    """Bytes of what a device call sends from ``repo``: tracked files and untracked files git
    does not ignore (the carried paths come on top). None outside a git checkout."""
    try:
        listing = "ls-files -z --cached --others --exclude-standard".split()
        out = subprocess.run(["git", "-C", str(repo), *listing], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    excluded = Path(exclude).resolve() if exclude else None
    for rel in out.stdout.decode().split("\0"):
        if not rel:
            continue
        p = repo / rel
        if excluded and excluded in p.resolve().parents:
            continue
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def print_wheel_report(report: WheelReport, folder: Path) -> None:
    print(f"Wheel folder {folder}:")
    for w in report.wheels:
        print(f"  {w['file']:<88} {w['bytes'] / 1024:>8.0f} KiB")
    tree = travel_bytes(REPO, exclude=folder)
    tree_txt = f"; working tree {tree / 2**20:.1f} MiB" if tree is not None else ""
    print(f"  total {report.total_bytes / 2**20:.2f} MiB in {len(report.wheels)} wheels{tree_txt}")
    for w in report.warnings:
        print(f"  warning: {w}")
    for e in report.errors:
        print(f"  ERROR: {e}")
    print("  OK" if report.ok else f"  {len(report.errors)} error(s)")


# ----------------------------------------------------------------------------------------------
# Single steps (each run by `run` in its own process)
# ----------------------------------------------------------------------------------------------
def load_script(relative_path: str) -> ModuleType:
    """The module of ``REPO / relative_path`` (tools/ is not a package)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_json(path: Optional[str], data: Dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text)


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit folder: $CUDA_HOME, /usr/local/cuda(-*), or nvcc's (through a wrapper
    script such as ``exec /usr/local/cuda-13.0/bin/nvcc "$@"`` too)."""
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    candidates += sorted((str(p) for p in Path("/usr/local").glob("cuda-*")), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(str(real.parent.parent))
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if real.stat().st_size < 4096:
                m = re.search(r"(\S+)/bin/nvcc\b", real.read_text())
                if m:
                    candidates.append(m.group(1))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return c
    return None


def cmd_env_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count(),
        "cuda_home": find_cuda_home(),
        "cpu_count": os.cpu_count(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    for tool, argv in (
        ("nvcc", ["nvcc", "--version"]),
        (
            "nvidia_smi",
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                "--format=csv,noheader",
            ],
        ),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
            info[tool] = out.splitlines()[-1] if out else ""
    _write_json(args.json, info)
    return 0


def cmd_build_info(args: argparse.Namespace) -> int:
    """Whether the extension built here has CUDA kernels, and for which architectures."""
    from vpose_d2 import _ops

    info: Dict[str, Any] = {
        "loaded": _ops.extension is not None,
        "load_error": _ops.load_error,
        "cuda_kernel": _ops.has_kernel("cuda"),
    }
    if _ops.extension is not None:
        so = Path(_ops.extension.__file__)
        info["library"] = str(so.relative_to(REPO)) if REPO in so.parents else str(so)
        info["library_mib"] = round(so.stat().st_size / 2**20, 2)
        cuobjdump = shutil.which("cuobjdump")
        if cuobjdump:
            out = subprocess.run([cuobjdump, "--list-elf", str(so)], capture_output=True, text=True)
            info["sass_archs"] = sorted(set(re.findall(r"\.(sm_\d+a?)\.", out.stdout)))
            ptx = subprocess.run([cuobjdump, "--list-ptx", str(so)], capture_output=True, text=True)
            info["ptx_archs"] = sorted(set(re.findall(r"\.(sm_\d+a?)\.", ptx.stdout)))
    ok = info["cuda_kernel"]
    # Machine code for other architectures only is a failure; no cuobjdump, or a listing this
    # does not parse, leaves only the kernel's presence to count.
    if args.arch and info.get("sass_archs"):
        wanted = {
            f"sm_{a.strip().replace('.', '')}" for a in re.split(r"[;, ]+", args.arch) if a.strip()
        }
        info["missing_archs"] = sorted(wanted - set(info["sass_archs"]))
        ok = ok and not info["missing_archs"]
    _write_json(args.json, info)
    return 0 if ok else 1


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def op_bench_variant(spec: Dict[str, Any], dtype: str) -> Dict[str, Any]:
    """tools/benchmark_ops.py's measurement of one variant, its inputs in ``dtype``.

    benchmark_ops creates every floating input with torch's default dtype, so setting that
    default runs its very benchmark (same sizes, timing and peak-memory accounting) in bf16.
    The op's calls are watched: if the benchmark ever pins its dtype, this raises instead of
    reporting float32 numbers as bf16.
    """
    import torch

    # The module itself: vpose_d2.layers re-exports a function of the same name.
    op_module = importlib.import_module("vpose_d2.layers.ms_deform_attn")
    target = getattr(torch, _DTYPES[dtype])
    seen = set()
    original_op, original_default = op_module.ms_deform_attn, torch.get_default_dtype()

    def watched(value, *args, **kwargs):
        seen.add(value.dtype)
        return original_op(value, *args, **kwargs)

    bench_ops = load_script("tools/benchmark_ops.py")
    op_module.ms_deform_attn = watched  # benchmark_ops imports it from the module per call
    torch.set_default_dtype(target)
    try:
        result = bench_ops._run_child(spec)
    finally:
        torch.set_default_dtype(original_default)
        op_module.ms_deform_attn = original_op
    if not seen:
        raise RuntimeError(
            "benchmark_ops no longer imports ms_deform_attn per call: cannot "
            "check the dtype it runs in"
        )
    if seen != {target}:
        raise RuntimeError(f"benchmark_ops ran the op in {sorted(map(str, seen))}, not {target}")
    return {**result, "dtype": _DTYPES[dtype]}


def cmd_op_bench_child(args: argparse.Namespace) -> int:
    print(json.dumps(op_bench_variant(json.loads(args.spec), args.dtype)))
    return 0


def cmd_op_bench(args: argparse.Namespace) -> int:
    """Compiled vs reference op, forward and forward+backward, in ``--dtype``; one
    subprocess per variant (as benchmark_ops does), table and JSON."""
    bench_ops = load_script("tools/benchmark_ops.py")
    results = []
    for case in args.cases or list(bench_ops.CASES):
        for device in args.devices:
            for mode in bench_ops.MODES:
                for impl in bench_ops.IMPLS:
                    spec = dict(
                        case=case, device=device, impl=impl, mode=mode, repeats=args.repeats
                    )
                    proc = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "op-bench-child",
                            "--dtype",
                            args.dtype,
                            json.dumps(spec),
                        ],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                    )
                    if proc.returncode != 0:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"op-bench child {spec} failed")
                    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(format_op_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def op_rows(results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """benchmark_ops results (one dict per variant) paired into compiled-vs-reference rows."""
    by_key = {(r["case"], r["device"], r["mode"], r["impl"]): r for r in results}
    rows = []
    for (case, device, mode, impl), c in by_key.items():
        if impl != "compiled" or (case, device, mode, "reference") not in by_key:
            continue
        r = by_key[(case, device, mode, "reference")]
        rows.append(
            dict(
                case=case,
                device=device,
                mode=mode,
                dtype=c.get("dtype", "float32"),
                compiled_ms=c["ms"],
                reference_ms=r["ms"],
                speedup=r["ms"] / c["ms"],
                compiled_mib=c["peak_mib"],
                reference_mib=r["peak_mib"],
            )
        )
    return rows


def format_op_table(results: Sequence[Dict[str, Any]]) -> str:
    lines = [
        f"{'case':<8} {'dev':<5} {'dtype':<9} {'mode':<8} | {'compiled ms':>11} "
        f"{'ref ms':>9} {'speedup':>8} | {'compiled MiB':>12} {'ref MiB':>9}"
    ]
    for r in op_rows(results):
        lines.append(
            f"{r['case']:<8} {r['device']:<5} {r['dtype']:<9} {r['mode']:<8} | "
            f"{r['compiled_ms']:>11.3f} {r['reference_ms']:>9.3f} {r['speedup']:>7.1f}x | "
            f"{r['compiled_mib']:>12.1f} {r['reference_mib']:>9.1f}"
        )
    return "\n".join(lines)


def _autocast(device_type: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


QUICK_PAVE_CONFIG = "configs/quick/pave_synthetic.yaml"


def cmd_train(args: argparse.Namespace) -> int:
    """``--iters`` iterations of a config (default the quick PAVE-Net one) through VPoseTrainer
    with SOLVER.AMP in ``--precision``, on one fixed batch of a small synthetic set.

    One fixed batch: the loss must then fall within a few iterations whatever the data order,
    so "falling" tests the optimisation (gradients, scaler, optimizer step), not sampling
    luck. Passes when every loss is finite and the mean of the last five is below the mean of
    the first five.
    """
    import itertools

    import torch

    import vpose_d2  # noqa: F401  isort: skip  (compat before Detectron2)
    from detectron2.config import get_cfg
    from detectron2.engine import HookBase

    from vpose_d2 import _ops
    from vpose_d2.config import add_vpose_config
    from vpose_d2.data.datasets.synthetic import make_synthetic_posetrack
    from vpose_d2.engine import VPoseTrainer, merge_config_file, merge_config_opts

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    root = make_synthetic_posetrack(
        work / "synthetic",
        num_train_videos=2,
        num_val_videos=1,
        frames_per_video=6,
        max_persons=3,
        val_label_every=2,
    )
    data_s = time.perf_counter() - start
    cfg = get_cfg()
    add_vpose_config(cfg)
    merge_config_file(cfg, str(REPO / args.config_file))
    opts = {
        "MODEL.DEVICE": args.device,
        "DATASETS.SYNTHETIC_ROOT": str(root),
        "DATASETS.TEST": "()",
        "OUTPUT_DIR": str(work / "output"),
        "SOLVER.MAX_ITER": str(args.iters),
        "SOLVER.CHECKPOINT_PERIOD": str(10**6),
        "SOLVER.AMP.ENABLED": str(args.precision != "fp32"),
        "SEED": "0",
    }
    if args.precision != "fp32":
        opts["SOLVER.AMP.PRECISION"] = args.precision
    merge_config_opts(cfg, [x for kv in opts.items() for x in kv] + list(args.opts))
    cuda = args.device.startswith("cuda")

    class FixedBatchTrainer(VPoseTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            return itertools.repeat(next(iter(super().build_train_loader(cfg))))

    class Record(HookBase):
        def __init__(self):
            self.rows: List[Dict[str, Any]] = []
            self._t0 = 0.0

        def _scale(self):
            scaler = getattr(self.trainer._trainer, "grad_scaler", None)
            return float(scaler.get_scale()) if scaler is not None else None

        def before_step(self):
            if cuda:
                torch.cuda.synchronize()
            self._scale_before = self._scale()
            self._t0 = time.perf_counter()

        def after_step(self):
            if cuda:
                torch.cuda.synchronize()
            step_ms = 1000 * (time.perf_counter() - self._t0)
            self.rows.append(
                dict(
                    iter=self.trainer.iter,
                    total_loss=float(self.trainer.storage.history("total_loss").latest()),
                    scale_before=self._scale_before,
                    scale=self._scale(),
                    ms=step_ms,
                )
            )

    result: Dict[str, Any] = dict(
        config=args.config_file,
        precision=args.precision,
        device=args.device,
        iters=args.iters,
        cuda_kernel=_ops.has_kernel(args.device.split(":")[0]),
        data_s=round(data_s, 1),
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record = Record()
    try:
        trainer = FixedBatchTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.register_hooks([record])
        trainer.train()
    except Exception as e:  # reported in the JSON, the step fails
        result["error"] = f"{type(e).__name__}: {e}"
    losses = [r["total_loss"] for r in record.rows]
    result["losses"] = [round(x, 5) for x in losses]
    result["finite"] = bool(losses) and all(map(math.isfinite, losses))
    k = min(5, len(losses) // 2)
    if k:
        first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
        result.update(first_mean=first, last_mean=last, last_over_first=last / first)
        result["falling"] = bool(last < first)
    else:
        result["falling"] = False
    scaled = [r for r in record.rows if r["scale"] is not None]
    if scaled:
        # GradScaler lowers its scale after a step it skipped (inf/NaN gradients).
        result["final_scale"] = scaled[-1]["scale"]
        result["skipped_steps"] = sum(1 for r in scaled if r["scale"] < r["scale_before"])
    times = [r["ms"] for r in record.rows[2:]] or [r["ms"] for r in record.rows]
    if times:
        result["median_step_ms"] = statistics.median(times)
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    ok = "error" not in result and result["finite"] and result["falling"]
    result["passed"] = bool(ok)
    _write_json(args.json, result)
    return 0 if ok else 1


def benchmark_argv(
    config_file: str,
    size: str,
    persons: Sequence[int],
    device: str,
    output: str,
    scenes: int,
    frames: int,
    repeats: int,
) -> List[str]:
    """tools/benchmark.py arguments for latency only (no FLOP count) of ``config_file``."""
    return [
        "--config-file",
        config_file,
        "--latency-config-file",
        config_file,
        "--size",
        size,
        "--latency-size",
        size,
        "--persons",
        *map(str, persons),
        "--scenes",
        str(scenes),
        "--frames",
        str(frames),
        "--repeats",
        str(repeats),
        "--device",
        device,
        "--no-flops",
        "--output",
        output,
    ]


def cmd_latency(args: argparse.Namespace) -> int:
    """tools/benchmark.py's latency table of one model, under autocast for bf16/fp16 (the
    benchmark itself has no precision flag; the predictor runs in the calling thread, so an
    autocast context around it covers every forward)."""
    import torch

    device_type = args.device.split(":")[0]
    bench = load_script("tools/benchmark.py")
    argv = benchmark_argv(
        args.config_file,
        args.size,
        args.persons,
        args.device,
        str(Path(args.workdir) / "benchmark"),
        args.scenes,
        args.frames,
        args.repeats,
    )
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: Dict[str, Any] = dict(config=args.config_file, precision=args.precision, size=args.size)
    try:
        with _autocast(device_type, args.precision):
            out = bench.main(argv)
        result["rows"] = out["latency"]["rows"]
        result["title"] = out["latency"]["title"]
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    if device_type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        result["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    _write_json(args.json, result)
    return 0 if "error" not in result else 1


# ----------------------------------------------------------------------------------------------
# The check: steps, plan, run
# ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    python: str
    out: Path
    work: Path
    site: Path
    wheels: Path
    arch: str
    cuda_home: Optional[str]


@dataclass
class Step:
    """One step of the check: commands run in order under one timeout."""

    name: str
    title: str
    timeout: int
    commands: Callable[[Context], List[List[str]]]
    needs: Tuple[str, ...] = ()  # must have passed, else the step is skipped
    wants: Tuple[str, ...] = ()  # run first when selected, but a failure does not skip this
    env: Callable[[Context], Dict[str, str]] = lambda ctx: {}
    #: files the step needs in the tree; absent -> skipped with this message
    requires_files: Tuple[str, ...] = ()
    json_name: Optional[str] = None  # the step's result file in ctx.work

    def json_path(self, ctx: Context) -> Optional[Path]:
        return ctx.work / self.json_name if self.json_name else None


def _me(ctx: Context, *args: str) -> List[str]:
    return [ctx.python, str(REPO / "tools" / "gpu_check.py"), *args]


#: What the tests step runs: the op's tests (CPU and CUDA cases), the CUDA-only paths, and
#: the mixed-precision trainer on both devices.
TEST_TARGETS = (
    "tests/test_ms_deform_attn.py",
    "tests/test_cuda_paths.py",
    "tests/test_engine.py::test_mixed_precision_trainer",
)
#: A CUDA test may skip on the GPU machine only for these reasons (one H200 here).
ALLOWED_CUDA_SKIPS = ("2 CUDA devices",)

OP_BENCH_REPEATS = 20
#: What both op-benchmark steps pass (the bf16 one to this script, which takes the same flags).
OP_BENCH_ARGS = f"--devices cuda --repeats {OP_BENCH_REPEATS}"
OP_BENCH_FLAGS = ("--devices", "--repeats", "--json")
LATENCY = dict(size="800x1333", persons=(1, 20), scenes=2, frames=6, repeats=3)
TRAIN_ITERS = 20


def _install_commands(ctx: Context) -> List[List[str]]:
    wheels = sorted(str(p) for p in ctx.wheels.glob("*.whl"))
    if not wheels:
        message = f"no wheels in {ctx.wheels}: run `make gpu-wheels` and carry the folder"
        return [["sh", "-c", f"echo '{message}' >&2; exit 1"]]
    pip = "-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target"
    probe = (
        "import vpose_d2, detectron2, fvcore, iopath, pycocotools, omegaconf; "
        "print('imports ok:', detectron2.__file__)"
    )
    return [[ctx.python, *pip.split(), str(ctx.site), *wheels], [ctx.python, "-c", probe]]


def _build_env(ctx: Context) -> Dict[str, str]:
    env = {"TORCH_CUDA_ARCH_LIST": ctx.arch, "FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count())}
    if ctx.cuda_home:
        env["CUDA_HOME"] = ctx.cuda_home
    return env


def _latency_step(model: str, precision: str) -> Step:
    config = f"configs/{model}.yaml"
    name = f"latency_{model}_{precision}"
    flags = (
        f"--config-file {config} --precision {precision} --size {LATENCY['size']} --persons "
        f"{' '.join(map(str, LATENCY['persons']))} --scenes {LATENCY['scenes']} --frames "
        f"{LATENCY['frames']} --repeats {LATENCY['repeats']} --device cuda"
    )
    return Step(
        name=f"latency_{model.split('_')[0]}_{precision}",
        title=f"{model} latency, {LATENCY['size']}, {precision}, persons {LATENCY['persons']}",
        timeout=150,
        commands=lambda ctx: [
            _me(ctx, "latency", *flags.split(), "--workdir", str(ctx.work / name),
                "--json", str(ctx.work / f"{name}.json"))
        ],  # fmt: skip
        needs=("install",),
        wants=("build",),
        requires_files=(config,),
        json_name=f"{name}.json",
    )


def _train_step(precision: str) -> Step:
    name = f"train_{precision}"
    scaler = " + GradScaler" if precision == "fp16" else ""
    return Step(
        name=name,
        title=f"{TRAIN_ITERS} iterations of {QUICK_PAVE_CONFIG}, AMP {precision}{scaler}",
        timeout=120,
        commands=lambda ctx: [
            _me(ctx, "train", "--precision", precision, "--iters", str(TRAIN_ITERS),
                "--device", "cuda", "--workdir", str(ctx.work / name),
                "--json", str(ctx.work / f"{name}.json"))
        ],  # fmt: skip
        needs=("install",),
        wants=("build",),
        requires_files=(QUICK_PAVE_CONFIG,),
        json_name=f"{name}.json",
    )


STEPS: Tuple[Step, ...] = (
    Step(
        "env",
        "machine, Python, torch, CUDA",
        60,
        lambda ctx: [_me(ctx, "env-info", "--json", str(ctx.work / "env.json"))],
        json_name="env.json",
    ),
    Step("install", "install the carried wheels", 90, _install_commands),
    Step(
        "build",
        "build vpose_d2._C for the GPU (in place)",
        300,
        lambda ctx: [
            [ctx.python, "setup.py", "build_ext", "--inplace"],
            _me(ctx, "build-info", "--arch", ctx.arch, "--json", str(ctx.work / "build.json")),
        ],
        needs=("install",),
        env=_build_env,
        json_name="build.json",
    ),
    Step(
        "tests",
        "CUDA tests (parity, gradcheck, fp16/bf16, determinism, layouts, AMP)",
        240,
        lambda ctx: [
            [ctx.python, *"-m pytest -q -rs -p no:cacheprovider".split(),
             f"--junitxml={ctx.out / 'pytest.xml'}", *TEST_TARGETS]
        ],  # fmt: skip
        needs=("install", "build"),
        requires_files=TEST_TARGETS[:2],
    ),
    Step(
        "op_bench_fp32",
        "op benchmark, compiled vs reference, fp32",
        120,
        lambda ctx: [
            [ctx.python, "tools/benchmark_ops.py", *OP_BENCH_ARGS.split(),
             "--json", str(ctx.work / "op_bench_fp32.json")]
        ],  # fmt: skip
        needs=("install", "build"),
        json_name="op_bench_fp32.json",
    ),
    Step(
        "op_bench_bf16",
        "op benchmark, compiled vs reference, bf16",
        120,
        lambda ctx: [
            _me(ctx, "op-bench", "--dtype", "bfloat16", *OP_BENCH_ARGS.split(),
                "--json", str(ctx.work / "op_bench_bf16.json"))
        ],  # fmt: skip
        needs=("install", "build"),
        json_name="op_bench_bf16.json",
    ),
    _train_step("bf16"),
    _train_step("fp16"),
    _latency_step("pave_r50", "fp32"),
    _latency_step("pave_r50", "bf16"),
    _latency_step("vepe_r50", "fp32"),
    _latency_step("vepe_r50", "bf16"),
)
#: Not in the default plan; ``--steps train_fp32`` adds the fp32 baseline of the AMP runs.
EXTRA_STEPS: Tuple[Step, ...] = (_train_step("fp32"),)
ALL_STEPS = {s.name: s for s in STEPS + EXTRA_STEPS}


def plan_steps(selected: Optional[Sequence[str]]) -> List[Step]:
    """The steps to run, in the check's order: ``selected`` (all default steps when None)
    plus the steps they need or want (install before anything that imports the project)."""
    if not selected:
        return list(STEPS)
    unknown = [s for s in selected if s not in ALL_STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(ALL_STEPS)}")
    chosen = set(selected) | {"env"}
    todo = list(chosen)
    while todo:
        step = ALL_STEPS[todo.pop()]
        for dep in step.needs + step.wants:
            if dep not in chosen:
                chosen.add(dep)
                todo.append(dep)
    return [s for s in ALL_STEPS.values() if s.name in chosen]


def _parse_junit(path: Path) -> Dict[str, Any]:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    failed, skipped_cuda = [], []
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(test_id)
        skip = case.find("skipped")
        if skip is not None and "cuda" in test_id.lower():
            reason = skip.get("message", "")
            if not any(a in reason for a in ALLOWED_CUDA_SKIPS):
                skipped_cuda.append(f"{test_id}: {reason}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts, failed=failed, unexpected_cuda_skips=skipped_cuda)


def _step_numbers(step: Step, ctx: Context) -> Dict[str, Any]:
    """Key numbers of a finished step, from its result file."""
    if step.name == "tests":
        junit = ctx.out / "pytest.xml"
        return _parse_junit(junit) if junit.is_file() else {}
    path = step.json_path(ctx)
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if step.name.startswith("op_bench"):
        return {"rows": op_rows(data)}
    return data


def _numbers_brief(name: str, numbers: Dict[str, Any]) -> str:
    """One line of a step's key numbers for the final table."""
    if not numbers:
        return ""
    if name == "env":
        device = numbers.get("device", "no GPU")
        return f"{device}, torch {numbers.get('torch')}, Python {numbers.get('python')}"
    if name == "build":
        return f"cuda_kernel={numbers.get('cuda_kernel')} sass={numbers.get('sass_archs')}"
    if name == "tests":
        failed = numbers["failures"] + numbers["errors"]
        text = f"{numbers['passed']} passed, {failed} failed, {numbers['skipped']} skipped"
        if numbers.get("unexpected_cuda_skips"):
            text += f", {len(numbers['unexpected_cuda_skips'])} CUDA tests skipped"
        return text
    if name.startswith("op_bench"):
        return "; ".join(
            f"{r['case']} {r['mode']} {r['compiled_ms']:.3f} vs {r['reference_ms']:.3f} ms"
            for r in numbers["rows"]
        )
    if name.startswith("train"):
        if "error" in numbers:
            return numbers["error"][:120]
        return (
            f"loss {numbers.get('first_mean', float('nan')):.3f} -> "
            f"{numbers.get('last_mean', float('nan')):.3f}, finite={numbers['finite']}, "
            f"{numbers.get('median_step_ms', 0):.0f} ms/it"
            + (f", skipped {numbers['skipped_steps']}" if "skipped_steps" in numbers else "")
        )
    if name.startswith("latency"):
        if "error" in numbers:
            return numbers["error"][:120]
        return "; ".join(
            f"{r['persons']}p {r['streaming_ms']:.1f} ms (windowed {r['windowed_ms']:.1f})"
            for r in numbers.get("rows", [])
        )
    return ""


class CheckRun:
    """Runs the planned steps under one time budget, logging to ``out/gpu_check.log`` and
    rewriting ``out/gpu_check.json`` after every step (a run killed midway keeps its results)."""

    def __init__(self, ctx: Context, steps: List[Step], budget: float, dry_run: bool):
        self.ctx, self.steps, self.budget, self.dry_run = ctx, steps, budget, dry_run
        self.results: List[Dict[str, Any]] = []
        self.started = time.time()
        self.log = None

    # -- output --
    def summary(self) -> Dict[str, Any]:
        return dict(
            started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            budget_s=self.budget,
            elapsed_s=round(time.time() - self.started, 1),
            dry_run=self.dry_run,
            out=str(self.ctx.out),
            python=self.ctx.python,
            wheels=str(self.ctx.wheels),
            arch=self.ctx.arch,
            cuda_home=self.ctx.cuda_home,
            steps=self.results,
        )

    def _save(self) -> None:
        (self.ctx.out / "gpu_check.json").write_text(
            json.dumps(self.summary(), indent=2, default=str)
        )

    def _say(self, text: str) -> None:
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    # -- running --
    def _run_command(
        self, argv: List[str], env: Dict[str, str], timeout: float
    ) -> Tuple[int, bool]:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )

        def pump():
            for line in proc.stdout:
                sys.stdout.write(line)
                self.log.write(line)
            self.log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # the step's own process group only
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode if proc.returncode is not None else -9
        reader.join(timeout=10)
        return rc, timed_out

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The tree first (vpose_d2 is not installed there), then the carried wheels.
        paths = [str(REPO), str(self.ctx.site)] + [p for p in [env.get("PYTHONPATH")] if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("MPLBACKEND", "Agg")
        return env

    def _one(self, step: Step, status: Dict[str, str], base_env: Dict[str, str]) -> Dict:
        """Runs (or plans, or skips) one step; its summary entry."""
        entry: Dict[str, Any] = dict(step=step.name, title=step.title, timeout_s=step.timeout)
        commands = step.commands(self.ctx)
        entry["commands"] = [shlex.join(c) for c in commands]
        env_extra = step.env(self.ctx)
        if env_extra:
            entry["env"] = env_extra
        missing = [f for f in step.requires_files if not (REPO / f).exists()]
        failed_needs = [
            n for n in step.needs if status.get(n, "passed") not in ("passed", "planned")
        ]
        remaining = self.budget - (time.time() - self.started)
        if missing:
            entry.update(status="skipped", reason=f"{', '.join(missing)} absent in this tree")
        elif failed_needs:
            entry.update(status="skipped", reason=f"needs {', '.join(failed_needs)}, not passed")
        elif self.dry_run:
            entry.update(status="planned")
        elif remaining < 20:
            entry.update(status="skipped", reason=f"time budget spent ({remaining:.0f} s left)")
        else:
            timeout = min(step.timeout, remaining - 10)
            entry.update(self._execute(step, commands, dict(base_env, **env_extra), timeout))
        line = f"-- {step.name}: {entry['status']}"
        if entry.get("reason"):
            line += f" ({entry['reason']})"
        if "seconds" in entry:
            line += f" in {entry['seconds']:.0f} s"
        self._say(line)
        if self.dry_run:
            prefix = "".join(f"{k}={v} " for k, v in env_extra.items())
            for c in entry["commands"]:
                self._say(f"   $ {prefix}{c}")
        return entry

    def run(self) -> int:
        """All planned steps; 1 when one failed or timed out, else 0."""
        self.ctx.out.mkdir(parents=True, exist_ok=True)
        if not self.dry_run:
            self.ctx.work.mkdir(parents=True, exist_ok=True)
        status: Dict[str, str] = {}
        base_env = self._env()
        with open(self.ctx.out / "gpu_check.log", "a" if self.dry_run else "w") as self.log:
            dry = " (dry run)" if self.dry_run else ""
            self._say(
                f"== vpose_d2 GPU check: {len(self.steps)} steps, budget {self.budget:.0f} s, "
                f"results in {self.ctx.out}{dry}"
            )
            for step in self.steps:
                entry = self._one(step, status, base_env)
                status[step.name] = entry["status"]
                self.results.append(entry)
                self._save()
            self._say(self.table())
        self._save()
        return 1 if any(r["status"] in ("failed", "timeout") for r in self.results) else 0

    def _execute(self, step: Step, commands, env: Dict[str, str], timeout: float) -> Dict:
        for stale in (step.json_path(self.ctx), self.ctx.out / "pytest.xml"):
            if stale is not None and (stale.name != "pytest.xml" or step.name == "tests"):
                stale.unlink(missing_ok=True)  # numbers come only from this run
        t0 = time.time()
        self._say(f"\n== step {step.name}: {step.title} (timeout {timeout:.0f} s)")
        entry: Dict[str, Any] = {}
        rc, timed_out = 0, False
        for argv in commands:
            self._say(f"$ {shlex.join(argv)}")
            rc, timed_out = self._run_command(argv, env, timeout - (time.time() - t0))
            if rc != 0 or timed_out:
                break
        entry["seconds"] = round(time.time() - t0, 1)
        entry["returncode"] = rc
        try:
            entry["numbers"] = _step_numbers(step, self.ctx)
        except Exception as e:  # a broken result file must not end the check
            entry["numbers"] = {"unreadable": f"{type(e).__name__}: {e}"}
        if timed_out:
            entry["status"] = "timeout"
        elif rc != 0:
            entry["status"] = "failed"
        elif step.name == "tests" and entry["numbers"].get("unexpected_cuda_skips"):
            entry["status"] = "failed"
            entry["reason"] = "CUDA tests skipped on the GPU machine"
        else:
            entry["status"] = "passed"
        return entry

    def table(self) -> str:
        lines = ["", f"{'step':<20} {'status':<8} {'s':>6}  key numbers", "-" * 100]
        for r in self.results:
            secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
            note = _numbers_brief(r["step"], r.get("numbers", {})) or r.get("reason", "")
            lines.append(f"{r['step']:<20} {r['status']:<8} {secs:>6}  {note}")
        lines.append(
            f"summary: {self.ctx.out / 'gpu_check.json'}, log: {self.ctx.out / 'gpu_check.log'}"
        )
        return "\n".join(lines)


def help_flags(help_text: str) -> set:
    """The long options an argparse ``--help`` text lists."""
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text))


def check_plan_flags(python: str = sys.executable) -> List[str]:
    """Problems with the scripts and flags the steps call: each script's ``--help`` must list
    every flag the check passes it. Returns the problems (empty when all is well)."""
    bench_flags = benchmark_argv("c", "1x1", [1], "cpu", "o", 1, 1, 1)
    wanted = {
        "tools/benchmark_ops.py": set(OP_BENCH_FLAGS),
        "tools/benchmark.py": {a for a in bench_flags if a.startswith("--")},
    }
    problems = [f"{script} is missing" for script in wanted if not (REPO / script).is_file()]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    # Both at once: each imports torch (and Detectron2) before printing its help.
    procs = {
        script: subprocess.Popen(
            [python, script, "--help"],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for script in wanted
        if (REPO / script).is_file()
    }
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            problems.append(f"{script} --help failed: {err[-1000:]}")
            continue
        for flag in sorted(wanted[script] - help_flags(out)):
            problems.append(f"{script} has no {flag} (its --help does not list it)")
    return problems


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("wheels", help="build the wheel folder (make gpu-wheels), then check it")
    p.add_argument("--dir", type=Path, default=DEFAULT_WHEELS)
    p = sub.add_parser("check-wheels", help="check a wheel folder against the GPU machine's needs")
    p.add_argument("--dir", type=Path, default=DEFAULT_WHEELS)
    p.add_argument(
        "--no-compare", action="store_true", help="skip comparing with this Python's installs"
    )

    p = sub.add_parser("run", help="the GPU check (tools/gpu_check.sh)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: $OUT, else output/gpu_check)",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=None,
        metavar="STEP",
        help=f"run only these (and what they need); steps: {', '.join(ALL_STEPS)}",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument(
        "--check-flags",
        action="store_true",
        help="first check that every script flag the steps use exists (their --help)",
    )
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    p.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    p.add_argument(
        "--site",
        type=Path,
        default=Path(tempfile.gettempdir()) / "vpose_gpu_site",
        help="where the wheels are installed (pip --target)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder for per-step files (default: a temp folder)",
    )
    p.add_argument(
        "--arch",
        default=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
        help="TORCH_CUDA_ARCH_LIST of the build (default 9.0: H100/H200)",
    )
    p.add_argument("--python", default=sys.executable, help="the Python the steps run")

    p = sub.add_parser("env-info")
    p.add_argument("--json")
    p = sub.add_parser("build-info")
    p.add_argument("--json")
    p.add_argument("--arch", default=None, help="fail unless SASS for this arch is in the library")
    p = sub.add_parser("op-bench", help="benchmark_ops in another dtype")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES))
    p.add_argument("--devices", nargs="+", default=["cuda"])
    p.add_argument("--cases", nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=OP_BENCH_REPEATS)
    p.add_argument("--json")
    p = sub.add_parser("op-bench-child")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES))
    p.add_argument("spec")
    p = sub.add_parser("train", help="a few AMP iterations of a config on a fixed batch")
    p.add_argument("--config-file", default=QUICK_PAVE_CONFIG)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", required=True)
    p.add_argument("--json")
    p.add_argument("opts", nargs="*", help="config overrides, KEY VALUE pairs")
    p = sub.add_parser("latency", help="tools/benchmark.py latency under a precision")
    p.add_argument("--config-file", default="configs/pave_r50.yaml")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--size", default=LATENCY["size"])
    p.add_argument("--persons", type=int, nargs="+", default=list(LATENCY["persons"]))
    p.add_argument("--scenes", type=int, default=LATENCY["scenes"])
    p.add_argument("--frames", type=int, default=LATENCY["frames"])
    p.add_argument("--repeats", type=int, default=LATENCY["repeats"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", required=True)
    p.add_argument("--json")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.command == "wheels":
        build_wheels(args.dir)
        report = check_wheels(args.dir)
        print_wheel_report(report, args.dir)
        return 0 if report.ok else 1
    if args.command == "check-wheels":
        report = check_wheels(args.dir, compare_installed=not args.no_compare)
        print_wheel_report(report, args.dir)
        return 0 if report.ok else 1
    if args.command == "run":
        try:
            steps = plan_steps(args.steps)
        except ValueError as e:
            print(f"gpu_check: {e}", file=sys.stderr)
            return 2
        out = args.out or Path(os.environ.get("OUT") or REPO / "output" / "gpu_check")
        if args.work:
            work = args.work
        elif args.dry_run:  # named in the plan, never made
            work = Path(tempfile.gettempdir()) / "vpose_gpu_check.WORK"
        else:
            work = Path(tempfile.mkdtemp(prefix="vpose_gpu_check."))
        ctx = Context(
            python=args.python,
            out=Path(out).resolve(),
            work=Path(work).resolve(),
            site=args.site.resolve(),
            wheels=args.wheels.resolve(),
            arch=args.arch,
            cuda_home=find_cuda_home(),
        )
        if args.check_flags:
            problems = check_plan_flags(args.python)
            for p in problems:
                print(f"gpu_check: plan problem: {p}", file=sys.stderr)
            if problems:
                return 1
            print("gpu_check: every script flag the steps use exists")
        return CheckRun(ctx, steps, args.budget, args.dry_run).run()
    # The steps check this tree's vpose_d2, also where another copy is installed.
    sys.path.insert(0, str(REPO))
    handlers = {
        "env-info": cmd_env_info,
        "build-info": cmd_build_info,
        "op-bench": cmd_op_bench,
        "op-bench-child": cmd_op_bench_child,
        "train": cmd_train,
        "latency": cmd_latency,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
