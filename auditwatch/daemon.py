"""Assembly: build sensors, pipeline and outputs from the configuration, and run them.

``run`` is the live daemon (signals, SIGHUP reload, status file); ``scan`` feeds audit.log files
through the same pipeline. Both are thin: every decision lives in the stages they wire.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from loguru import logger

from auditwatch import hostinfo
from auditwatch.allowlist import Allowlist
from auditwatch.config import (
    Config,
    check_config_permissions,
    load_config,
    parse_output_spec,
)
from auditwatch.engine import Engine, HealthHook
from auditwatch.errors import ConfigError
from auditwatch.events import ExecEvent, Sensor
from auditwatch.finding import Finding, HealthInfo, summary
from auditwatch.health import HealthMonitor, health_finding
from auditwatch.logging_setup import setup_logging
from auditwatch.outputs import build_outputs
from auditwatch.outputs.base import FanOut
from auditwatch.pipeline import Pipeline
from auditwatch.rules import audit_enabled, rules_loaded
from auditwatch.sensors.audit_netlink import AuditNetlinkSource
from auditwatch.sensors.base import Source
from auditwatch.status import write_status

STATUS_INTERVAL_S = 2.0
RULES_CHECK_INTERVAL_S = 5.0


def _load(config_path: str | None) -> Config:
    config = load_config(config_path)
    if config_path is not None:
        check_config_permissions(config_path)
    return config


def _outputs(config: Config, specs: Sequence[str] | None) -> FanOut:
    configs = [parse_output_spec(s) for s in specs] if specs else list(config.outputs)
    return build_outputs(configs)


def _allowlist(config: Config) -> Allowlist:
    return Allowlist.from_config(config.allowlist, include_defaults=config.use_default_allowlist)


def _sink(outputs: FanOut) -> Callable[[Finding], None]:
    human = sys.stderr.isatty()

    def write(finding: Finding) -> None:
        outputs.write(finding)
        if human:
            print(summary(finding), file=sys.stderr)
    return write


class _LivePipeline(Pipeline):
    """The live daemon's pipeline: each sensor event is completed on arrival, before correlation
    and the allow-list, with what only the running host can tell (``hostinfo.LiveFacts``: the
    parent's exe from /proc/PPID/exe, the cgroup path for BPF's cgroup id). Not for ``scan``:
    the pids of an old audit.log name other processes now."""

    def __init__(self, facts: hostinfo.LiveFacts, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.facts = facts

    def feed(self, event: ExecEvent) -> list[Finding]:
        return super().feed(self.facts.enrich(event))


def make_pipeline(config: Config, live: Sequence[Sensor], hostname: str, *,
                  live_host: bool = False) -> Pipeline:
    kwargs: dict[str, Any] = dict(
        hostname=hostname, live_sensors=live,
        window_ns=config.correlation.window_ms * 1_000_000,
        max_pending=config.correlation.max_pending,
        memfd_devs=hostinfo.memfd_devices(), allowlist=_allowlist(config),
        sha256_of=hostinfo.sha256_of_running_image)
    if live_host:
        return _LivePipeline(hostinfo.LiveFacts(), **kwargs)
    return Pipeline(**kwargs)


def start_sensors(engine: Engine, required: frozenset[Sensor]) -> list[Sensor]:
    """Load the sensors (an optional one that cannot run is a warning) and tell the audit
    sensor whether BPF runs beside it. Returns the live sensors."""
    for warning in engine.start(required=required):
        logger.warning(warning)
    live = [s.name for s in engine.active]
    for source in engine.active:
        if isinstance(source, AuditNetlinkSource):
            source.extractor.infer_loader = "bpf" not in live
    return live


def _sources(config: Config, names: Sequence[Sensor]) -> list[Source]:
    sources: list[Source] = []
    for name in names:
        if name == "bpf":
            from auditwatch.sensors.bpf.sensor import BpfExecSource
            sources.append(BpfExecSource())
        elif name == "audit":
            sources.append(AuditNetlinkSource(
                rcvbuf=config.audit.netlink_rcvbuf,
                event_timeout_ns=config.audit.event_timeout_ms * 1_000_000))
    return sources


class _Signals:
    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, _sig: int, _frame: FrameType | None) -> None:
        self.reload = True


def run(config_path: str | None, sensors: Sequence[str] | None, output_specs: Sequence[str] | None,
        duration_s: float | None, *, sweep: bool = True) -> int:
    signals = _Signals()  # first: a SIGHUP/SIGTERM during start-up must not kill us mid-load
    config = _load(config_path)
    setup_logging(config.log_level)
    outputs = _outputs(config, output_specs)
    wanted: list[Sensor] = list(sensors or config.sensors)  # type: ignore[arg-type]
    required = frozenset(wanted) if sensors else frozenset()
    hostname = hostinfo.hostname()

    engine = Engine(_sources(config, wanted), Pipeline(hostname=hostname), _sink(outputs))
    try:
        live = start_sensors(engine, required)
        engine.pipeline = make_pipeline(config, live, hostname, live_host=True)
        monitor = HealthMonitor()
        engine.health = _health_monitor(engine, hostname, monitor)
        logger.info("auditwatch running: sensors={}", ",".join(live))
        if sweep:
            _sweep(engine)
        _loop(engine, signals, duration_s, config_path, outputs, config, monitor)
    finally:
        engine.close()
        outputs.close()
    return 0


def _health_monitor(engine: Engine, hostname: str, monitor: HealthMonitor) -> HealthHook:
    """The engine's health hook over ``monitor`` (whose conditions the status file shows)."""
    audit_state = _RulesWatch()

    def check(now_ns: int, counters: dict[Sensor, dict[str, int]],
              infos: list[HealthInfo]) -> list[Finding]:
        # Sensors report their own losses/tamper in detail; absorb folds them into the monitor's
        # episodes so each is reported once.
        if any(info.kind in _AUDIT_CONFIG_KINDS for info in infos):
            audit_state.refresh()  # ask the kernel now: a cached "loaded" would end it at once
        found = monitor.absorb(infos)
        for joined in engine.pipeline.joined:
            found.extend(monitor.note(joined))
        engine.pipeline.joined.clear()
        rules_loaded, enabled = audit_state(engine)
        found.extend(monitor.observe(now_ns, counters, _bpf_attached(engine), rules_loaded,
                                     enabled))
        findings = [health_finding(info, hostname) for info in found]
        loaded = {s.name for s in engine.active}
        findings += engine.pipeline.set_live_sensors(loaded - monitor.blinded())
        return findings
    return check


