#!/usr/bin/env python
"""Builds vpose_d2 and its compiled op ``vpose_d2._C`` (see csrc/ and README "Building the op")."""

import glob
import os
import warnings
from os import path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = path.dirname(path.abspath(__file__))


def get_extensions():
    """The ``vpose_d2._C`` extension: CPU kernels always, CUDA kernels where they can be built.

    CUDA is compiled in when a toolkit (``CUDA_HOME``) and a CUDA build of torch are present,
    or when ``FORCE_CUDA=1`` (e.g. a build machine whose toolkit torch cannot locate);
    ``FORCE_CUDA=0`` or ``VPOSE_NO_CUDA=1`` builds the CPU kernels only. Whether a GPU is
    visible does not decide it: the op picks its kernel per tensor device at run time.
    """

    # Sources relative to setup.py: setuptools rejects absolute paths in some install modes.
    def find(*pattern: str) -> list:
        return sorted(glob.glob(path.join("csrc", *pattern), root_dir=HERE))

    sources = find("*.cpp") + find("cpu", "*.cpp")
    cuda_sources = find("cuda", "*.cu")
    force = os.environ.get("FORCE_CUDA")
    if os.environ.get("VPOSE_NO_CUDA") == "1" or force == "0":
        with_cuda = False
    elif force == "1":
        with_cuda = True
    else:
        with_cuda = CUDA_HOME is not None and torch.version.cuda is not None
        if with_cuda and not path.exists(path.join(CUDA_HOME, "include", "cuda_runtime.h")):
            # torch guesses CUDA_HOME from `which nvcc`; a wrapper script outside the toolkit
            # makes that guess wrong. Build CPU-only rather than fail; CUDA_HOME fixes it.
            warnings.warn(
                f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h: building vpose_d2._C "
                "without CUDA kernels (set CUDA_HOME to the toolkit, or FORCE_CUDA=1)"
            )
            with_cuda = False
    with_cuda = with_cuda and bool(cuda_sources)

    # at::parallel_for only runs in parallel when the caller is compiled with OpenMP (the
    # threading backend torch's wheels use); libgomp is the one torch already loaded.
    # -ffp-contract=off: the CPU kernels must round the sampling coordinate exactly as ATen's
    # grid_sample does (see csrc/ms_deform_attn.h), and without FMAs the baseline and AVX2 copies
    # of the kernels give bit-identical results.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-ffp-contract=off"]}
    extra_link_args = ["-fopenmp"]
    define_macros = []
    extension = CppExtension
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # With no GPU to ask, torch compiles for every architecture it knows, which makes
            # the build crawl (many minutes per arch for a handful of kernels). Hopper is the
            # default target here; set TORCH_CUDA_ARCH_LIST (e.g. "8.0;8.6;9.0") for others.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        extension = CUDAExtension
        sources = sources + cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]
    return [
        extension(
            "vpose_d2._C",
            sources,
            include_dirs=[path.join(HERE, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="vpose_d2",
    version="0.1.0",
    description="End-to-end multi-person video pose estimation (PAVE-Net, VEPE) for Detectron2",
    packages=find_packages(exclude=("tests", "tools", "demo", "configs")),
    python_requires=">=3.10",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
