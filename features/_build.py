"""Build the compiled fold (``features/_fold.c``) beside its source.

``python -m features._build`` compiles it with the C compiler Python was built with
(``make install`` runs it). It rebuilds only when the source is newer than the
library, and exits with the compiler's message and status 1 when the compiler
fails. ``make`` goes on then: a machine without a compiler runs everything, folding
in Python (slower; the worker says so at start), and ``make test`` fails on the one
test that asks for the compiled fold.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

SOURCE = Path(__file__).with_name("_fold.c")


def target() -> Path:
    """Where the library goes: ``features/_fold<EXT_SUFFIX>``."""
    return SOURCE.with_name("_fold" + str(sysconfig.get_config_var("EXT_SUFFIX")))


def build(force: bool = False) -> Path:
    """Compile the fold; return the library's path."""
    out = target()
    if not force and out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    out.unlink(missing_ok=True)  # a failed build leaves no stale library behind
    cc = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
    command = [
        *cc,
        "-O2",
        "-fPIC",
        "-shared",
        "-Wall",
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        "-o",
        str(out.with_suffix(".tmp")),
    ]
    subprocess.run(command, check=True)  # noqa: S603 - the compiler Python was built with
    out.with_suffix(".tmp").replace(out)  # never a half-written library
    return out


def main() -> int:
    try:
        print(f"built {build(force='--force' in sys.argv[1:])}")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"cannot build the compiled fold: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
