#!/usr/bin/env bash
# Opens a report written by `swag report` in a real headless browser (Debian's chromium) and
# checks that it renders: a screenshot that is not blank, and every inline SVG plot present
# in the DOM with a non-zero rendered size and its text drawn.
#
# Usage: scripts/check_report_browser.sh [OUT_DIR]
#   OUT_DIR (default target/report-browser-check) receives the report, screenshot.png and
#   the browser's DOM dumps, to look at after a failure.
# Installs chromium with apt-get when it is missing (idempotent). Exits non-zero on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target/report-browser-check}"
cd "$ROOT"

fail() { echo "check_report_browser: FAIL: $*" >&2; exit 1; }

# 1. The browser.
if ! command -v chromium >/dev/null 2>&1; then
    echo "check_report_browser: installing chromium"
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
command -v chromium >/dev/null 2>&1 || fail "chromium is not installed"
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to check the screenshot"

# 2. A small report from generated inputs, through the CLI.
# The release binary: CI built it already, and a debug build would compile every dependency
# once more in another profile (minutes on a small machine).
cargo build --quiet --release --bin swag
SWAG="$ROOT/target/release/swag"
rm -rf "$OUT"
mkdir -p "$OUT/inputs"
python3 - "$OUT/inputs" <<'EOF'
import math, random, sys
out = sys.argv[1]
random.seed(7)
n, c = 600, 5
def softmax(z):
    m = max(z); e = [math.exp(v - m) for v in z]; s = sum(e); return [v / s for v in e]
with open(f"{out}/labels.csv", "w") as fy, open(f"{out}/sgd.csv", "w") as fa, \
     open(f"{out}/swag.csv", "w") as fb:
    fy.write("label\n")
    head = ",".join(f"prob_{k}" for k in range(c)) + "\n"
    fa.write(head); fb.write(head)
    for _ in range(n):
        y = random.randrange(c)
        z = [random.gauss(0, 1) for _ in range(c)]
        z[y] += 2.0
        fy.write(f"{y}\n")
        fa.write(",".join(f"{p:.10f}" for p in softmax([2.5 * v for v in z])) + "\n")
        fb.write(",".join(f"{p:.10f}" for p in softmax(z)) + "\n")
with open(f"{out}/regression.csv", "w") as f:
    f.write("mean,std,target\n")
    for _ in range(300):
        m = random.gauss(0, 2); s = 0.4 + random.random()
        f.write(f"{m},{s},{m + random.gauss(0, 1.3) * s}\n")
EOF
I="$OUT/inputs"
"$SWAG" report --dataset "browser check" \
    --probs "$I/sgd.csv" --method SGD --probs "$I/swag.csv" --method SWAG --labels "$I/labels.csv" \
    --mean "$I/regression.csv:mean" --std "$I/regression.csv:std" --method SWAG \
    --targets "$I/regression.csv:target" --out "$OUT/report"
HTML="$OUT/report/report.html"
[ -s "$HTML" ] || fail "report.html was not written"
N_PLOTS=$(find "$OUT/report" -maxdepth 1 -name '*.svg' | wc -l)
[ "$N_PLOTS" -ge 1 ] || fail "no plots in the report"

# 3. The browser: a screenshot, the report's DOM, and a probe page that measures every plot.
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
chrome() {
    timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$PROFILE" "$@" 2>>"$OUT/chromium.log"
}
chrome --hide-scrollbars --window-size=1200,2000 --screenshot="$OUT/screenshot.png" "file://$HTML" \
    >/dev/null || fail "chromium could not take a screenshot (see $OUT/chromium.log)"
[ -s "$OUT/screenshot.png" ] || fail "no screenshot written"
chrome --dump-dom "file://$HTML" >"$OUT/report.dom.html" || fail "chromium could not dump the DOM"

