"""Builds the optional native kernel library edgerun._native (C, loaded with ctypes).

A missing compiler only produces a warning: the package then falls back to Numba.
"""

import sys

from setuptools import Extension, setup

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
            sources=["native/edgerun_kernels.c", "native/module.c"],
            depends=["native/include/edgerun.h", "native/blocks.h", "native/attn_block.h", "native/tile16.h", "native/tiles.h"],
            include_dirs=["native"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            optional=True,
        )
    ]
)