def _bpf_attached(engine: Engine) -> bool | None:
    for source in engine.active:
        if source.name == "bpf":
            return bool(source.attached())  # type: ignore[attr-defined]
    return None


_AUDIT_CONFIG_KINDS = frozenset({"audit_rules_removed", "audit_disabled"})


class _RulesWatch:
    """(our audit rules are loaded, audit is enabled), asked of ``auditctl -l`` / ``-s`` every few
    seconds: a fallback for changes the stream's CONFIG_CHANGE records did not show us, and the
    only way to see them end (``-e 1`` is not delivered to the multicast group)."""

    def __init__(self) -> None:
        self._next = 0.0
        self._state: tuple[bool | None, bool | None] = (None, None)

    def refresh(self) -> None:
        self._next = 0.0

    def __call__(self, engine: Engine) -> tuple[bool | None, bool | None]:
        if not any(s.name == "audit" for s in engine.active):
            return None, None
        if time.monotonic() >= self._next:
            self._state = (rules_loaded(), audit_enabled())
            self._next = time.monotonic() + RULES_CHECK_INTERVAL_S
        return self._state


def _sweep(engine: Engine) -> None:
    from auditwatch.sweep import sweep
    for event in sweep():
        for finding in engine.pipeline.feed(event):  # "sweep" is no live sensor: passes through
            engine.sink(finding)


