"""Build hook: compile the eBPF exec sensor's object into the package.

``pip install .`` / ``pip install -e .`` run ``build_bpf`` (a ``build_py``), which compiles
auditwatch/sensors/bpf/exec.bpf.c with clang into ``exec.bpf.o`` next to the sensor module (in
the wheel for a normal install, in the source tree for an editable one). Everything else is in
pyproject.toml. Set AUDITWATCH_SKIP_BPF_BUILD=1 to install without the object (audit-only hosts).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BPF_DIR = Path("auditwatch", "sensors", "bpf")


def _bpf_build_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_aw_bpf_build", HERE / BPF_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class build_bpf(build_py):
    """build_py + clang: the BPF object lands beside auditwatch/sensors/bpf/sensor.py."""

    def run(self) -> None:
        super().run()
        if os.environ.get("AUDITWATCH_SKIP_BPF_BUILD") == "1":
            self.announce("AUDITWATCH_SKIP_BPF_BUILD=1: not building exec.bpf.o", level=2)
            return
        mod = _bpf_build_module()
        if getattr(self, "editable_mode", False):
            target = HERE / BPF_DIR / "exec.bpf.o"
        else:
            target = Path(self.build_lib) / BPF_DIR / "exec.bpf.o"
        try:
            mod.build(target, HERE / BPF_DIR / "exec.bpf.c")
        except mod.BuildError as e:
            raise SystemExit(f"auditwatch: cannot build the BPF object: {e}") from e
        self.announce(f"built {target}", level=2)


setup(cmdclass={"build_py": build_bpf})
