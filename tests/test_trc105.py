"""TRC-105: the detector's table (Tracee's own vectors included) and its pinned metadata."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from auditwatch import trc105
from auditwatch.events import ExecEvent, FdTarget, mkdev
from auditwatch.finding import exec_finding, to_dict, to_json

MEMFD_DEV = mkdev(0, 1)
DISK_DEV = mkdev(0xFE, 0)

BASE = ExecEvent(
    sensor="audit", timestamp_ns=1_700_000_000_000_000_000, pid=100, tgid=100, ppid=1,
    uid=0, euid=0, comm="true", exe="/usr/bin/true", exec_path="/usr/bin/true",
    argv=("true",),
)


def ev(**kw: object) -> ExecEvent:
    return replace(BASE, **kw)  # type: ignore[arg-type]


CASES = [
    # Tracee's vectors (signatures/golang/fileless_execution_test.go and helpers.IsMemoryPath).
    ("tracee memfd://something", ev(exe="memfd://something", memfd_name="//something"), "memfd"),
    ("tracee /bin/something", ev(exe="/bin/something", exec_path="/bin/something"), None),
    ("tracee /dev/shm/x", ev(exe="/dev/shm/x", exec_path="/dev/shm/x", nlink=1), "shm"),
    ("tracee /run/shm/x", ev(exe="/run/shm/x", exec_path="/run/shm/x", nlink=1), "shm"),
    # audit's view of a memfd: exe is the kernel's d_path, no nlink.
    ("audit memfd execveat", ev(exe="/memfd:x (deleted)", exec_path=""), "memfd"),
    ("audit memfd via /proc/self/fd",
     ev(exe="/memfd:x (deleted)", exec_path="/proc/self/fd/3"), "memfd"),
    ("audit memfd empty name", ev(exe="/memfd: (deleted)", exec_path="/dev/fd/3"), "memfd"),
    ("audit unlinked", ev(exe="/tmp/a/payload (deleted)", exec_path=""), "unlinked"),
    ("audit O_TMPFILE", ev(exe="/tmp/#1234 (deleted)", exec_path="/proc/self/fd/4"), "unlinked"),
    ("audit unlinked shm object", ev(exe="/dev/shm/x (deleted)", exec_path="/dev/fd/3"),
     "unlinked"),
    ("audit linked /dev/shm", ev(exe="/dev/shm/x", exec_path="/dev/shm/x"), "shm"),
    ("file literally named '/memfd:x (deleted)' exec'd by that name",
     ev(exe="/memfd:x (deleted)", exec_path="/memfd:x (deleted)"), None),
    ("file literally named '(deleted)' exec'd by that name",
     ev(exe="/tmp/x (deleted)", exec_path="/tmp/x (deleted)"), None),
    ("audit memfd script",
     ev(exe="/usr/bin/dash", exec_path="/dev/fd/3",
        fd_target=FdTarget("/dev/fd/3", inode=25, dev=MEMFD_DEV)), "memfd-script"),
    ("script via fd of an on-disk file (audit, nlink unknown)",
     ev(exe="/usr/bin/dash", exec_path="/proc/self/fd/3",
        fd_target=FdTarget("/proc/self/fd/3", inode=9, dev=DISK_DEV)), None),
    ("linked fd exec (audit)", ev(exe="/usr/bin/true", exec_path=""), None),
    ("linked /proc/self/fd exec", ev(exe="/usr/bin/true", exec_path="/proc/self/fd/3"), None),
    ("script in /tmp", ev(exe="/usr/bin/dash", exec_path="/tmp/run.sh"), None),
    # BPF's view: nlink known.
    ("bpf memfd", ev(sensor="bpf", exe="/memfd:x (deleted)", memfd_name="x", nlink=0), "memfd"),
    ("bpf unlinked", ev(sensor="bpf", exe="/tmp/p (deleted)", nlink=0), "unlinked"),
    ("bpf linked file named '(deleted)'", ev(sensor="bpf", exe="/tmp/p (deleted)", nlink=1), None),
    ("bpf nlink 0 without suffix", ev(sensor="bpf", exe="/tmp/p", nlink=0), "unlinked"),
    ("bpf script on unlinked disk file",
     ev(sensor="bpf", exe="/usr/bin/dash", nlink=1,
        fd_target=FdTarget("/dev/fd/3", inode=9, dev=DISK_DEV, nlink=0)), "memfd-script"),
    ("bpf script on linked disk file",
     ev(sensor="bpf", exe="/usr/bin/dash", nlink=1,
        fd_target=FdTarget("/dev/fd/3", inode=9, dev=DISK_DEV, nlink=1)), None),
    ("loader running a memfd program",
     ev(exe="/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        exec_path="/lib64/ld-linux-x86-64.so.2",
        argv=("ld.so", "/proc/self/fd/3"),
        fd_target=FdTarget("/proc/self/fd/3", dev=MEMFD_DEV, nlink=0)), "loader"),
    ("loader --list of a disk binary", ev(exe="/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                                          argv=("ld.so", "--list", "/bin/true")), None),
    ("a memfd named like runc is still a memfd",
     ev(exe="/memfd:runc_cloned:/proc/self/exe (deleted)", exec_path=""), "memfd"),
]


@pytest.mark.parametrize(("event", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_detect(event: ExecEvent, expected: str | None) -> None:
    assert trc105.detect(event, memfd_devs={MEMFD_DEV}) == expected


@pytest.mark.parametrize(
    ("path", "memory"),
    [("memfd://something", True), ("memfd:x", True), ("/dev/shm/x", True), ("/run/shm/x", True),
     ("/bin/something", False), ("/var/something", False), ("", False)],
)
def test_tracee_is_memory_path(path: str, memory: bool) -> None:
    assert trc105.is_memory_path(path) is memory


@pytest.mark.parametrize(
    ("event", "pathname"),
    [(ev(exe="/memfd:evil (deleted)"), "memfd:evil"),
     (ev(exe="/memfd:a (deleted) (deleted)"), "memfd:a (deleted)"),
     (ev(exe="/tmp/x (deleted)"), "/tmp/x"),
     (ev(exe="/tmp/x (deleted)", nlink=1), "/tmp/x (deleted)"),
     (ev(exe="/usr/bin/true"), "/usr/bin/true"),
     (ev(exe="/memfd:x (deleted)", memfd_name="x"), "memfd:x")],
)
def test_pathname_is_tracee_form(event: ExecEvent, pathname: str) -> None:
    assert trc105.pathname(event) == pathname


@pytest.mark.parametrize(
    ("path", "fd"),
    [("/dev/fd/3", True), ("/proc/self/fd/12", True), ("/proc/123/fd/4", True),
     ("/proc/thread-self/fd/4", True), ("/proc/1/task/2/fd/3", True),
     ("/proc/self/fd/x", False), ("/dev/fd/3/..", False), ("/tmp/fd/3", False)],
)
def test_is_fd_path(path: str, fd: bool) -> None:
    assert trc105.is_fd_path(path) is fd


def test_metadata_is_tracee_trc105() -> None:
    assert trc105.METADATA == {
        "ID": "TRC-105",
        "Version": "1",
        "Name": "Fileless execution detected",
        "EventName": "fileless_execution",
        "Description": "Fileless execution was detected. Executing a process from memory instead "
        "from a file in the filesystem may indicate that an adversary is trying to avoid "
        "execution detection.",
        "Tags": [],
        "Properties": {
            "Severity": 3,
            "Category": "defense-evasion",
            "Technique": "Reflective Code Loading",
            "Kubernetes_Technique": "",
            "id": "attack-pattern--4933e63b-9b77-476e-ab29-761bc5b7d15a",
            "external_id": "T1620",
        },
    }


def test_finding_json_shape() -> None:
    e = ev(exe="/memfd:x (deleted)", exec_path="/dev/fd/3", inode=7, dev=MEMFD_DEV, nlink=0,
           argv=("true", "a"))
    d = json.loads(to_json(exec_finding(e, "memfd", "host1")))
    assert set(d) == {"SigMetadata", "Event", "Data"}
    assert d["Data"] is None
    assert d["SigMetadata"]["ID"] == "TRC-105"
    event = d["Event"]
    assert event["eventName"] == "sched_process_exec"
    assert event["hostName"] == "host1"
    assert event["hostProcessId"] == 100
    args = {a["name"]: a["value"] for a in event["args"]}
    assert args == {"pathname": "memfd:x", "cmdpath": "/dev/fd/3", "argv": ["true", "a"],
                    "inode": 7, "dev": MEMFD_DEV, "nlink": 0}
    assert event["auditwatch"]["technique"] == "memfd"
    assert event["auditwatch"]["sensors"] == ["audit"]


def test_hostile_names_stay_inside_one_json_line() -> None:
    name = 'evil\n"}]\x1b[31m\\x'
    e = ev(exe=f"/memfd:{name} (deleted)", argv=("a\nb", "\x00", "é\\xff"))
    line = to_json(exec_finding(e, "memfd", "h"))
    assert "\n" not in line
    assert to_dict(exec_finding(e, "memfd", "h")) == json.loads(line)
    assert json.loads(line)["Event"]["args"][0]["value"] == f"memfd:{name}"
