"""Builds the optional C matcher; all metadata lives in setup.cfg.

``optional=True``: where no C compiler is present the install still succeeds and
``agent.gallery`` searches with numpy instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("agent._hamming", ["agent/_hamming.c"], optional=True, extra_compile_args=["-O3"])
    ]
)
