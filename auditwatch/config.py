"""The configuration: YAML in, frozen dataclasses out, validated once.

``load_config(None)`` gives the defaults (the daemon runs with no file). ``load_config(path)`` reads
the file with PyYAML's safe loader (a subclass that keeps the line of every key) and checks it
strictly: unknown keys, wrong types and bad values raise ``ConfigError`` naming ``file:line`` and
the dotted key (``outputs[1].address``). Validation is pure; the only I/O is reading the file, and
``check_config_permissions`` which refuses a file that a non-root user could edit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from auditwatch.allowlist import DEFAULT_ENTRIES, EntrySpec, spec_fields, validate_spec
from auditwatch.correlate import DEFAULT_MAX_PENDING
from auditwatch.errors import ConfigError, UsageError
from auditwatch.events import SENSORS, TECHNIQUES

FACILITIES: Final[dict[str, int]] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
MIN_MESSAGE_BYTES: Final = 480   # RFC 5424 §6.1: every receiver accepts 480 octets
MAX_MESSAGE_BYTES: Final = 65000


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    window_ms: int = 300
    max_pending: int = DEFAULT_MAX_PENDING


@dataclass(frozen=True, slots=True)
class AuditConfig:
    netlink_rcvbuf: int = 8 * 1024 * 1024
    event_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class SyslogAddress:
    transport: Literal["unix", "udp", "tcp"]
    path: str = ""        # unix
    host: str = ""        # udp / tcp
    port: int = 0


@dataclass(frozen=True, slots=True)
class JsonlOutputConfig:
    path: str = "-"       # "-" is stdout

    @property
    def type(self) -> str:
        return "jsonl"

    def describe(self) -> str:
        return f"jsonl:{self.path}"


@dataclass(frozen=True, slots=True)
class SyslogOutputConfig:
    address: str = "unix:/dev/log"
    facility: str = "authpriv"
    app_name: str = "auditwatch"
    max_message_bytes: int = 2048
    queue_size: int = 10000

    @property
    def type(self) -> str:
        return "syslog"

    @property
    def target(self) -> SyslogAddress:
        return parse_syslog_address(self.address)

    def describe(self) -> str:
        return f"syslog+{self.address}"


OutputConfig = JsonlOutputConfig | SyslogOutputConfig


@dataclass(frozen=True, slots=True)
class Config:
    sensors: tuple[str, ...] = SENSORS
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    outputs: tuple[OutputConfig, ...] = (JsonlOutputConfig(),)
    log_level: str = "INFO"
    log_suppressed: bool = False
    allowlist: tuple[EntrySpec, ...] = ()
    use_default_allowlist: bool = True
    path: str | None = None   # where it was loaded from; None for the built-in defaults


def parse_syslog_address(address: str) -> SyslogAddress:
    """``unix:/dev/log``, ``udp://HOST:PORT``, ``tcp://HOST:PORT`` (IPv6 as ``[::1]``)."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {address!r}")
        return SyslogAddress("unix", path=path)
    scheme, sep, _ = address.partition("://")
    if not sep or scheme not in ("udp", "tcp"):
        raise ValueError("expected unix:/PATH, udp://HOST:PORT or tcp://HOST:PORT, "
                         f"got {address!r}")
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or port == 0 or parts.path or parts.query \
            or parts.username:
        raise ValueError(f"expected {scheme}://HOST:PORT, got {address!r}")
    return SyslogAddress(scheme, host=parts.hostname, port=port)  # type: ignore[arg-type]


