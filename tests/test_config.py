"""Configuration: defaults, the shipped example, strict validation with file:line, permissions,
and the CLI's --output SPEC strings."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from auditwatch.allowlist import Allowlist
from auditwatch.config import (
    AuditConfig,
    Config,
    CorrelationConfig,
    JsonlOutputConfig,
    SyslogAddress,
    SyslogOutputConfig,
    check_config_permissions,
    load_config,
    parse_output_spec,
)
from auditwatch.errors import ConfigError, UsageError
from tests.conftest import kernel_unavailable

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.yaml.example"
PACKAGED_EXAMPLE = REPO / "auditwatch" / "data" / "config.yaml.example"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- defaults and the example file -------------------------------------------------------------

def test_no_file_gives_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.sensors == ("bpf", "audit")
    assert cfg.correlation == CorrelationConfig(window_ms=300, max_pending=4096)
    assert cfg.audit == AuditConfig(netlink_rcvbuf=8388608, event_timeout_ms=5000)
    assert cfg.outputs == (JsonlOutputConfig(path="-"),)
    assert cfg.log_level == "INFO" and cfg.log_suppressed is False
    assert cfg.allowlist == () and cfg.use_default_allowlist is True


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    assert load_config(path) == Config(path=path)


def test_example_file_equals_defaults() -> None:
    cfg = load_config(str(EXAMPLE))
    assert cfg == Config(path=str(EXAMPLE))


def test_packaged_example_is_the_same_file() -> None:
    assert EXAMPLE.read_bytes() == PACKAGED_EXAMPLE.read_bytes()


def _example_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^# >>> example (\S+)$", line)
        if m:
            name, lines = m[1], []
        elif line == "# <<<":
            assert name is not None
            blocks[name] = "\n".join(lines) + "\n"
            name = None
        elif name is not None:
            assert line.startswith("#"), line
            lines.append(line[2:] if line.startswith("# ") else line[1:])
    return blocks


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in ("sensors", "window_ms", "max_pending", "netlink_rcvbuf", "event_timeout_ms",
                "outputs", "address", "facility", "app_name", "max_message_bytes", "queue_size",
                "log_level", "log_suppressed", "use_default_allowlist", "allowlist", "exe:",
                "memfd_name:", "parent_exe:", "uid:", "technique:", "argv:", "cgroup:",
                "sha256:", "spoofable:", "comment"):
        assert key in text, key


@pytest.mark.parametrize("name", ["syslog", "allowlist"])
def test_commented_examples_are_valid(tmp_path: Path, name: str) -> None:
    blocks = _example_blocks()
    path = write(tmp_path, blocks[name])
    cfg = load_config(path)
    if name == "allowlist":
        names = [e.name for e in cfg.allowlist]
        assert names == ["buildah", "lxc-attach", "teleport", "nvidia-container-cli",
                         "vendor-agent"]
        Allowlist.from_config(cfg.allowlist, include_defaults=True)  # compiles
    else:
        assert [o.type for o in cfg.outputs] == ["jsonl", "syslog", "syslog"]
        assert cfg.outputs[1] == SyslogOutputConfig(address="tcp://siem.example.net:6514")


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, """\
sensors: audit
correlation: {window_ms: 150, max_pending: 100}
audit: {netlink_rcvbuf: 1048576}
outputs:
  - {type: jsonl, path: /var/log/aw.jsonl}
  - {type: syslog, address: "udp://[::1]:514", facility: local3, app_name: aw,
     max_message_bytes: 1024, queue_size: 5}
log_level: debug
log_suppressed: true
use_default_allowlist: false
allowlist:
  - name: agent
    parent_exe: [/opt/a/bin/agentd, /opt/b/bin/agentd]
    uid: [0, 1000]
    technique: [memfd, unlinked]
    sha256: "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
