"""The audit rules auditwatch needs: print them, install them, check they are loaded (does I/O).

The one copy lives in ``auditwatch/data/auditwatch.rules`` (package data);
``rules/auditwatch.rules`` at the top of the repository is a symlink to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from typing import Final

from auditwatch.errors import SensorError

RULES_FILE: Final = "auditwatch.rules"
RULE_KEYS: Final = ("auditwatch_exec", "auditwatch_memfd")
DEFAULT_RULES_DIR: Final = "/etc/audit/rules.d"
_TIMEOUT_S: Final = 30


def rules_text() -> str:
    return resources.files("auditwatch").joinpath("data", RULES_FILE).read_text(encoding="utf-8")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SensorError(f"audit rules: cannot run {argv[0]}: {e}") from e


def install_rules(dest_dir: str = DEFAULT_RULES_DIR) -> str:
    """Write ``DEST_DIR/auditwatch.rules`` and load the rules; returns the path written.

    Loads with ``augenrules --load`` (which merges every file of rules.d) when it exists and
    ``dest_dir`` is the system one, else ``auditctl -R`` of our file alone."""
    path = os.path.join(dest_dir, RULES_FILE)
    tmp = path + ".tmp"
    try:
        os.makedirs(dest_dir, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(rules_text())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except OSError as e:
        raise SensorError(f"audit rules: cannot write {path}: {e.strerror or e}") from e
    augenrules = shutil.which("augenrules")
    if augenrules is not None and os.path.abspath(dest_dir) == DEFAULT_RULES_DIR:
        result = _run([augenrules, "--load"])
    else:
        auditctl = shutil.which("auditctl")
        if auditctl is None:
            raise SensorError("audit rules: neither augenrules nor auditctl found "
                              "(install the auditd package)")
        result = _run([auditctl, "-R", path])
    if rules_loaded():
        # auditctl -R exits 1 on "Rule exists"; what counts is that the rules are in the kernel.
        return path
    detail = (result.stderr or result.stdout).strip().splitlines()
    raise SensorError(f"audit rules: loading {path} failed (exit {result.returncode}): "
                      f"{detail[-1] if detail else 'rules not listed by auditctl -l'} "
                      "(audit locked with -e 2?)")


def _auditctl(option: str) -> str:
    """``auditctl OPTION``'s output; SensorError when auditctl is missing or fails."""
    auditctl = shutil.which("auditctl")
    if auditctl is None:
        raise SensorError("audit rules: auditctl not found (install the auditd package)")
    result = _run([auditctl, option])
    if result.returncode != 0:
        raise SensorError(f"audit rules: auditctl {option} failed: {result.stderr.strip()}")
    return result.stdout


def loaded_rules() -> str:
    return _auditctl("-l")


def rules_loaded() -> bool:
    """Are our exec rules in the kernel? False also when they cannot be listed."""
    try:
        listed = loaded_rules()
    except SensorError:
        return False
    return all(f"key={k}" in listed for k in RULE_KEYS)


def audit_enabled() -> bool | None:
    """``auditctl -s``: ``enabled 0`` -> False, ``1``/``2`` -> True, unknown -> None."""
    try:
        status = _auditctl("-s")
    except SensorError:
        return None
    for line in status.splitlines():
        key, _, value = line.partition(" ")
        if key == "enabled" and value.strip().isdigit():
            return value.strip() != "0"
    return None