def _loop(engine: Engine, signals: _Signals, duration_s: float | None, config_path: str | None,
          outputs: FanOut, config: Config, monitor: HealthMonitor) -> None:
    started = time.time()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_status = 0.0
    while not signals.stop and (deadline is None or time.monotonic() < deadline):
        engine.pump()
        if signals.reload:
            signals.reload = False
            config = _reload(engine, config, config_path, outputs)
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_INTERVAL_S
            _report_output_drops(engine, outputs)
            _publish_status(engine, outputs, started, monitor)
        _log_suppressed(engine, config)
    engine.drain()
    _publish_status(engine, outputs, started, monitor)


def _reload(engine: Engine, config: Config, config_path: str | None, outputs: FanOut) -> Config:
    """SIGHUP: re-read the config (a broken one is reported and the old one stays) and reopen
    the outputs (logrotate)."""
    outputs.reopen()
    if config_path is None:
        return config
    try:
        new = _load(config_path)
    except ConfigError as exc:
        logger.error("config reload failed, keeping the previous configuration: {}", exc)
        return config
    setup_logging(new.log_level)
    engine.pipeline.allowlist = _allowlist(new)
    logger.info("configuration reloaded from {}", config_path)
    # Reloaded: allow-list, log level, log_suppressed. The rest is wired at start-up.
    fixed = [k for k in ("sensors", "correlation", "audit", "outputs")
             if getattr(new, k) != getattr(config, k)]
    if fixed:
        logger.warning("changes to {} take effect only after a restart", ", ".join(fixed))
    return new


def _report_output_drops(engine: Engine, outputs: FanOut) -> None:
    """A slow or absent receiver drops findings instead of blocking detection: say so, on every
    output (the others still work), as a health finding."""
    for name, count in outputs.new_drops().items():
        message = f"output {name} dropped {count} finding(s) (receiver slow or unreachable)"
        logger.warning(message)
        info = HealthInfo(kind="output_dropped", message=message, count=count,
                          timestamp_ns=time.time_ns())
        engine.sink(health_finding(info, engine.pipeline.hostname))


def _log_suppressed(engine: Engine, config: Config) -> None:
    if config.log_suppressed:
        for s in engine.pipeline.suppressed:
            logger.debug("suppressed by allow-list entry {!r}: {}", s.entry, summary(s.finding))
    engine.pipeline.suppressed.clear()


def _publish_status(engine: Engine, outputs: FanOut, started: float,
                    monitor: HealthMonitor) -> None:
    counters = engine.counters()
    blinded = monitor.blinded()
    health = [{"kind": kind, "sensor": sensor} for kind, sensor in monitor.active()]
    state = {
        "pid": os.getpid(),
        "started": started,
        "sensors": {s.name: {"state": "blind" if s.name in blinded else "live",
                             "counters": counters.get(s.name, {})}
                    for s in engine.active},
        "health": health,
        "stages": {"pipeline": counters["pipeline"], "outputs": outputs.counters(),
                   **({"allowlist": counters["allowlist"]} if "allowlist" in counters else {})},
    }
    try:
        write_status(state)
    except OSError as exc:
        logger.debug("cannot write status file: {}", exc)


def scan(config_path: str | None, output_specs: Sequence[str] | None, files: Sequence[str]) -> int:
    from auditwatch.audit.reader import Scanner, open_audit_logs

    config = _load(config_path)
    setup_logging(config.log_level)
    outputs = _outputs(config, output_specs)
    pipeline = make_pipeline(config, ["audit"], hostinfo.hostname())
    scanner = Scanner()
    try:
        for event in scanner.events(open_audit_logs(list(files))):
            for finding in pipeline.feed(event):
                outputs.write(finding)
        for finding in pipeline.flush_all():
            outputs.write(finding)
    finally:
        outputs.close()
    logger.info("scan: {} findings; parser counters {}", pipeline.counters.findings,
                scanner.counters)
    return 0
