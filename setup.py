"""Builds the cffi API-mode extension over include/dgdo/*.h at install time."""

from setuptools import setup

setup(cffi_modules=["sidecar/engine/ring/_build.py:ffibuilder"])
