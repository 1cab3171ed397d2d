"""Packages (top-level folders mapped to import names) and the runtime's C core (runtime/csrc), built as
a shared library loaded with ctypes.

The library is tuned for the building machine (-march=native); set CROME_PORTABLE=1 to build for the
compiler's baseline target instead (a wheel or image that runs on other CPUs of the same architecture).
"""
import os

from setuptools import Extension, find_packages, setup

_portable = os.environ.get("CROME_PORTABLE", "") not in ("", "0")

# Top-level folders are the pipeline's stages; their import names carry the project prefix.
FOLDER_TO_PACKAGE = {"crome_edge": "crome_edge", "export": "crome_export", "runtime": "crome_runtime"}


def packages_and_dirs() -> tuple[list[str], dict[str, str]]:
    packages, dirs = [], {}
    for folder, package in FOLDER_TO_PACKAGE.items():
        for found in find_packages(include=[folder, f"{folder}.*"]):
            name = package + found[len(folder):]
            packages.append(name)
            dirs[name] = found.replace(".", "/")
    return packages, dirs


packages, package_dir = packages_and_dirs()
setup(
    packages=packages,
    package_dir=package_dir,
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
            extra_compile_args=["-O3", "-std=c11", "-fno-wrapv", "-fvisibility=hidden", "-Wall", "-Wextra"]
            + ([] if _portable else ["-march=native"]),
            libraries=["m"],
        )
    ],
)
