"""Allow-list matching: default runtime entries, all-fields entries, sha256 pinning, fail-closed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from auditwatch.allowlist import (
    DEFAULT_ENTRIES,
    Allowlist,
    Entry,
    EntrySpec,
    glob_to_regex,
)
from auditwatch.config import load_config
from auditwatch.events import ExecEvent
from auditwatch.hostinfo import sha256_of_running_image

RUNC_MEMFD = "runc_cloned:/proc/self/exe"


def file_sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def event(**kw: Any) -> ExecEvent:
    base: dict[str, Any] = dict(
        sensor="bpf", timestamp_ns=1_700_000_000_000_000_000, pid=4242, tgid=4242, ppid=4200,
        uid=0, euid=0, comm="runc:[2:INIT]", exe=f"/memfd:{RUNC_MEMFD} (deleted)",
        exec_path="/proc/self/fd/7", argv=("runc", "init"), nlink=0, memfd_name=RUNC_MEMFD,
        parent_exe="/usr/bin/runc", cgroup="/system.slice/containerd.service",
    )
    base.update(kw)
    return ExecEvent(**base)


DEFAULTS = Allowlist.from_config((), include_defaults=True)


# --- default entries: runc / crun pinned to the on-disk runtime -------------------------------

@pytest.mark.parametrize(("desc", "ev", "technique", "expected"), [
    ("runc re-exec from /usr/bin/runc", event(), "memfd", "default-runc"),
    ("runc in /usr/local/sbin", event(parent_exe="/usr/local/sbin/runc"), "memfd", "default-runc"),
    ("runc seen by audit only (name from exe)",
     event(sensor="audit", memfd_name=None, nlink=None), "memfd", "default-runc"),
    ("crun re-exec", event(memfd_name="crun_cloned:/proc/self/exe",
                           exe="/memfd:crun_cloned:/proc/self/exe (deleted)",
                           parent_exe="/usr/bin/crun"), "memfd", "default-crun"),
    ("runc-named memfd, python parent", event(parent_exe="/usr/bin/python3.11",
                                              comm="python3"), "memfd", None),
    ("runc-named memfd, parent comm says runc but exe is python",
     event(parent_exe="/usr/bin/python3.11", comm="runc"), "memfd", None),
    ("runc-named memfd, parent runc from /tmp", event(parent_exe="/tmp/runc"), "memfd", None),
    ("runc-named memfd, parent runc from a subdirectory",
     event(parent_exe="/usr/bin/x/runc"), "memfd", None),
    ("runc-named memfd, deleted parent runc", event(parent_exe="/usr/bin/runc (deleted)"),
     "memfd", None),
    ("runc-named memfd, parent unknown", event(parent_exe=None), "memfd", None),
    ("crun memfd from a runc parent", event(memfd_name="crun_cloned:/proc/self/exe",
                                            exe="/memfd:crun_cloned:/proc/self/exe (deleted)"),
     "memfd", None),
    ("similar name", event(memfd_name="runc_cloned:/proc/self/exe2",
                           exe="/memfd:runc_cloned:/proc/self/exe2 (deleted)"), "memfd", None),
    ("other technique", event(memfd_name=None, exe="/tmp/runc (deleted)"), "unlinked", None),
])
def test_default_entries(desc: str, ev: ExecEvent, technique: str, expected: str | None) -> None:
    entry = DEFAULTS.match(ev, technique)
    assert (entry.name if entry else None) == expected, desc


def test_defaults_can_be_left_out() -> None:
    assert Allowlist.from_config((), include_defaults=False).match(event(), "memfd") is None


def test_default_entries_are_pinned_to_parent_exe() -> None:
    for spec in DEFAULT_ENTRIES:
        assert spec.parent_exe and all(p.startswith("/usr/") for p in spec.parent_exe)
        assert "/usr/bin/" + spec.name.removeprefix("default-") in spec.parent_exe


# --- an entry on every field ------------------------------------------------------------------

ALL_FIELDS_YAML = """\
use_default_allowlist: false
allowlist:
  - name: vendor-agent
    comment: every field at once
    exe: "memfd:agent-*"
    memfd_name: "agent-*"
    parent_exe: /opt/vendor/bin/agentd
    uid: [0, 998]
    technique: memfd
    argv: "^agent-worker --mode=(scan|update)$"
    cgroup: "/system.slice/vendor-agent.service"
    sha256: "{sha}"
