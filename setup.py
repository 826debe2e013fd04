"""Builds the optional native kernel library edgerun._native (C, loaded with ctypes).

A missing compiler only produces a warning: the package then falls back to Numba.
"""

import sys

from setuptools import Extension, setup

# Portable files first, then the ISA files: each arch/ file opens with its own target pragma and
# compiles to nothing on other architectures, so the list is the same everywhere.
NATIVE_SOURCES = [
    "native/edgerun_kernels.c",  # exported compute entry points
    "native/pool.c",
    "native/dispatch.c",
    "native/act.c",
    "native/quants.c",
    "native/matmul.c",
    "native/ops.c",
    "native/ffn.c",
    "native/attention.c",
    "native/repack.c",
    "native/arch/x86/avx2.c",
    "native/arch/x86/avx512.c",
    "native/arch/x86/gemm.c",
    "native/arch/x86/gather16.c",
    "native/arch/x86/repack.c",
    "native/module.c",
]
NATIVE_HEADERS = [
    "native/include/edgerun.h",
    "native/blocks.h",
    "native/common.h",
    "native/attention.h",
    "native/repack.h",
    "native/arch/x86/x86.h",
    "native/arch/x86/tile_dot.h",
]

if sys.platform == "win32":
    compile_args = ["/O2"]
    link_args: list[str] = []
elif sys.platform == "darwin":
    compile_args = ["-O3", "-std=gnu11"]
    link_args = []
else:
    compile_args = ["-O3", "-g0", "-std=gnu11", "-pthread", "-fvisibility=hidden", "-fno-math-errno"]
    link_args = ["-pthread"]

setup(
    ext_modules=[
        Extension(
            "edgerun._native",
            sources=NATIVE_SOURCES,
            depends=NATIVE_HEADERS,
            include_dirs=["native", "native/include"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=True,
        )
    ]
)
