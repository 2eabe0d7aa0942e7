"""
Build hooks for the extension modules; all metadata lives in
pyproject.toml.

- C{uringreactor._liburing}: the cffi binding to liburing (build_ffi.py).
- C{uringreactor._buffers}: the provided buffers, and the bytes objects
  long reads become without a copy; the one piece that needs the CPython C
  API (cffi cannot make Python objects), built for CPython only (PyPy
  copies reads out through the cffi module: uringreactor.cffibuffers).
  It uses only liburing's inline helpers, so it links nothing.
- C{uringreactor._pieces}: writeSequence's check of its pieces in one C
  pass; CPython only as well (elsewhere the transport checks in Python).
"""

import platform

from setuptools import Extension, setup

extensions = []
if platform.python_implementation() == "CPython":
    extensions.append(
        Extension(
            "uringreactor._buffers",
            sources=["uringreactor/_buffers.c", "uringreactor/c/bufring.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    )
    extensions.append(
        Extension(
            "uringreactor._pieces",
            sources=["uringreactor/_pieces.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    )

setup(cffi_modules=["build_ffi.py:ffibuilder"], ext_modules=extensions)