"""

AGENT = dict(memfd_name="agent-7", exe="/memfd:agent-7 (deleted)", comm="agent-worker",
             parent_exe="/opt/vendor/bin/agentd", uid=998,
             argv=("agent-worker", "--mode=scan"), cgroup="/system.slice/vendor-agent.service")
GOOD_SHA = hashlib.sha256(b"agent image").hexdigest()


@pytest.fixture
def agent_list(tmp_path: Path) -> Allowlist:
    path = tmp_path / "config.yaml"
    path.write_text(ALL_FIELDS_YAML.format(sha=GOOD_SHA))
    cfg = load_config(str(path))
    return Allowlist.from_config(cfg.allowlist, cfg.use_default_allowlist)


@pytest.mark.parametrize(("desc", "changes", "technique", "sha", "suppressed"), [
    ("every field matches", {}, "memfd", GOOD_SHA, True),
    ("hash in upper case from the caller", {}, "memfd", GOOD_SHA.upper(), True),
    ("other mode in argv", {"argv": ("agent-worker", "--mode=scan", "-x")}, "memfd", GOOD_SHA,
     False),
    ("argv truncated by the sensor", {"argv_truncated": True}, "memfd", GOOD_SHA, False),
    ("other uid", {"uid": 1000}, "memfd", GOOD_SHA, False),
    ("other parent", {"parent_exe": "/usr/bin/python3"}, "memfd", GOOD_SHA, False),
    ("other cgroup", {"cgroup": "/user.slice/user-1000.slice"}, "memfd", GOOD_SHA, False),
    ("other memfd name", {"memfd_name": "evil", "exe": "/memfd:evil (deleted)"}, "memfd",
     GOOD_SHA, False),
    ("other technique", {}, "memfd-script", GOOD_SHA, False),
    ("other image", {}, "memfd", hashlib.sha256(b"evil").hexdigest(), False),
    # unknown values fail closed
    ("uid unknown", {"uid": None}, "memfd", GOOD_SHA, False),
    ("parent unknown", {"parent_exe": None}, "memfd", GOOD_SHA, False),
    ("cgroup unknown", {"cgroup": None}, "memfd", GOOD_SHA, False),
    ("image hash unknown", {}, "memfd", None, False),
])
def test_all_fields_entry(agent_list: Allowlist, desc: str, changes: dict[str, Any],
                          technique: str, sha: str | None, suppressed: bool) -> None:
    ev = event(**{**AGENT, **changes})
    calls: list[int] = []

    def sha256_of() -> str | None:
        calls.append(1)
        return sha

    entry = agent_list.match(ev, technique, sha256_of)
    assert (entry is not None) == suppressed, desc
    assert len(calls) <= 1
    assert agent_list.counters() == {"vendor-agent": 1 if suppressed else 0}


def test_suppressions_counted_per_entry(agent_list: Allowlist) -> None:
    ev = event(**AGENT)
    for _ in range(3):
        assert agent_list.match(ev, "memfd", lambda: GOOD_SHA) is not None
    assert agent_list.match(event(), "memfd", lambda: GOOD_SHA) is None
    assert agent_list.counters() == {"vendor-agent": 3}


def test_pipeline_adapter_gives_the_entry_name() -> None:
    al = Allowlist.from_config((), include_defaults=True)
    assert al.suppressing_entry(event(), "memfd", lambda: None) == "default-runc"
    assert al.suppressing_entry(event(parent_exe="/usr/bin/python3"), "memfd",
                                lambda: None) is None


def test_sha256_only_computed_when_needed() -> None:
    al = Allowlist.from_config([EntrySpec(name="pinned", parent_exe=("/opt/a",),
                                          sha256=(GOOD_SHA,))], include_defaults=True)
    assert al.needs_sha256
    assert not DEFAULTS.needs_sha256

    def boom() -> str | None:
        raise AssertionError("hash asked although the parent did not match")

    assert al.match(event(parent_exe="/opt/b"), "memfd", boom) is None
    assert al.match(event(), "memfd", boom) is not None     # default-runc, no hash needed


# --- sha256 pinning on real images ------------------------------------------------------------

def _pinned(sha: str | None) -> Allowlist:
    assert sha is not None
    return Allowlist.from_config([EntrySpec(name="true-pinned", parent_exe=("/usr/bin/python3*",),
                                            sha256=(sha,))], include_defaults=False)


def test_sha256_pins_the_exact_image(tmp_path: Path) -> None:
    original = tmp_path / "true"
    shutil.copyfile("/bin/true", original)
    changed = tmp_path / "true-changed"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01                       # one byte changed
    changed.write_bytes(bytes(data))
    pinned = _pinned(file_sha256(str(original)))
    ev = event(parent_exe="/usr/bin/python3.11", memfd_name="payload",
               exe="/memfd:payload (deleted)")

    assert pinned.match(ev, "memfd", lambda: file_sha256(str(original))) is not None
    assert pinned.match(ev, "memfd", lambda: file_sha256(str(changed))) is None
    assert pinned.match(ev, "memfd", lambda: file_sha256(str(tmp_path / "gone"))) is None
    assert pinned.counters() == {"true-pinned": 1}


def _run_from_memfd(content: bytes) -> tuple[int, int]:
    """Start ``sleep`` from a memfd holding ``content``; returns (pid, memfd)."""
    fd = os.memfd_create("payload", 0)
    os.write(fd, content)
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(f"/proc/self/fd/{fd}", ["payload", "30"])
        finally:
            os._exit(127)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:   # wait until the child runs the memfd image
        try:
            if os.readlink(f"/proc/{pid}/exe").startswith("/memfd:payload"):
                return pid, fd
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError("child did not exec from the memfd")


def test_sha256_of_a_running_memfd_image() -> None:
    """What the daemon does: hash /proc/PID/exe of a process running from a memfd."""
    sleep = Path(shutil.which("sleep") or "/bin/sleep").read_bytes()
    changed = sleep[:-1] + bytes([sleep[-1] ^ 0x01])   # last byte: section headers, not loaded
    pinned = _pinned(hashlib.sha256(sleep).hexdigest())
    ev = event(parent_exe="/usr/bin/python3.11", memfd_name="payload",
               exe="/memfd:payload (deleted)")
    for content, expected in ((sleep, True), (changed, False)):
        pid, fd = _run_from_memfd(content)
        running = dataclasses.replace(ev, pid=pid, tgid=pid, inode=os.fstat(fd).st_ino)
        try:   # the daemon's own hook: hostinfo.sha256_of_running_image reads /proc/PID/exe
            assert (pinned.match(running, "memfd",
                                 lambda e=running: sha256_of_running_image(e)) is not None) \
                == expected
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
    assert pinned.counters() == {"true-pinned": 1}
    assert sha256_of_running_image(running) is None   # process gone: unknown, fails closed


# --- entries and globs ------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    (EntrySpec(name="empty"), "no match field"),
    (EntrySpec(name="by-name", memfd_name=(RUNC_MEMFD,)), "spoofable"),
    (EntrySpec(name="by-argv", argv="^runc init$", technique=("memfd",)), "spoofable"),
    (EntrySpec(name="bad-sha", uid=(0,), sha256=("xyz",)), "hex"),
    (EntrySpec(name="bad-tech", uid=(0,), technique=("magic",)), "technique"),  # type: ignore[arg-type]
])
def test_invalid_entries(spec: EntrySpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Entry.compile(spec)


def test_spoofable_entry_when_accepted() -> None:
    al = Allowlist.from_config([EntrySpec(name="by-name", memfd_name=("agent-*",),
                                          spoofable=True)], include_defaults=False)
    assert al.match(event(memfd_name="agent-1"), "memfd") is not None


def test_duplicate_names_refused() -> None:
    spec = EntrySpec(name="default-runc", uid=(0,))
    with pytest.raises(ValueError, match="duplicate"):
        Allowlist.from_config([spec], include_defaults=True)


@pytest.mark.parametrize(("glob", "value", "matches"), [
    ("/usr/bin/*", "/usr/bin/runc", True),
    ("/usr/bin/*", "/usr/bin/x/runc", False),
    ("/usr/**/runc", "/usr/local/sbin/runc", True),
    ("/opt/agent?/bin", "/opt/agent1/bin", True),
    ("/opt/agent?/bin", "/opt/agent//bin", False),
    ("memfd:runc_cloned:**", "memfd:runc_cloned:/proc/self/exe", True),
    ("memfd:runc_cloned:*", "memfd:runc_cloned:/proc/self/exe", False),
    ("/usr/bin/[cr]un[!x]", "/usr/bin/runc", True),
    ("/usr/bin/[cr]un[!x]", "/usr/bin/runx", False),
    ("a[b", "a[b", True),
    ("name.*", "nameXfoo", False),           # regex metacharacters are literal
    ("agent-*", "agent-1\nrunc", True),      # hostile newline in a name stays one value
    ("/usr/bin/runc", "/usr/bin/runc\n", False),
])
def test_glob(glob: str, value: str, matches: bool) -> None:
    assert bool(glob_to_regex(glob).match(value)) == matches


def test_entry_spec_fields_are_config_keys() -> None:
    names = {f.name for f in dataclasses.fields(EntrySpec)}
    assert names == {"name", "comment", "exe", "memfd_name", "parent_exe", "cgroup", "uid",
                     "technique", "argv", "sha256", "spoofable"}
