"""Packages and the runtime's C core (runtime/csrc), built as a shared library loaded with ctypes.

Each package's folder carries its import name: `crome_edge/`, `export/crome_export/`,
`runtime/crome_runtime/`, and the command line `export/crome_cli/` (the top-level folders are the pipeline's
stages; the CLI sits beside the exporter, the package it imports last). An editable install puts the
three package roots on sys.path with a plain `.pth` file — no import hook — so IDEs and type checkers
resolve every import the way Python does.

The library is tuned for the building machine (-march=native); set CROME_PORTABLE=1 to build for the
compiler's baseline target instead (a wheel or image that runs on other CPUs of the same architecture).
The block-quantised decode kernels (qblock.c) pick their AVX2 / AVX-512 path at run time either way.
"""
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.editable_wheel import _StaticPth, editable_wheel

_portable = os.environ.get("CROME_PORTABLE", "") not in ("", "0")

# import name -> its folder (the folder's name *is* the import name)
PACKAGE_ROOTS = {"crome_edge": ".", "crome_export": "export", "crome_runtime": "runtime", "crome_cli": "export"}


def packages_and_dirs() -> tuple[list[str], dict[str, str]]:
    from setuptools import find_packages

    packages, dirs = [], {}
    for package, root in PACKAGE_ROOTS.items():
        for found in find_packages(where=root, include=[package, f"{package}.*"]):
            packages.append(found)
            dirs[found] = str(Path(root, *found.split(".")))
    return packages, dirs


class StaticPathEditable(editable_wheel):
    """`pip install -e .`: a .pth naming the package roots instead of setuptools' import-hook finder
    (which it picks for any layout with more than one root, and which mypy, pyright and IDEs cannot follow)."""

    def _select_strategy(self, name, tag, build_lib):
        roots = [Path(self.project_dir, root).resolve() for root in dict.fromkeys(PACKAGE_ROOTS.values())]
        return _StaticPth(self.distribution, name, roots)


packages, package_dir = packages_and_dirs()
setup(
    packages=packages,
    package_dir=package_dir,
    cmdclass={"editable_wheel": StaticPathEditable},
    ext_modules=[
        Extension(
            "crome_runtime._crome_core",
            sources=[
                "runtime/csrc/crome_core.c",
                "runtime/csrc/preprocess.c",
                "runtime/csrc/gproj.c",
                "runtime/csrc/sampler.c",
                "runtime/csrc/pool.c",
                "runtime/csrc/qblock.c",
                "runtime/csrc/llm.c",
            ],
            include_dirs=["runtime/csrc"],
            extra_compile_args=["-O3", "-std=c11", "-fno-wrapv", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"]
            + ([] if _portable else ["-march=native"]),
            extra_link_args=["-pthread"],
            libraries=["m"],
        )
    ],
)