def parse_output_spec(spec: str) -> OutputConfig:
    """A CLI ``--output`` SPEC: ``jsonl:-``, ``jsonl:PATH``, ``syslog``, ``syslog+udp://H:P``,
    ``syslog+tcp://H:P`` (also ``syslog+unix:/PATH``)."""
    if spec.startswith("jsonl:") and len(spec) > len("jsonl:"):
        return JsonlOutputConfig(path=spec[len("jsonl:"):])
    if spec == "syslog":
        return SyslogOutputConfig()
    if spec.startswith("syslog+"):
        address = spec[len("syslog+"):]
        try:
            parse_syslog_address(address)
        except ValueError as e:
            raise UsageError(f"--output {spec}: {e}") from None
        return SyslogOutputConfig(address=address)
    raise UsageError(f"--output {spec!r}: expected jsonl:-, jsonl:PATH, syslog, "
                     "syslog+udp://HOST:PORT or syslog+tcp://HOST:PORT")


# --- YAML with line numbers -------------------------------------------------------------------

class _Map(dict[Any, Any]):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class _Seq(list[Any]):
    __slots__ = ("item_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences record start marks; duplicate keys are errors."""

    def construct_lined_map(self, node: yaml.MappingNode) -> Any:
        data = _Map(node.start_mark.line + 1)
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "found unhashable key", key_node.start_mark) from None
            if key in data:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            data[key] = self.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1

    def construct_lined_seq(self, node: yaml.SequenceNode) -> Any:
        data = _Seq(node.start_mark.line + 1)
        yield data
        for item in node.value:
            data.append(self.construct_object(item, deep=True))
            data.item_lines.append(item.start_mark.line + 1)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_lined_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_lined_seq)


