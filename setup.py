"""Builds the gateway's compiled front; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sampan.http._fastpath",
            ["src/sampan/http/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"],
        )
    ]
)
