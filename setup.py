"""Builds the runtime's C core (runtime/csrc) as a shared library loaded with ctypes.

The library is tuned for the building machine (-march=native); set CROME_PORTABLE=1 to build for the
compiler's baseline target instead (a wheel or image that runs on other CPUs of the same architecture).
"""
import os

from setuptools import Extension, setup

_portable = os.environ.get("CROME_PORTABLE", "") not in ("", "0")

setup(
    ext_modules=[
        Extension(
            "crome_runtime._crome_core",
            sources=[
                "runtime/csrc/crome_core.c",
                "runtime/csrc/preprocess.c",
                "runtime/csrc/gproj.c",
                "runtime/csrc/sampler.c",
            ],
            include_dirs=["runtime/csrc"],
            extra_compile_args=["-O3", "-std=c11", "-fvisibility=hidden", "-Wall", "-Wextra"]
            + ([] if _portable else ["-march=native"]),
            libraries=["m"],
        )
    ]
)
