#!/usr/bin/env python
"""Builds vpose_d2 and its compiled op ``vpose_d2._C`` (see csrc/ and README "Building the op")."""

import glob
import os
from os import path

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = path.dirname(path.abspath(__file__))


def get_extensions():
    """CPU kernels always; CUDA kernels with a CUDA toolkit and a CUDA torch, or FORCE_CUDA=1."""
    csrc = path.join(HERE, "csrc")
    sources = sorted(glob.glob(path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(path.join(csrc, "**", "*.cu"), recursive=True))
    force = os.environ.get("FORCE_CUDA")
    with_cuda = (CUDA_HOME is not None and torch.version.cuda is not None) if force is None else (
        force == "1"
    )
    extra = {"cxx": ["-O3"]}
    if with_cuda and cuda_sources:
        extra["nvcc"] = ["-O3"]
        return [
            CUDAExtension(
                "vpose_d2._C",
                sources + cuda_sources,
                include_dirs=[csrc],
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args=extra,
            )
        ]
    return [CppExtension("vpose_d2._C", sources, include_dirs=[csrc], extra_compile_args=extra)]


setup(
    name="vpose_d2",
    version="0.1.0",
    description="End-to-end multi-person video pose estimation (PAVE-Net, VEPE) for Detectron2",
    packages=find_packages(exclude=("tests", "tools", "demo", "configs")),
    python_requires=">=3.10",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
