#!/usr/bin/env bash
# Sets up a fresh Debian 12 host (as root) for auditwatch: system packages, the Python package
# (which compiles the BPF object), a running auditd with audit enabled, and auditwatch's rules.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt_packages=(
  auditd            # auditd + auditctl/augenrules: the audit sensor listens beside it
  clang llvm        # compiles the CO-RE BPF object (llvm-strip keeps .BTF)
  libbpf-dev libbpf1  # headers for the build, the library the loader uses via ctypes
  bpftool           # BTF checks in tests, link inspection
  rsyslog           # a real syslog receiver for the syslog tests
  python3-audit     # auparse: test oracle for the audit parser
  procps util-linux # pgrep, unshare
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own python3 refuses pip installs (PEP 668) unless told; a pyenv python ignores this.
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# auditd: no systemd on these machines, so start it directly when it is not running. "Running"
# is what the kernel says (the registered audit pid is alive), not a process name.
auditd_alive() {
  local pid
  pid=$(auditctl -s 2>/dev/null | awk '$1 == "pid" {print $2}')
  [ -n "$pid" ] && [ "$pid" != 0 ] && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status"
}
if ! auditd_alive; then
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start auditd
  else
    auditd
  fi
fi
for _ in $(seq 50); do auditd_alive && break; sleep 0.1; done
auditd_alive || { echo "setup: auditd did not start" >&2; exit 1; }
auditctl -e 1 >/dev/null
python3 -m auditwatch rules --install
