"""Builds the runtime's C core (runtime/csrc) as a shared library loaded with ctypes."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "crome_runtime._crome_core",
            sources=["runtime/csrc/crome_core.c"],
            include_dirs=["runtime/csrc"],
            extra_compile_args=["-O3", "-std=c11", "-fvisibility=hidden"],
            libraries=["m"],
        )
    ]
)
