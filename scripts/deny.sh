#!/usr/bin/env bash
# make deny: dependency hygiene with cargo-deny (installed when missing): licenses, bans
# (no duplicate versions beyond the reasoned skips in deny.toml), sources, and security
# advisories when the RustSec database can be fetched from GitHub.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny (once, about 3 minutes)..."
    cargo install cargo-deny --locked --quiet
fi
# cargo-deny reads `cargo metadata`, which needs the manifest of every crate in Cargo.lock,
# the Windows- and wasm-only ones too that a Linux build never downloads: fetch them first.
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources
if out=$(timeout 120 cargo deny check advisories 2>&1); then
    echo "advisories ok"
elif grep -q "failed to fetch advisory database" <<<"$out"; then
    echo "advisories: not checked, the RustSec database cannot be fetched from here (github.com unreachable)"
else
    echo "$out" >&2
    exit 1
fi
