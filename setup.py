"""Build the optional Cython scoring kernel.

The extension is optional: when Cython or a C compiler is missing the package installs
without it and ``gslb.scoring`` falls back to the pure-Python twin. ``GSLB_NO_EXTENSIONS=1``
skips the build entirely.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing: keep the pure-Python twin
            print(f"warning: gslb scoring extension not built ({exc})", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: could not build {ext.name} ({exc})", file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("GSLB_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    return cythonize(
        ["gslb/_scoring.pyx"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
