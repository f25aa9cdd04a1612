#!/usr/bin/env bash
# Checks the guide (docs/guide/*.md) and README.md, so that neither can go stale:
#   1. every fenced code block is `rust` (a doctest: src/lib.rs includes each chapter, and
#      `cargo test` compiles and runs its blocks; `rust,no_run` blocks are compiled) or `sh`;
#   2. every relative link points to a file of the repository, and every `#anchor` to a heading
#      of that file (GitHub's anchor rule: lower case, punctuation dropped, spaces to dashes);
#   3. every `sh` block of the guide runs, chapter by chapter, each chapter in a fresh directory
#      under target/guide-run/ that holds a link to data/, with target/release on PATH (so `swag`
#      is the binary `cargo build --release` made) and `set -euo pipefail`.
# Usage: bash scripts/check_guide.sh           # all three
#        bash scripts/check_guide.sh --no-run  # 1 and 2 only (no build needed)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

python3 - README.md docs/guide/*.md <<'PY'
import os, re, sys
def anchors(path):
    out, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            out.add(title.replace(" ", "-"))
    return out
bad = []
for path in sys.argv[1:]:
    fence = False
    text = open(path, encoding="utf-8").read()
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            if not fence:
                lang = line[3:].strip().split(",")[0]
                if lang not in ("rust", "sh"):
                    bad.append(f"{path}:{n}: a code block must be `rust` (a doctest) or `sh` (run by CI), not `{lang or 'plain'}`")
            fence = not fence
            continue
        if fence:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(dest):
                bad.append(f"{path}:{n}: broken link {target}: no file {dest}")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                bad.append(f"{path}:{n}: broken link {target}: no heading #{anchor} in {dest}")
for b in bad:
    print(b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"{len(sys.argv) - 1} files: code blocks rust or sh, relative links resolve")
PY

[ "${1:-}" = "--no-run" ] && exit 0

export PATH="$repo/target/release:$PATH"
test -x "$repo/target/release/swag" || { echo "error: build target/release/swag first (cargo build --release)" >&2; exit 1; }
for chapter in docs/guide/[0-9]*.md; do
    name=$(basename "$chapter" .md)
    script="$repo/target/guide-run/$name.sh"
    dir="$repo/target/guide-run/$name"
    rm -rf "$dir" && mkdir -p "$dir"
    ln -s "$repo/data" "$dir/data"
    # the sh blocks, in order, as one script
    awk '/^```sh$/ {on = 1; next} /^```/ {on = 0} on' "$chapter" > "$script"
    [ -s "$script" ] || continue
    echo "--- $chapter ($(grep -c . "$script") lines)"
    start=$SECONDS
    (cd "$dir" && bash -euo pipefail -x "$script")
    echo "--- $chapter: $((SECONDS - start)) s"
done
