#!/usr/bin/env bash
# Packages every crate of the workspace and checks that each package builds from what it ships.
#
#   1. `cargo package --workspace --no-verify` writes target/package/NAME-VERSION.crate (the
#      files of each crate's include list, its manifest normalised as crates.io will see it);
#      each must stay under 5 MB.
#   2. The .crate files are unpacked into target/package-check/, a throwaway workspace whose
#      [patch.crates-io] points the crates at one another (as if the core had been published
#      first), with the repository's Cargo.lock, and `cargo check` builds every library and
#      binary there: a file left out of an include list, or a path-only dependency, fails here.
#
# Why not cargo's own verification: it builds each package in full (code generation, another
# profile), recompiling the whole dependency tree once more, about ten minutes on a 2-core
# machine; a check with the repository's target directory reuses the check-mode dependencies
# that clippy and rustdoc built, and catches the same packaging mistakes.
#
# Usage: bash scripts/check_packages.sh   (--allow-dirty: the tree being tested is packaged)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

rm -f target/package/*.crate
cargo package --workspace --allow-dirty --no-verify
crates=(target/package/*.crate)
[ -e "${crates[0]}" ] || { echo "error: cargo package wrote no .crate file" >&2; exit 1; }

check="$repo/target/package-check"
rm -rf "$check"
mkdir -p "$check"
members=""
patches=""
for crate in "${crates[@]}"; do
  size=$(stat -c %s "$crate")
  echo "$(basename "$crate"): $size bytes"
  if [ "$size" -gt 5000000 ]; then
    echo "error: $crate is above 5 MB: narrow the include list of its Cargo.toml" >&2
    exit 1
  fi
  tar -xzf "$crate" -C "$check"
  dir=$(basename "$crate" .crate)   # NAME-VERSION
  name=${dir%-*}
  members+="\"$dir\", "
  patches+="$name = { path = \"$dir\" }"$'\n'
done
cat > "$check/Cargo.toml" <<EOF
# Written by scripts/check_packages.sh: the packaged crates, unpacked, as one workspace.
[workspace]
members = [${members%, }]
resolver = "2"

[patch.crates-io]
$patches
EOF
cp Cargo.lock "$check/Cargo.lock"
CARGO_TARGET_DIR="$repo/target" cargo check --manifest-path "$check/Cargo.toml" --workspace
echo "every package builds from its own files"