""")
    cfg = load_config(path)
    assert cfg.sensors == ("audit",)
    assert cfg.correlation == CorrelationConfig(window_ms=150, max_pending=100)
    assert cfg.audit == AuditConfig(netlink_rcvbuf=1048576)
    syslog = cfg.outputs[1]
    assert isinstance(syslog, SyslogOutputConfig)
    assert syslog.target == SyslogAddress("udp", host="::1", port=514)
    assert (syslog.facility, syslog.app_name, syslog.max_message_bytes, syslog.queue_size) == \
        ("local3", "aw", 1024, 5)
    (entry,) = cfg.allowlist
    assert entry.parent_exe == ("/opt/a/bin/agentd", "/opt/b/bin/agentd")
    assert entry.uid == (0, 1000) and entry.technique == ("memfd", "unlinked")
    assert entry.sha256 == ("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",)
    assert cfg.log_level == "DEBUG" and cfg.log_suppressed and not cfg.use_default_allowlist


# --- errors name file:line and the key ---------------------------------------------------------

BAD = [
    # (yaml, line, key fragment, message fragment)
    ("sensors: [bpf\nlog_level: INFO\n", 2, None, "invalid YAML"),
    ("outputs:\n  - type: jsonl\n\tpath: x\n", 3, None, "invalid YAML"),
    # unclosed at the end of the file: the line where it was opened, not the end of the stream
    ("log_level: INFO\nallowlist:\n  - name: [unclosed\n\n", 3, None, "invalid YAML"),
    ("log_level: INFO\nlog_level: DEBUG\n", 2, None, "duplicate key"),
    ("log_level: INFO\nlog_levle: DEBUG\n", 2, "log_levle", "unknown key"),
    ("audit:\n  netlink_rcvbuf: 8388608\n  timeout: 3\n", 3, "audit.timeout", "unknown key"),
    ("correlation:\n  window_ms: fast\n", 2, "correlation.window_ms", "expected an integer"),
    ("correlation:\n  window_ms: true\n", 2, "correlation.window_ms", "expected an integer"),
    ("correlation:\n  window_ms: 0\n", 2, "correlation.window_ms", "between"),
    ("log_suppressed: 'yes'\n", 1, "log_suppressed", "expected true or false"),
    ("log_level: LOUD\n", 1, "log_level", "must be one of"),
    ("sensors: [bpf, kprobe]\n", 1, "sensors[1]", "must be one of"),
    ("sensors: [bpf, bpf]\n", 1, "sensors", "twice"),
    ("outputs: []\n", 1, "outputs", "non-empty list"),
    ("outputs:\n  - type: jsonl\n  - type: syslog\n    adress: udp://h:1\n", 4,
     "outputs[1].adress", "unknown key"),
    ("outputs:\n  - type: syslog\n    address: udp://h\n", 3, "outputs[0].address", "HOST:PORT"),
    ("outputs:\n  - type: syslog\n    facility: security\n", 3, "outputs[0].facility", "one of"),
    ("outputs:\n  - type: syslog\n    max_message_bytes: 100\n", 3,
     "outputs[0].max_message_bytes", "between"),
    ("outputs:\n  - type: syslog\n    app_name: my app\n", 3, "outputs[0].app_name", "ASCII"),
    ("outputs:\n  - type: kafka\n", 2, "outputs[0].type", "one of"),
    ("outputs:\n  - path: x\n", 2, "outputs[0]", "missing 'type'"),
    ("allowlist:\n  - name: a\n    comment: nothing to match\n", 2, "allowlist[0]",
     "no match field"),
    ("allowlist:\n  - name: a\n    memfd_name: runc_cloned*\n", 2, "allowlist[0]", "spoofable"),
    ("allowlist:\n  - name: a\n    parent_exe: /x\n    uid: root\n", 4, "allowlist[0].uid",
     "expected an integer"),
    ("allowlist:\n  - name: a\n    parent_exe: /x\n    technique: magic\n", 4,
     "allowlist[0].technique", "one of"),
    ("allowlist:\n  - name: a\n    parent_exe: /x\n    sha256: abc\n", 4,
     "allowlist[0].sha256", "hex"),
    ("allowlist:\n  - name: a\n    parent_exe: /x\n    argv: '(['\n", 4, "allowlist[0].argv",
     "regular expression"),
    ("allowlist:\n  - name: a\n    parent_exe: /x\n    pid: 4\n", 4, "allowlist[0].pid",
     "unknown key"),
    ("allowlist:\n  - parent_exe: /x\n", 2, "allowlist[0]", "needs a 'name'"),
    ("allowlist:\n  - name: a\n    uid: 0\n  - name: a\n    uid: 1\n", 4, "allowlist[1]",
     "duplicate"),
    ("allowlist:\n  - name: default-runc\n    uid: 0\n", 2, "allowlist[0]", "default entry"),
    ("allowlist: {name: a}\n", 1, "allowlist", "list of entries"),
    ("- just\n- a list\n", 1, None, "expected a mapping"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), BAD)
def test_bad_config_names_file_line_and_key(tmp_path: Path, text: str, line: int,
                                            key: str | None, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == 2
    assert f"{path}:{line}" in str(err)
    assert (err.path, err.line) == (path, line)
    if key is not None:
        assert err.key == key
        assert key in str(err)
    assert message in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"))


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(b"log_level: \xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(p))


def test_no_python_objects(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


# --- permissions -------------------------------------------------------------------------------

@pytest.fixture
def safe_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        kernel_unavailable("permission checks expect root-owned files (run as root)")
    d = tmp_path / "etc-auditwatch"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def test_permissions_ok(safe_dir: Path) -> None:
    p = safe_dir / "config.yaml"
    p.write_text("log_level: INFO\n")
    p.chmod(0o644)
    check_config_permissions(str(p))


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_other_writable_file_refused(safe_dir: Path, mode: int) -> None:
    p = safe_dir / "config.yaml"
    p.write_text("")
    p.chmod(mode)
    with pytest.raises(ConfigError, match="writable by") as info:
        check_config_permissions(str(p))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_group_or_other_writable_dir_refused(safe_dir: Path, mode: int) -> None:
    p = safe_dir / "config.yaml"
    p.write_text("")
    p.chmod(0o600)
    safe_dir.chmod(mode)
    with pytest.raises(ConfigError, match=r"config directory .* writable by"):
        check_config_permissions(str(p))


def test_non_root_owner_refused(safe_dir: Path) -> None:
    p = safe_dir / "config.yaml"
    p.write_text("")
    p.chmod(0o600)
    os.chown(p, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        check_config_permissions(str(p))
    os.chown(p, 0, 0)
    os.chown(safe_dir, 65534, 0)
    with pytest.raises(ConfigError, match=r"config directory .* owned by uid 65534"):
        check_config_permissions(str(p))


def test_writable_ancestor_refused(safe_dir: Path) -> None:
    sub = safe_dir / "sub"
    sub.mkdir(mode=0o755)
    p = sub / "config.yaml"
    p.write_text("")
    safe_dir.chmod(0o777)   # not sticky: anyone may rename "sub" away and put their own
    with pytest.raises(ConfigError, match="writable by group and others"):
        check_config_permissions(str(p))


def test_symlink_target_checked(safe_dir: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    target = loose / "real.yaml"
    target.write_text("")
    target.chmod(0o644)
    link = safe_dir / "config.yaml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="writable by group and others"):
        check_config_permissions(str(link))


# --- output SPEC strings -----------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("jsonl:-", JsonlOutputConfig("-")),
    ("jsonl:/var/log/aw.jsonl", JsonlOutputConfig("/var/log/aw.jsonl")),
    ("syslog", SyslogOutputConfig(address="unix:/dev/log")),
    ("syslog+udp://127.0.0.1:514", SyslogOutputConfig(address="udp://127.0.0.1:514")),
    ("syslog+tcp://logs.example.net:6514", SyslogOutputConfig(address="tcp://logs.example.net:6514")),
    ("syslog+tcp://[::1]:514", SyslogOutputConfig(address="tcp://[::1]:514")),
    ("syslog+unix:/run/alt.sock", SyslogOutputConfig(address="unix:/run/alt.sock")),
])
def test_output_spec(spec: str, expected: object) -> None:
    assert parse_output_spec(spec) == expected


def test_output_spec_targets() -> None:
    out = parse_output_spec("syslog+tcp://h.example:6514")
    assert isinstance(out, SyslogOutputConfig)
    assert out.target == SyslogAddress("tcp", host="h.example", port=6514)
    sys_out = parse_output_spec("syslog")
    assert isinstance(sys_out, SyslogOutputConfig)
    assert sys_out.target == SyslogAddress("unix", path="/dev/log")


@pytest.mark.parametrize("spec", ["", "jsonl", "jsonl:", "json:-", "syslog+udp://h",
                                  "syslog+udp://h:0", "syslog+tcp://h:99999", "syslog+http://h:1",
                                  "syslog+unix:relative", "syslog+tcp://:514", "syslog:"])
def test_bad_output_spec(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_output_spec(spec)
    assert info.value.exit_code == 2