# The probe loads the report in an iframe and checks, after layout, that every inline SVG has
# a non-zero size and drawn text, and that every <img> (none are expected) loaded.
cat >"$OUT/probe.html" <<EOF
<!DOCTYPE html><html><body>
<iframe id="r" src="file://$HTML" style="width:1200px;height:2000px"></iframe>
<pre id="result">PENDING</pre>
<script>
document.getElementById('r').addEventListener('load', function () {
  var out = document.getElementById('result');
  try {
    var doc = this.contentDocument;
    var svgs = doc.querySelectorAll('main figure > svg');
    var bad = [];
    svgs.forEach(function (s) {
      var r = s.getBoundingClientRect();
      var texts = s.querySelectorAll('text').length;
      if (!(r.width > 100 && r.height > 100 && texts > 0)) {
        bad.push((s.getAttribute('data-plot') || '?') + ' ' + r.width + 'x' + r.height + ' texts=' + texts);
      }
    });
    var imgs = doc.images;
    for (var i = 0; i < imgs.length; i++) {
      if (!imgs[i].complete || imgs[i].naturalWidth === 0) { bad.push('img ' + imgs[i].src); }
    }
    var best = doc.querySelectorAll('td.best').length;
    out.textContent = (bad.length ? 'BAD ' + bad.join('; ') : 'ALL_OK') +
      ' svgs=' + svgs.length + ' imgs=' + imgs.length + ' best=' + best;
  } catch (e) { out.textContent = 'ERROR ' + e; }
});
</script></body></html>
EOF
chrome --allow-file-access-from-files --virtual-time-budget=10000 --dump-dom "file://$OUT/probe.html" \
    >"$OUT/probe.dom.html" || fail "chromium could not run the probe page"
RESULT=$(sed -n 's/.*<pre id="result">\([^<]*\)<\/pre>.*/\1/p' "$OUT/probe.dom.html")
echo "check_report_browser: probe: $RESULT"
case "$RESULT" in
    ALL_OK*) ;;
    *) fail "plots did not all render: $RESULT" ;;
esac
echo "$RESULT" | grep -q "svgs=$N_PLOTS " || fail "expected $N_PLOTS inline SVG plots, probe saw: $RESULT"
echo "$RESULT" | grep -q "best=0" && fail "no best values marked in the tables"
DOM_SVGS=$(grep -o '<svg' "$OUT/report.dom.html" | wc -l)
[ "$DOM_SVGS" -eq "$N_PLOTS" ] || fail "DOM holds $DOM_SVGS <svg> elements, expected $N_PLOTS"
for f in "$OUT"/report/*.svg; do
    name="$(basename "$f" .svg)"
    grep -q "data-plot=\"$name\"" "$OUT/report.dom.html" || fail "plot $name missing from the DOM"
done

# 4. The screenshot is not blank: decode the PNG (pure Python: zlib + PNG filters) and look at
# the spread of pixel values and the share of non-white pixels.
python3 - "$OUT/screenshot.png" <<'EOF' || fail "screenshot check failed"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, b"", None
while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4]); kind = data[pos + 4:pos + 8]
    body = data[pos + 8:pos + 8 + length]; pos += 12 + length
    if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT": idat += body
w, h, depth, ctype, _, _, interlace = ihdr
assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG {ihdr}"
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat); stride = w * bpp
prev = bytearray(stride); rows = []; i = 0
for _ in range(h):
    f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0; b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
grey = [sum(r[x:x + 3]) / 3 for r in rows[::4] for x in range(0, stride, bpp * 4)]
mean = sum(grey) / len(grey); var = sum((g - mean) ** 2 for g in grey) / len(grey)
non_white = sum(g < 235 for g in grey) / len(grey)
print(f"check_report_browser: screenshot {w}x{h}, grey mean {mean:.1f}, variance {var:.1f}, non-white {non_white:.1%}")
assert (w, h) == (1200, 2000), "unexpected screenshot size"
assert var > 100 and non_white > 0.03, "screenshot looks blank"
EOF
echo "check_report_browser: OK ($N_PLOTS plots rendered; screenshot $OUT/screenshot.png)"
