"""Build the optional Cython scoring kernel.

The extension is optional: when Cython or a C compiler is missing the package installs
without it and ``gslb.core.scoring`` falls back to the pure-Python twin. ``GSLB_NO_EXTENSIONS=1``
skips the build entirely.

The module is stamped with the SHA-256 of the ``.pyx`` text it is compiled from
(``gslb.core._scoring.SOURCE_SHA256``), so ``gslb.core.scoring`` can refuse a stale in-place build.
"""

import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

PYX = "gslb/core/_scoring.pyx"


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
        print(
            "warning: Cython is missing: gslb scoring extension not (re)built",
            file=sys.stderr,
        )
        return []
    digest = hashlib.sha256(Path(PYX).read_bytes()).hexdigest()
    generated = Path(PYX).with_suffix(".c")
    # cythonize regenerates the C file only when the .pyx is newer; the digest must be that
    # of the text the C file comes from, so regenerate whenever the C file lacks it.
    current = generated.exists() and digest in generated.read_text(errors="replace")
    return cythonize(
        [PYX],
        force=not current,
        compile_time_env={"GSLB_PYX_SHA256": digest},
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
