"""tools/gpu_check.sh / tools/gpu_check.py, the half that runs without a GPU: the plan and its
arguments, the scripts and flags the steps call, the wheel-folder checks, and whether the
project imports with only what the GPU machine has plus the carried wheels. No network."""

import ast
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
gpu_check = load_script("tools/gpu_check.py")


def run_check(*args, env=None, script=("tools/gpu_check.py", "run")):
    cmd = (
        [sys.executable, *script, *args] if script[0].endswith(".py") else ["bash", *script, *args]
    )
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **(env or {})),
    )


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def test_dry_run_plans_every_step_and_writes_the_summary(tmp_path):
    proc = run_check("--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == [s.name for s in gpu_check.STEPS]
    assert summary["dry_run"] is True and (tmp_path / "gpu_check.log").is_file()
    for name, s in steps.items():
        if name.startswith("latency_vepe") and not (REPO / "configs/vepe_r50.yaml").exists():
            assert s["status"] == "skipped" and "configs/vepe_r50.yaml absent" in s["reason"]
        else:
            assert s["status"] == "planned", (name, s)
        assert s["commands"], name
        assert f"-- {name}: " in proc.stdout
    # The build targets the H200 and forces the CUDA kernels in.
    assert steps["build"]["env"]["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert steps["build"]["env"]["FORCE_CUDA"] == "1"
    install = steps["install"]["commands"][0]
    wheels_dir = gpu_check.DEFAULT_WHEELS
    if any(wheels_dir.glob("*.whl")):
        assert "--no-index" in install and "--target" in install and ".whl" in install
    else:
        assert "make gpu-wheels" in install
    joined = " ".join(c for s in steps.values() for c in s["commands"])
    for needle in (
        "tests/test_cuda_paths.py",
        "tools/benchmark_ops.py --devices cuda",
        "--precision bf16",
        "--precision fp16",
        "--size 800x1333",
        "--persons 1 20",
        "configs/pave_r50.yaml",
    ):
        assert needle in joined, needle


def test_steps_subset_adds_what_it_needs_in_order():
    names = [s.name for s in gpu_check.plan_steps(["train_fp16", "tests"])]
    assert names == ["env", "install", "build", "tests", "train_fp16"]
    assert [s.name for s in gpu_check.plan_steps(["env"])] == ["env"]
    assert "train_fp32" in [s.name for s in gpu_check.plan_steps(["train_fp32"])]
    assert "train_fp32" not in [s.name for s in gpu_check.plan_steps(None)]


def test_unknown_step_is_named_with_the_valid_ones(tmp_path):
    proc = run_check("--dry-run", "--steps", "tests", "benchmark", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown step(s) benchmark" in proc.stderr and "op_bench_bf16" in proc.stderr


def test_shell_wrapper_passes_arguments_and_uses_out(tmp_path):
    out = tmp_path / "from_env"
    proc = run_check(
        "--dry-run",
        "--steps",
        "op_bench_bf16",
        script=("tools/gpu_check.sh",),
        env={"OUT": str(out), "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["env", "install", "build", "op_bench_bf16"]
    assert summary["python"] == sys.executable


def test_a_failing_step_does_not_stop_the_others(tmp_path, monkeypatch):
    # Real subprocesses through the real runner: one fails, one times out, the rest still run,
    # and steps that need a failed one are skipped with the reason.
    S = gpu_check.Step
    py = sys.executable
    steps = [
        S("a", "fails", 30, lambda ctx: [[py, "-c", "import sys; print('boom'); sys.exit(3)"]]),
        S("b", "sleeps", 2, lambda ctx: [[py, "-c", "import time; time.sleep(30)"]]),
        S("c", "needs a", 30, lambda ctx: [[py, "-c", "print('never')"]], needs=("a",)),
        S("d", "passes", 30, lambda ctx: [[py, "-c", "print('fine')"], [py, "-c", "print(2)"]]),
    ]
    ctx = gpu_check.Context(py, tmp_path, tmp_path / "w", tmp_path / "site", tmp_path, "9.0", None)
    rc = gpu_check.CheckRun(ctx, steps, budget=60, dry_run=False).run()
    assert rc == 1
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["step"]: s for s in summary["steps"]}
    assert status["a"]["status"] == "failed" and status["a"]["returncode"] == 3
    assert status["b"]["status"] == "timeout" and status["b"]["seconds"] < 20
    assert status["c"]["status"] == "skipped" and "needs a" in status["c"]["reason"]
    assert status["d"]["status"] == "passed"
    log = (tmp_path / "gpu_check.log").read_text()
    assert "boom" in log and "fine" in log and "never" not in log


def test_budget_spent_skips_the_remaining_steps(tmp_path):
    py = sys.executable
    steps = [gpu_check.Step("late", "x", 30, lambda ctx: [[py, "-c", "pass"]])]
    ctx = gpu_check.Context(py, tmp_path, tmp_path / "w", tmp_path / "s", tmp_path, "9.0", None)
    gpu_check.CheckRun(ctx, steps, budget=5, dry_run=False).run()
    (entry,) = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert entry["status"] == "skipped" and "time budget" in entry["reason"]


def test_junit_summary_flags_cuda_tests_that_skipped(tmp_path):
    xml = tmp_path / "pytest.xml"
    xml.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="2">
        <testcase classname="tests.test_a" name="test_cpu"/>
        <testcase classname="tests.test_a" name="test_cuda_x"><failure message="x"/></testcase>
        <testcase classname="tests.test_a" name="test_cuda_y"><skipped message="no CUDA device"/></testcase>
        <testcase classname="tests.test_a" name="test_cuda_z"><skipped message="needs 2 CUDA devices"/></testcase>
        </testsuite></testsuites>"""))
    got = gpu_check._parse_junit(xml)
    assert got["passed"] == 1 and got["failures"] == 1 and got["skipped"] == 2
    assert got["failed"] == ["tests.test_a::test_cuda_x"]
    assert got["unexpected_cuda_skips"] == ["tests.test_a::test_cuda_y: no CUDA device"]


def test_help_flags_reads_argparse_help():
    text = "usage: b.py [-h] [--no-flops] [--size SIZE]\n  --latency-size LATENCY_SIZE  x --not-a\n"
    assert gpu_check.help_flags(text) == {"--no-flops", "--size", "--latency-size", "--not-a"}
    assert "--size" not in gpu_check.help_flags("usage: b.py [--sizes S] [-size]")


def test_every_script_and_flag_the_steps_call_exists(tmp_path):
    assert gpu_check.check_plan_flags(sys.executable) == []
    for step in gpu_check.ALL_STEPS.values():
        for f in step.requires_files:
            if "vepe" not in f:
                assert (REPO / f).exists(), f
    # The check's own subcommands accept what the steps pass them.
    ctx = gpu_check.Context(sys.executable, tmp_path, tmp_path, tmp_path, tmp_path, "9.0", None)
    parser = gpu_check.get_parser()
    for step in gpu_check.ALL_STEPS.values():
        for argv in step.commands(ctx):
            if argv[1:2] == [str(REPO / "tools" / "gpu_check.py")]:
                parser.parse_args(argv[2:])  # SystemExit on an unknown flag
            elif argv[1:3] == ["-m", "pytest"]:
                for target in argv:
                    if target.startswith("tests/"):
                        path, _, name = target.partition("::")
                        assert (REPO / path).is_file(), path
                        if name:
                            assert f"def {name}(" in (REPO / path).read_text(), target


def test_op_bench_variant_runs_benchmark_ops_in_bf16():
    import torch

    spec = dict(case="decoder", device="cpu", impl="compiled", mode="fwd+bwd", repeats=1)
    result = gpu_check.op_bench_variant(spec, "bf16")
    assert result["dtype"] == "bfloat16" and result["ms"] > 0 and result["case"] == "decoder"
    assert torch.get_default_dtype() == torch.float32  # restored
    rows = gpu_check.op_rows([result, dict(result, impl="reference", ms=2 * result["ms"])])
    assert rows[0]["speedup"] == pytest.approx(2.0) and rows[0]["dtype"] == "bfloat16"


# ----------------------------------------------------------------------------------------------
# Wheel folder
# ----------------------------------------------------------------------------------------------
def fake_wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
    return path


def complete_folder(folder: Path) -> None:
    """One fake wheel per carried distribution, with requirements like the real ones."""
    requires = {
        "pb1-detectron2": [
            "fvcore<0.1.6,>=0.1.5",
            "iopath<0.1.10,>=0.1.7",
            "pycocotools>=2.0.2",
            "omegaconf>=2.1",
            "black==21.4b2",
            "hydra-core>=1.1",
            "tabulate",
            "dataclasses; python_version < '3.7'",
            "shapely; extra == 'all'",
        ],
        "fvcore": ["yacs>=0.1.6", "termcolor>=1.1", "iopath>=0.1.7", "pyyaml>=5.1", "numpy"],
        "iopath": ["portalocker", "tqdm"],
        "omegaconf": ["antlr4-python3-runtime==4.9.*", "PyYAML>=5.1.0"],
    }
    versions = {
        "pb1-detectron2": "0.6",
        "fvcore": "0.1.5.post20221221",
        "iopath": "0.1.9",
        "yacs": "0.1.8",
        "pycocotools": "2.0.11",
        "omegaconf": "2.3.1",
        "antlr4-python3-runtime": "4.9.3",
        "termcolor": "3.3.0",
    }
    for c in gpu_check.CARRIED:
        tag = "cp312-abi3-manylinux_2_17_x86_64" if c.name == "pycocotools" else "py3-none-any"
        fake_wheel(folder, c.name, versions[c.name], requires.get(c.name, ()), tag)


def test_complete_folder_passes(tmp_path):
    complete_folder(tmp_path)
    report = gpu_check.check_wheels(tmp_path, compare_installed=False)
    assert report.ok, report.errors
    assert len(report.wheels) == len(gpu_check.CARRIED) and report.total_bytes > 0


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: next(d.glob("yacs-*")).unlink(), "missing yacs"),
        (lambda d: fake_wheel(d, "yacs", "0.1.9"), "yacs: 2 versions"),
        (
            lambda d: (
                next(d.glob("pycocotools-*")).unlink(),
                fake_wheel(d, "pycocotools", "2.0.11", tag="cp311-cp311-manylinux_2_17_x86_64"),
            ),
            "none installs on CPython 3.12",
        ),
        (
            lambda d: (
                next(d.glob("termcolor-*")).unlink(),
                fake_wheel(d, "termcolor", "1.0", tag="py3-none-macosx_11_0_arm64"),
            ),
            "none installs on CPython 3.12",
        ),
        (
            lambda d: fake_wheel(d, "extra-thing", "1.0", ["requests", "leftpad>=1"]),
            "neither the GPU image nor the folder has leftpad",
        ),
        (
            lambda d: (
                next(d.glob("antlr4*")).unlink(),
                fake_wheel(d, "antlr4-python3-runtime", "4.13.2"),
            ),
            "requires antlr4-python3-runtime==4.9.*",
        ),
    ],
    ids=[
        "missing",
        "two-versions",
        "wrong-python",
        "wrong-platform",
        "unmet-requirement",
        "version-conflict",
    ],
)
def test_folder_problems_are_named(tmp_path, change, expected):
    complete_folder(tmp_path)
    change(tmp_path)
    report = gpu_check.check_wheels(tmp_path, compare_installed=False)
    assert not report.ok
    assert any(expected in e for e in report.errors), report.errors


def test_shadowing_an_image_package_is_a_warning(tmp_path):
    complete_folder(tmp_path)
    fake_wheel(tmp_path, "numpy", "1.26.4")
    report = gpu_check.check_wheels(tmp_path, compare_installed=False)
    assert report.ok and any(
        "numpy" in w and "already on the GPU image" in w for w in report.warnings
    )


def test_no_folder_says_how_to_make_it(tmp_path):
    report = gpu_check.check_wheels(tmp_path / "nope")
    assert report.errors == [f"{tmp_path / 'nope'}: no such folder (run `make gpu-wheels`)"]


def test_packed_detectron2_is_the_installed_one(tmp_path):
    from importlib import metadata

    try:
        dist = metadata.distribution("pb1-detectron2")
    except metadata.PackageNotFoundError:
        pytest.skip("pb1-detectron2 is not installed here (tools/install_detectron2.sh)")
    wheel = gpu_check.pack_installed("pb1-detectron2", tmp_path)
    again = gpu_check.pack_installed("pb1-detectron2", tmp_path / "..")
    assert wheel.read_bytes() == again.read_bytes()  # deterministic
    again.unlink()
    assert wheel.name == f"pb1_detectron2-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        record = zf.read(f"pb1_detectron2-{dist.version}.dist-info/RECORD").decode()
    assert "detectron2/__init__.py" in names and "detectron2/config/config.py" in names
    assert not any(n.endswith((".pyc", ".so")) or "__pycache__" in n for n in names)
    assert len(record.splitlines()) == len(names)
    site = Path(dist.locate_file(""))
    assert (
        zipfile.ZipFile(wheel).read("detectron2/config/config.py")
        == (site / "detectron2/config/config.py").read_bytes()
    )


def test_the_built_folder_is_complete():
    folder = gpu_check.DEFAULT_WHEELS
    if not folder.is_dir():
        pytest.skip(f"{folder} not built (`make gpu-wheels` downloads from the registry)")
    report = gpu_check.check_wheels(folder)
    assert report.ok, report.errors
    assert report.total_bytes < 16 * 2**20


# ----------------------------------------------------------------------------------------------
# The project with only the GPU machine's packages and the carried ones
# ----------------------------------------------------------------------------------------------
def _imports_of(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


#: What the check runs on the GPU machine (lazy imports inside functions included).
GPU_SIDE_SOURCES = [
    *sorted((REPO / "vpose_d2").rglob("*.py")),
    REPO / "tools" / "gpu_check.py",
    REPO / "tools" / "benchmark.py",
    REPO / "tools" / "benchmark_ops.py",
    REPO / "setup.py",
    *(REPO / t.split("::")[0] for t in gpu_check.TEST_TARGETS),
    REPO / "tests" / "conftest.py",
]


def test_every_import_of_the_gpu_side_code_is_on_the_machine_or_carried():
    from importlib import metadata

    dists = metadata.packages_distributions()
    allowed = gpu_check.GPU_IMAGE_PACKAGES | gpu_check.CARRIED_NAMES
    local = {"vpose_d2", "test_ms_deform_attn", "script_loader", "conftest", "tools"}
    missing = {}
    for path in GPU_SIDE_SOURCES:
        for top in set(_imports_of(path)):
            if top in sys.stdlib_module_names or top in local or top not in dists:
                continue
            if not any(gpu_check.canonical(d) in allowed for d in dists[top]):
                missing.setdefault(top, []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported but neither on the GPU image nor carried: {missing}"


BLOCKER = r"""
import importlib.abc, importlib.metadata, json, sys
allowed = set(json.loads(sys.argv[1]))
dists = importlib.metadata.packages_distributions()
canonical = lambda n: n.lower().replace("_", "-").replace(".", "-")
REMOVED_IN_312 = {"distutils", "imp", "asynchat", "asyncore", "smtpd"}
blocked = []

class GpuMachinePackages(importlib.abc.MetaPathFinder):
    # Refuses modules of distributions the GPU machine will not have.
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in REMOVED_IN_312:
            raise ModuleNotFoundError(f"{name}: removed in Python 3.12 (the GPU machine's)")
        owners = dists.get(top)
        if owners and not any(canonical(d) in allowed for d in owners):
            blocked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} on the GPU machine ({owners})")
        return None

sys.meta_path.insert(0, GpuMachinePackages())
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[2] + "/tests")
if sys.argv[3:]:
    for name in sys.argv[3:]:
        __import__(name)
else:  # the project, as the GPU check runs it
    import pkgutil
    import vpose_d2
    for m in pkgutil.walk_packages(vpose_d2.__path__, "vpose_d2."):
        __import__(m.name)
    from script_loader import load_script
    for script in ("tools/benchmark.py", "tools/benchmark_ops.py", "tools/gpu_check.py"):
        load_script(script)
    import test_ms_deform_attn, test_cuda_paths, test_engine  # what the tests step collects
print("BLOCKED", json.dumps(sorted(set(blocked))))
"""


def import_as_on_the_gpu_machine(*modules, leave_out=()):
    # vpose_d2 itself may be installed (editable) here; there it runs from the tree.
    allowed = gpu_check.GPU_IMAGE_PACKAGES | gpu_check.CARRIED_NAMES | {"vpose-d2"}
    allowed = sorted(allowed - set(leave_out))
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, json.dumps(allowed), str(REPO), *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def test_the_import_guard_refuses_what_the_gpu_machine_lacks():
    proc = import_as_on_the_gpu_machine("omegaconf", leave_out=["omegaconf"])
    assert proc.returncode != 0 and "No module named 'omegaconf' on the GPU machine" in proc.stderr
    proc = import_as_on_the_gpu_machine("distutils")
    assert proc.returncode != 0 and "removed in Python 3.12" in proc.stderr
    assert import_as_on_the_gpu_machine("yacs.config").returncode == 0


def test_project_imports_with_only_the_gpu_machines_packages():
    proc = import_as_on_the_gpu_machine()
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Optional imports that were refused (and survived) are listed; none is needed.
    blocked = json.loads(proc.stdout.split("BLOCKED", 1)[1])
    assert not [b for b in blocked if b.split(".")[0] in ("detectron2", "fvcore", "pycocotools")]
