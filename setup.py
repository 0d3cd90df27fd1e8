"""Builds the cffi API-mode extension over include/dgdo/*.h at install time.

cffi compiles it against the stable ABI (Py_LIMITED_API, `_dgdo_ring.abi3.so`), so one wheel
serves every CPython from 3.11 on: the bdist_wheel option tags the wheel cp311-abi3 to say so.
"""

from setuptools import setup

setup(
    cffi_modules=["sidecar/engine/ring/_build.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
