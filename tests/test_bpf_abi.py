"""abi.py against the compiled object: the ctypes mirror and the C struct must agree, field by
field (Tetragon's alignchecker habit), and the object must carry CO-RE relocations (no offset is
hard-coded: libbpf rewrites them against the running kernel's BTF)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from auditwatch.sensors.bpf import abi, build

_TYPE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)")


@pytest.fixture(scope="module")
def bpf_object() -> Path:
    try:
        return build.ensure_built()
    except build.BuildError as e:
        pytest.fail(f"cannot build the BPF object: {e}")


def _btf_types(obj: Path) -> tuple[dict[int, tuple[str, str, str]], dict[str, list[tuple]]]:
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool not installed (apt-get install bpftool)")
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    types: dict[int, tuple[str, str, str]] = {}
    members: dict[str, list[tuple]] = {}
    current = None
    for line in out.splitlines():
        if m := _TYPE.match(line):
            tid, kind, name, rest = int(m[1]), m[2], m[3], m[4]
            types[tid] = (kind, name, rest)
            current = name if kind == "STRUCT" else None
            if current:
                members[current] = []
        elif current and (m := _MEMBER.match(line)):
            members[current].append((m[1], int(m[2]), int(m[3])))
    return types, members


def _attr(rest: str, key: str) -> int:
    m = re.search(rf"\b{key}=(\d+)", rest)
    assert m, (key, rest)
    return int(m[1])


def _size(types: dict[int, tuple[str, str, str]], tid: int) -> int:
    kind, _, rest = types[tid]
    if kind in ("INT", "STRUCT", "UNION", "ENUM", "ENUM64"):
        return _attr(rest, "size")
    if kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
        return _size(types, _attr(rest, "type_id"))
    if kind == "ARRAY":
        return _size(types, _attr(rest, "type_id")) * _attr(rest, "nr_elems")
    if kind == "PTR":
        return 8
    raise AssertionError(f"unexpected BTF kind {kind}")


def test_event_struct_matches_btf(bpf_object: Path) -> None:
    types, members = _btf_types(bpf_object)
    assert abi.STRUCT_NAME in members, "struct aw_exec_event missing from the object's BTF"
    struct_rest = next(r for k, n, r in types.values() if k == "STRUCT" and n == abi.STRUCT_NAME)
    assert _attr(struct_rest, "size") == abi.RECORD_SIZE
    btf = {name: (bits // 8, _size(types, tid)) for name, tid, bits in members[abi.STRUCT_NAME]}
    assert list(btf) == list(abi.layout()), "field order/names differ"
    assert btf == abi.layout()


def _elf_section(path: Path, wanted: str) -> bytes:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64 object"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i: int) -> tuple[int, int, int]:
        name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size
    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        name, off, size = header(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end].decode() == wanted:
            return data[off:off + size]
    raise AssertionError(f"section {wanted} missing")


def test_object_keeps_btf_and_core_relocations(bpf_object: Path) -> None:
    assert _elf_section(bpf_object, ".BTF")
    ext = _elf_section(bpf_object, ".BTF.ext")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", ext, 0)
    assert magic == 0xEB9F
    assert hdr_len >= 32, ".BTF.ext without a CO-RE relocation section"
    _core_off, core_len = struct.unpack_from("<II", ext, 24)
    assert core_len > 100, "no CO-RE relocations: kernel offsets would be hard-coded"
    # llvm-strip -g drops DWARF but must keep BTF
    with pytest.raises(AssertionError):
        _elf_section(bpf_object, ".debug_info")


def test_build_error_names_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda _name: None)
    with pytest.raises(build.BuildError, match="install clang llvm libbpf-dev"):
        build.command()
