#!/usr/bin/env python3
"""Writes the MNIST-5k test images with Gaussian pixel noise, as a CSV that
`cargo run --release --example mnist_cnn -- --test FILE.csv` and
`scripts/torch_reference/mnist_cnn_torch.py --test FILE.csv` both score as one more test set
(header label,px0..px783; pixels 0-255). Standard library only.

Noise: every pixel gets N(0, (sigma * 255)^2) added, then is rounded half away from zero and
clipped to 0..255, with Python's random.Random(seed): the same file for both frameworks, so
that they are compared on the same images.

    python3 scripts/mnist_noise_csv.py --sigma 0.25 --out target/pixel_noise_025.csv
    python3 scripts/mnist_noise_csv.py --sigma 0.5 --out target/pixel_noise_050.csv
"""
import argparse
import math
import random
from pathlib import Path

from mnist_shifted_csv import read_idx  # the IDX reader of the sibling script


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="directory of the mnist5k-* IDX files")
    ap.add_argument("--sigma", type=float, required=True,
                    help="noise standard deviation as a fraction of the pixel range (0-255)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise SystemExit(f"--sigma {args.sigma}: must be finite and >= 0")
    d = Path(args.data)
    (n, h, w), pixels = read_idx(d / "mnist5k-test-images-idx3-ubyte", 2051, 3)
    (m,), labels = read_idx(d / "mnist5k-test-labels-idx1-ubyte", 2049, 1)
    if m != n:
        raise SystemExit(f"{n} images but {m} labels")
    rng = random.Random(args.seed)
    sd = args.sigma * 255.0
    lines = ["label," + ",".join(f"px{i}" for i in range(h * w))]
    for k in range(n):
        out = []
        for p in pixels[k * h * w:(k + 1) * h * w]:
            v = p + rng.gauss(0.0, sd)
            v = math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)
            out.append(str(min(255, max(0, v))))
        lines.append(f"{labels[k]}," + ",".join(out))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)  # atomic: no half-written CSV at --out
    print(f"{out}: {n} images, pixel noise sigma {args.sigma} of the range, seed {args.seed}")


if __name__ == "__main__":
    main()
