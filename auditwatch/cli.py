"""Command line: ``auditwatch run|scan|selftest|rules|config check|status``.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. Every ``AuditwatchError``
becomes one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from auditwatch import __version__
from auditwatch.errors import AuditwatchError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _sensors_arg(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in ("bpf", "audit")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"sensors are bpf and/or audit, not {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="auditwatch", description="Detect fileless execution (TRC-105).")
    p.add_argument("--version", action="version", version=f"auditwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="watch execs live and report fileless ones")
    run.add_argument("--config", metavar="PATH")
    run.add_argument("--sensors", type=_sensors_arg, metavar="bpf,audit")
    run.add_argument("--output", action="append", metavar="SPEC",
                     help="jsonl:-, jsonl:PATH, syslog, syslog+udp://H:P, syslog+tcp://H:P")
    run.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds")
    run.add_argument("--no-sweep", action="store_true",
                     help="skip the start-up sweep of already running processes")

    scan = sub.add_parser("scan", help="report fileless execs found in audit.log files")
    scan.add_argument("--config", metavar="PATH")
    scan.add_argument("--output", action="append", metavar="SPEC")
    scan.add_argument("files", nargs="+", metavar="FILE|-")

    st = sub.add_parser("selftest", help="perform real fileless execs and check they are found")
    st.add_argument("--sensors", type=_sensors_arg, metavar="bpf,audit")

    rules = sub.add_parser("rules", help="print or install the audit rules")
    rules.add_argument("--install", action="store_true",
                       help="write /etc/audit/rules.d/auditwatch.rules and load it")

    config = sub.add_parser("config", help="configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    check = csub.add_parser("check", help="validate a configuration file")
    check.add_argument("path")

    sub.add_parser("status", help="show the running daemon's sensors and counters")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except AuditwatchError as exc:
        print(f"auditwatch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    # Imported per command: `auditwatch rules` must not need libbpf, and so on.
    if args.command == "run":
        from auditwatch import daemon
        return daemon.run(args.config, args.sensors, args.output, args.duration,
                          sweep=not args.no_sweep)
    if args.command == "scan":
        from auditwatch import daemon
        return daemon.scan(args.config, args.output, args.files)
    if args.command == "selftest":
        from auditwatch import selftest
        return selftest.main(args.sensors)
    if args.command == "rules":
        from auditwatch import rules
        if args.install:
            print(rules.install_rules(), file=sys.stderr)
        else:
            sys.stdout.write(rules.rules_text())
        return 0
    if args.command == "config":
        from auditwatch.config import check_config_permissions, load_config
        load_config(args.path)
        check_config_permissions(args.path)
        print(f"{args.path}: ok")
        return 0
    if args.command == "status":
        from auditwatch.status import format_status, read_status
        state = read_status()
        print(format_status(state))
        return 0 if state is not None and state["running"] else 1
    raise UsageError(f"unknown command {args.command}")
