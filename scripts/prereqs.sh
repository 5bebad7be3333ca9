#!/usr/bin/env bash
# Installs what the build, tests and demo need when it is missing. Safe to run repeatedly.
set -euo pipefail
need=()
command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || need+=(python3)
command -v cmp >/dev/null || need+=(diffutils)
# The FUSE mount needs fusermount3 (package fuse3); its tests also use tar and git.
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v tar >/dev/null || need+=(tar)
command -v git >/dev/null || need+=(git)
# The observability tests check /metrics and the alert rules with promtool and scrape a
# cluster with a real Prometheus (both from the Debian package prometheus).
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
# The network fault tests put each member in its own network namespace (ip, from iproute2)
# and delay or drop packets between them through a netfilter queue (iptables-legacy).
command -v ip >/dev/null || need+=(iproute2)
command -v iptables-legacy >/dev/null || need+=(iptables)
# The deploy tests parse deploy/compose/compose.yaml with PyYAML (they check the systemd
# units with systemd-analyze where systemd is installed, and skip that where it is not).
# PyYAML goes to the python3 on the PATH (which need not be Debian's).
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install -q pyyaml 2>/dev/null || need+=(python3-yaml)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
