#!/usr/bin/env python3
"""Writes the MNIST-5k test images translated by (dx, dy) pixels, zero-filled, as a CSV that
`cargo run --release --example mnist_cnn -- --test FILE.csv` scores as one more test set
(header label,px0..px783; pixels 0-255). Standard library only.

    python3 scripts/mnist_shifted_csv.py --dx 3 --dy 3 --out target/translated_3px.csv
"""
import argparse
import struct
from pathlib import Path


def read_idx(path, magic, ndim):
    raw = Path(path).read_bytes()
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise SystemExit(f"{path}: magic {got}, expected {magic}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return dims, raw[4 + 4 * ndim:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="directory of the mnist5k-* IDX files")
    ap.add_argument("--dx", type=int, default=3, help="pixels to the right (negative: left)")
    ap.add_argument("--dy", type=int, default=3, help="pixels down (negative: up)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    d = Path(args.data)
    (n, h, w), pixels = read_idx(d / "mnist5k-test-images-idx3-ubyte", 2051, 3)
    (m,), labels = read_idx(d / "mnist5k-test-labels-idx1-ubyte", 2049, 1)
    if m != n:
        raise SystemExit(f"{n} images but {m} labels")
    lines = ["label," + ",".join(f"px{i}" for i in range(h * w))]
    for k in range(n):
        img = pixels[k * h * w:(k + 1) * h * w]
        out = []
        for r in range(h):
            for c in range(w):
                sr, sc = r - args.dy, c - args.dx
                out.append(img[sr * w + sc] if 0 <= sr < h and 0 <= sc < w else 0)
        lines.append(f"{labels[k]}," + ",".join(map(str, out)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)  # atomic: no half-written CSV at --out
    print(f"{out}: {n} images translated by ({args.dx}, {args.dy})")


if __name__ == "__main__":
    main()