def parse_yaml(text: str, path: str) -> Any:
    """YAML text to plain data with line marks; YAML errors become ``ConfigError`` at file:line."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if e.context_mark is not None and mark is not None \
                and mark.index >= len(text.rstrip()):
            # "but got <stream end>": where the unclosed construct began says more than EOF
            mark = e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"invalid YAML: {what}", path=path, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", path=path) from None


# --- validation -------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Where:
    path: str
    line: int | None
    key: str

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, line=self.line, key=self.key)

    def child(self, container: Any, key: Any) -> _Where:
        line = self.line
        if isinstance(container, _Map):
            line = container.key_lines.get(key, container.line)
        elif isinstance(container, _Seq) and isinstance(key, int) \
                and key < len(container.item_lines):
            line = container.item_lines[key]
        name = f"{self.key}[{key}]" if isinstance(key, int) else (
            f"{self.key}.{key}" if self.key else str(key))
        return _Where(self.path, line, name)


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return {bool: "boolean", int: "integer", str: "string", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _mapping(value: Any, where: _Where, allowed: tuple[str, ...]) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping, got {_type_name(value)}")
    for key in value:
        if key not in allowed:
            raise where.child(value, key).error(
                f"unknown key {key!r} (allowed: {', '.join(allowed)})")
    return value


def _int(value: Any, where: _Where, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"expected an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise where.error(f"must be between {lo} and {hi}, got {value}")
    return value


def _bool(value: Any, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {_type_name(value)}")
    return value


def _str(value: Any, where: _Where, choices: tuple[str, ...] = (), nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {_type_name(value)}")
    if choices and value not in choices:
        raise where.error(f"must be one of {', '.join(choices)}, got {value!r}")
    if nonempty and not value:
        raise where.error("must not be empty")
    return value


def _one_or_list(value: Any, where: _Where, item: Callable[[Any, _Where], T]) -> tuple[T, ...]:
    """A scalar or a non-empty list of them."""
    if isinstance(value, list):
        if not value:
            raise where.error("must not be an empty list")
        return tuple(item(v, where.child(value, i)) for i, v in enumerate(value))
    return (item(value, where),)


def _section(data: dict[Any, Any], name: str, where: _Where, cls: type[T],
             build: Callable[[dict[Any, Any], _Where], dict[str, Any]]) -> T:
    if name not in data:
        return cls()
    w = where.child(data, name)
    value = data[name]
    if value is None:
        return cls()
    m = _mapping(value, w, tuple(f for f in cls.__dataclass_fields__))  # type: ignore[attr-defined]
    return cls(**build(m, w))


def _fields(m: dict[Any, Any], w: _Where, skip: tuple[str, ...] = (),
            **checks: Callable[[Any, _Where], Any]) -> dict[str, Any]:
    return {k: checks[k](v, w.child(m, k)) for k, v in m.items() if k not in skip}


def _sensors(value: Any, where: _Where) -> tuple[str, ...]:
    items = _one_or_list(value, where, lambda v, w: _str(v, w, SENSORS))
    if len(set(items)) != len(items):
        raise where.error("lists a sensor twice")
    return items


def _output(value: Any, where: _Where) -> OutputConfig:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping with a 'type', got {_type_name(value)}")
    if "type" not in value:
        raise where.error("missing 'type' (jsonl or syslog)")
    kind = _str(value["type"], where.child(value, "type"), ("jsonl", "syslog"))
    if kind == "jsonl":
        m = _mapping(value, where, ("type", "path"))
        return JsonlOutputConfig(**_fields(m, where, ("type",), path=lambda v, w: _str(v, w)))
    m = _mapping(value, where, ("type", *SyslogOutputConfig.__dataclass_fields__))

    def address(v: Any, w: _Where) -> str:
        try:
            parse_syslog_address(_str(v, w))
        except ValueError as e:
            raise w.error(str(e)) from None
        return str(v)

    def app_name(v: Any, w: _Where) -> str:
        s = _str(v, w)
        if len(s) > 48 or not all(33 <= ord(c) <= 126 for c in s):
            raise w.error("must be 1-48 printable ASCII characters without spaces (RFC 5424)")
        return s

    return SyslogOutputConfig(**_fields(
        m, where, ("type",),
        address=address,
        facility=lambda v, w: _str(v, w, tuple(FACILITIES)),
        app_name=app_name,
        max_message_bytes=lambda v, w: _int(v, w, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES),
        queue_size=lambda v, w: _int(v, w, 1, 10_000_000),
    ))


def _outputs(value: Any, where: _Where) -> tuple[OutputConfig, ...]:
    if not isinstance(value, list) or not value:
        raise where.error("expected a non-empty list of outputs")
    return tuple(_output(v, where.child(value, i)) for i, v in enumerate(value))


def _glob(v: Any, w: _Where) -> str:
    return _str(v, w)


def _hex(v: Any, w: _Where) -> str:
    if not isinstance(v, str):
        raise w.error(f"expected a quoted string of 64 hex digits, got {_type_name(v)}")
    return v.lower()


def _entry(value: Any, where: _Where) -> EntrySpec:
    m = _mapping(value, where, spec_fields())
    if "name" not in m:
        raise where.error("an allow-list entry needs a 'name'")
    kw = _fields(
        m, where,
        name=lambda v, w: _str(v, w),
        comment=lambda v, w: _str(v, w, nonempty=False),
        exe=lambda v, w: _one_or_list(v, w, _glob),
        memfd_name=lambda v, w: _one_or_list(v, w, _glob),
        parent_exe=lambda v, w: _one_or_list(v, w, _glob),
        cgroup=lambda v, w: _one_or_list(v, w, _glob),
        uid=lambda v, w: _one_or_list(v, w, lambda x, ww: _int(x, ww, 0, 2**32 - 1)),
        technique=lambda v, w: _one_or_list(v, w, lambda x, ww: _str(x, ww, TECHNIQUES)),
        argv=lambda v, w: _str(v, w),
        sha256=lambda v, w: _one_or_list(v, w, _hex),
        spoofable=_bool,
    )
    spec = EntrySpec(**kw)
    for field_name, problem in validate_spec(spec).items():
        at = where.child(m, field_name) if field_name else where
        raise at.error(problem)
    return spec


def _allowlist(value: Any, where: _Where) -> tuple[EntrySpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(f"expected a list of entries, got {_type_name(value)}")
    entries: list[EntrySpec] = []
    for i, v in enumerate(value):
        w = where.child(value, i)
        entry = _entry(v, w)
        if any(e.name == entry.name for e in entries):
            raise w.error(f"duplicate entry name {entry.name!r}")
        entries.append(entry)
    return tuple(entries)


TOP_KEYS: Final = ("sensors", "correlation", "audit", "outputs", "log_level", "log_suppressed",
                   "allowlist", "use_default_allowlist")


def config_from_data(data: Any, path: str) -> Config:
    """Validate parsed YAML (with line marks) into a ``Config``. Pure."""
    root = _Where(path, getattr(data, "line", None), "")
    if data is None:
        return Config(path=path)
    m = _mapping(data, root, TOP_KEYS)
    kw = _fields(
        m, root, ("correlation", "audit"),
        sensors=_sensors,
        outputs=_outputs,
        log_level=lambda v, w: _str(v.upper() if isinstance(v, str) else v, w, LOG_LEVELS),
        log_suppressed=_bool,
        allowlist=_allowlist,
        use_default_allowlist=_bool,
    )
    kw["correlation"] = _section(m, "correlation", root, CorrelationConfig, lambda s, w: _fields(
        s, w, window_ms=lambda v, ww: _int(v, ww, 1, 60_000),
        max_pending=lambda v, ww: _int(v, ww, 16, 10_000_000)))
    kw["audit"] = _section(m, "audit", root, AuditConfig, lambda s, w: _fields(
        s, w,
        netlink_rcvbuf=lambda v, ww: _int(v, ww, 65536, 1 << 30),
        event_timeout_ms=lambda v, ww: _int(v, ww, 10, 600_000)))
    if kw.get("use_default_allowlist", True):
        defaults = {e.name for e in DEFAULT_ENTRIES}
        for i, e in enumerate(kw.get("allowlist", ())):
            if e.name in defaults:
                raise root.child(m, "allowlist").child(m["allowlist"], i).error(
                    f"entry name {e.name!r} is taken by a default entry")
    return Config(**kw, path=path)


def load_config(path: str | None) -> Config:
    """The configuration in ``path``, or the defaults when ``path`` is None."""
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", path=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: {e.reason} at byte {e.start}", path=path) from None
    return config_from_data(parse_yaml(text, path), path)


# --- permissions ------------------------------------------------------------------------------

def _check_owner_mode(config: str, p: str, st: os.stat_result, what: str,
                      allow_sticky: bool) -> None:
    if st.st_uid != 0:
        raise ConfigError(f"{what} {p} is owned by uid {st.st_uid}, not root: whoever can edit "
                          "the allow-list can blind the sensor", path=config)
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (allow_sticky and st.st_mode & stat.S_ISVTX):
        who = " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                           if st.st_mode & bit)
        raise ConfigError(f"{what} {p} is writable by {who} (mode {stat.filemode(st.st_mode)}): "
                          "whoever can edit the allow-list can blind the sensor", path=config)


def check_config_permissions(path: str) -> None:
    """Refuse a config that a non-root user could change: the file, its directory and every
    directory above must be owned by root and not group/other-writable (a sticky directory such
    as /tmp is tolerated above the file's own directory). A symlink's own directory counts too."""
    paths = [os.path.abspath(path)]
    real = os.path.realpath(path)
    if real != paths[0]:
        paths.append(real)
    for p in paths:
        try:
            _check_owner_mode(path, p, os.stat(p), "config file", allow_sticky=False)
            d = os.path.dirname(p)
            _check_owner_mode(path, d, os.stat(d), "config directory", allow_sticky=False)
            while d != "/":
                d = os.path.dirname(d)
                _check_owner_mode(path, d, os.stat(d), "directory", allow_sticky=True)
        except FileNotFoundError as e:
            raise ConfigError(f"cannot check permissions: {e.strerror}", path=path) from None
