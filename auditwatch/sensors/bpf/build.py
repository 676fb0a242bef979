"""Compile exec.bpf.c into exec.bpf.o (CO-RE, BTF kept). Stdlib only.

Used by ``setup.py`` (``pip install .`` builds the object into the package), by the sensor when
a source checkout has no object yet, and by the tests. Same flags as the Makefile beside it:

    clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I/usr/include/x86_64-linux-gnu -c exec.bpf.c
    llvm-strip -g exec.bpf.o        # drops DWARF, keeps .BTF and .BTF.ext (CO-RE relocations)
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "exec.bpf.c"
SOURCES = (SOURCE, HERE / "core.h")
OBJECT = HERE / "exec.bpf.o"
HINT = "install clang llvm libbpf-dev"
LIBBPF_HEADER = Path("/usr/include/bpf/bpf_helpers.h")


class BuildError(RuntimeError):
    """The BPF object cannot be built here; the message says what to install."""


def _tool(env: str, *names: str) -> str:
    for name in (os.environ.get(env), *names):
        if name and (found := shutil.which(name)):
            return found
    raise BuildError(f"{names[0]} not found: {HINT}")


def command(source: Path = SOURCE, output: Path = OBJECT) -> list[list[str]]:
    if platform.machine() != "x86_64":
        raise BuildError(f"the exec sensor is written for x86_64, not {platform.machine()}")
    clang = _tool("CLANG", "clang", "clang-16", "clang-15", "clang-14")
    strip = _tool("LLVM_STRIP", "llvm-strip", "llvm-strip-16", "llvm-strip-15", "llvm-strip-14")
    if not LIBBPF_HEADER.exists():
        raise BuildError(f"{LIBBPF_HEADER} missing: {HINT}")
    arch_inc = f"/usr/include/{platform.machine()}-linux-gnu"
    return [
        [clang, "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{arch_inc}",
         "-Wall", "-c", str(source), "-o", str(output)],
        [strip, "-g", str(output)],
    ]


def build(output: Path = OBJECT, source: Path = SOURCE) -> Path:
    """Compile ``source`` to ``output`` atomically (a half-written object is never left behind)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".exec.bpf.", suffix=".o", dir=output.parent)
    os.close(fd)
    try:
        for cmd in command(source, Path(tmp)):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def stale(output: Path = OBJECT) -> bool:
    """The object is missing or older than its sources (source checkouts only)."""
    if not output.exists():
        return True
    built = output.stat().st_mtime
    return any(s.exists() and s.stat().st_mtime > built for s in SOURCES)


def ensure_built(output: Path = OBJECT) -> Path:
    """Build when missing or stale (tests and source checkouts); else leave it alone."""
    return build(output) if stale(output) else output


if __name__ == "__main__":
    print(build())
