#!/usr/bin/env bash
# Real labelled text for the SWAG-LoRA benchmark (`lora_swag`): the sentence-level sentiment
# ratings of Hutto and Gilbert (2014), "VADER: A Parsimonious Rule-based Model for Sentiment
# Analysis of Social Media Text" (ICWSM), shipped in the source distribution of the PyPI package
# `vaderSentiment` 3.3.2 (MIT licence) as additional_resources/hutto_ICWSM_2014.tar.gz. Every
# sentence was rated on -4..+4 by at least 20 screened human raters; the files give the mean.
# The archive's SHA-256 and the package's are checked before anything is read.
#
# Written into DIR (default target/sentiment-text, ignored; never committed):
#   movie_reviews.csv    text,label  Rotten Tomatoes snippets (Pang and Lee 2004): the
#                                     in-distribution set (train / validation / test)
#   product_reviews.csv  text,label  Amazon product-review sentences (Hu and Liu 2004): the
#                                     shifted set (same labels, another domain)
#   tweets.csv           text,label  tweets: a second shifted set, for `lora_swag --test`
#   news_neutral.txt     one a line  New York Times editorial sentences the raters found
#                                     neutral: the out-of-distribution set (text of another
#                                     kind, with no sentiment to find)
# Labels: `negative` when the raters' mean is <= -0.5, `positive` when >= +0.5; sentences in
# between (rated neutral) are left out of the labelled files. Rows keep the source's order.
#
# Usage: scripts/fetch_sentiment_text.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/sentiment-text}
# Observed on the files downloaded from PyPI.
sdist_sha=5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9
archive_sha=d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa
sdist=vaderSentiment-3.3.2.tar.gz

if [ -f "$out/movie_reviews.csv" ] && [ -f "$out/product_reviews.csv" ] \
  && [ -f "$out/tweets.csv" ] && [ -f "$out/news_neutral.txt" ]; then
  echo "$out already holds the sentiment text"
  exit 0
fi
tmp=$(mktemp -d)
# The files are staged beside the destination (one file system, so each `mv` is a rename):
# every file of $out is the old one or a complete new one, also with two fetches at once or
# a SIGTERM midway, and the staging directory is removed on any exit.
mkdir -p "$(dirname "$out")"
stage=$(mktemp -d "$(dirname "$out")/.sentiment-text.XXXXXX")
trap 'rm -rf "$tmp" "$stage"' EXIT
trap 'exit 143' TERM INT
python3 -m pip download vaderSentiment==3.3.2 --no-deps --no-binary :all: --quiet -d "$tmp"
got=$(sha256sum "$tmp/$sdist" | cut -d' ' -f1)
if [ "$got" != "$sdist_sha" ]; then
  echo "fetch_sentiment_text.sh: $sdist has SHA-256 $got, expected $sdist_sha; nothing written" >&2
  exit 1
fi
python3 - "$tmp/$sdist" "$archive_sha" "$stage/out" <<'PY'
import csv, hashlib, io, os, sys, tarfile
sdist, want, out = sys.argv[1], sys.argv[2], sys.argv[3]
inner = tarfile.open(sdist).extractfile(
    "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
got = hashlib.sha256(inner).hexdigest()
if got != want:
    sys.exit(f"fetch_sentiment_text.sh: hutto_ICWSM_2014.tar.gz has SHA-256 {got}, expected {want}")
archive = tarfile.open(fileobj=io.BytesIO(inner))

def rows(name):
    text = archive.extractfile(f"hutto_ICWSM_2014/{name}_GroundTruth.txt").read().decode("utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].strip():
            sys.exit(f"{name}_GroundTruth.txt row {n}: expected id, mean rating, text")
        yield float(parts[1]), " ".join(parts[2].split())

os.makedirs(out)
for name, file in [("movieReviewSnippets", "movie_reviews.csv"),
                   ("amazonReviewSnippets", "product_reviews.csv"),
                   ("tweets", "tweets.csv")]:
    with open(os.path.join(out, file), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        kept = 0
        for mean, text in rows(name):
            if abs(mean) >= 0.5:
                w.writerow([text, "positive" if mean > 0 else "negative"])
                kept += 1
    print(f"{file}: {kept} rows")
with open(os.path.join(out, "news_neutral.txt"), "w", encoding="utf-8") as f:
    kept = 0
    for mean, text in rows("nytEditorialSnippets"):
        if abs(mean) < 0.5:
            f.write(text + "\n")
            kept += 1
print(f"news_neutral.txt: {kept} lines")
PY
mkdir -p "$out"
for f in movie_reviews.csv product_reviews.csv tweets.csv news_neutral.txt; do
  mv -f "$stage/out/$f" "$out/$f"
done
echo "sentiment text written into $out"
