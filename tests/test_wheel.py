"""The built package carries its BPF object, rules and example config, and the installed copy
loads the probe with no compiler on PATH (issue B: built at package build, not at run time)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CARRIED = ["auditwatch/sensors/bpf/exec.bpf.o", "auditwatch/data/auditwatch.rules",
           "auditwatch/data/config.yaml.example", "auditwatch/py.typed"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)
    [whl] = out.glob("auditwatch-*.whl")
    return whl


def test_wheel_carries_object_rules_and_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in CARRIED:
        assert name in names, name


@pytest.mark.kernel
def test_installed_copy_loads_the_probe_without_a_compiler(wheel: Path, tmp_path: Path,
                                                            bpf_ready: None) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = ("import auditwatch, shutil\n"
            "from auditwatch.sensors.bpf.sensor import BpfExecSource\n"
            "assert shutil.which('clang') is None\n"
            "s = BpfExecSource(); s.load(); print(auditwatch.__file__, s.attached()); s.close()\n")
    env = {**os.environ, "PYTHONPATH": str(target), "PATH": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    path, attached = out.stdout.split()
    assert path.startswith(str(target)) and attached == "True"
