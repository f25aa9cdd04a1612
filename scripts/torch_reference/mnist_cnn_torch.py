#!/usr/bin/env python3
"""PyTorch reference for candle-swag's examples/mnist_cnn.rs: SGD, SWA, SWAG-diag and SWAG
(Maddox et al. 2019) on a small CNN trained on MNIST-5k, scored on the clean test set and on
the test set rotated by 30 and 60 degrees.

Full recipe (3 seeds, 30 epochs, SWAG from epoch 15, 30 samples):
    pip install torch numpy
    python scripts/torch_reference/mnist_cnn_torch.py --seeds 3   # from the repository root

Written for this project (not taken from wjmaddox/swa_gaussian) to time the recipe against
candle in one sitting; the rotation reproduces candle_swag::data::image::rotate_bilinear
pixel for pixel, and the metrics follow candle_swag::metrics::classification.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

BATCH, TEST_BATCH, CLASSES = 64, 100, 10
RANK, SCALE, VAR_CLAMP = 20, 0.5, 1e-30  # SWAG: K deviation columns, sample scale, var floor
N_BINS, NLL_EPS = 15, 1e-12  # as candle_swag::metrics (ClassificationConfig::default)
ANGLES = (30, 60)


# ----------------------------------------------------------------------------- data

def read_idx(path):
    """IDX file -> numpy u8 array: magic 2051 (images, 3 dims) or 2049 (labels, 1 dim)."""
    raw = Path(path).read_bytes()
    ndim = {2051: 3, 2049: 1}[int.from_bytes(raw[:4], "big")]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def rotate(images, degrees):
    """Rotate [n, h, w] u8 images as candle_swag::data::image::rotate_bilinear does.

    Centre ((w-1)/2, (h-1)/2) in (x = column, y = row); a positive angle turns the picture
    counter-clockwise on screen. Output pixel (r, col) samples the source at
    x' = c*dx - s*dy + cx, y' = s*dx + c*dy + cy (dx = col - cx, dy = r - cy) bilinearly,
    neighbours outside the image count as 0, the result is rounded half away from zero and
    clipped to 0..255. All arithmetic in float64, in the same order as the Rust code.
    """
    n, h, w = images.shape
    rad = degrees * (math.pi / 180.0)  # f64::to_radians
    s, c = math.sin(rad), math.cos(rad)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    r, col = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    dx, dy = col - cx, r - cy
    sx = c * dx - s * dy + cx
    sy = s * dx + c * dy + cy
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    img = images.astype(np.float64)

    def at(y, x):  # [n, h, w] source values, 0 outside the image
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return np.where(inside, img[:, y.clip(0, h - 1), x.clip(0, w - 1)], 0.0)

    v = ((1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
         + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    v = np.where(v - np.floor(v) >= 0.5, np.ceil(v), np.floor(v))  # f64::round (v >= 0)
    return np.clip(v, 0.0, 255.0).astype(np.uint8)


def read_image_csv(path):
    """A CSV of `mnist_cnn --test` (header label,px0..px783; pixels 0-255) -> (u8 [n, 28, 28],
    labels [n])."""
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    if rows.shape[1] != 1 + 28 * 28:
        raise SystemExit(f"{path}: {rows.shape[1]} columns, expected label + 784 pixels")
    if rows[:, 1:].min() < 0 or rows[:, 1:].max() > 255 or rows[:, 0].min() < 0 or rows[:, 0].max() > 9:
        raise SystemExit(f"{path}: a pixel outside 0-255 or a label outside 0-9")
    return rows[:, 1:].astype(np.uint8).reshape(-1, 28, 28), rows[:, 0]


def to_tensor(images):
    """u8 [n, 28, 28] -> float32 [n, 1, 28, 28] in [0, 1] (pixels / 255)."""
    return torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)


# ----------------------------------------------------------------------------- model

def make_model():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, CLASSES))


@torch.no_grad()
def refresh_bn(model, x_train):
    """Exact BatchNorm statistics for the current weights: reset, cumulative average
    (momentum=None) over one unshuffled pass in batches of 64, as swa_utils.update_bn."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x_train), BATCH):
        model(x_train[i:i + BATCH])
    for m in bns:
        m.momentum = 0.1
    model.eval()


@torch.no_grad()
def predict(model, x):
    """Softmax probabilities [n, 10] (float64), eval mode, batches of 100."""
    model.eval()
    return torch.cat([F.softmax(model(x[i:i + TEST_BATCH]), dim=1)
                      for i in range(0, len(x), TEST_BATCH)]).double()


class Swag:
    """Running first and second moments of the flat parameter vector and the last K
    deviations theta - mean (mean after the update), as in Maddox et al.'s collect_model."""

    def __init__(self, dim, device):
        self.n = 0
        self.mean = torch.zeros(dim, device=device)
        self.sq_mean = torch.zeros(dim, device=device)
        self.devs = []

    def collect(self, theta):
        n = self.n
        self.mean = self.mean * n / (n + 1.0) + theta / (n + 1.0)
        self.sq_mean = self.sq_mean * n / (n + 1.0) + theta ** 2 / (n + 1.0)
        self.devs = (self.devs + [theta - self.mean])[-RANK:]
        self.n += 1

    def sample(self, diag_only, divisor):
        """theta = mean + sqrt(scale) * (sqrt(var) * z1 [+ D^T z2 / sqrt(divisor)])."""
        var = torch.clamp(self.sq_mean - self.mean ** 2, min=VAR_CLAMP)
        rand = var.sqrt() * torch.randn_like(var)
        if not diag_only:
            d = torch.stack(self.devs)  # [rows, dim]
            rand = rand + d.t() @ torch.randn(d.shape[0], device=d.device) / math.sqrt(divisor)
        return self.mean + math.sqrt(SCALE) * rand


# ----------------------------------------------------------------------------- metrics

def metrics(probs, labels):
    """Accuracy, NLL, top-label ECE and Brier as candle_swag::metrics::classification:
    probabilities as f32 (the Rust example's), sums in f64; 15 equal-width right-closed bins
    (e_i, e_{i+1}] with f32 edges i/15 (0 goes in the first bin); Brier = mean over rows of
    sum_k (p_k - onehot_k)^2; NLL = mean of -ln(max(p_y, 1e-12)); arg-max first on ties."""
    p = probs.astype(np.float32)
    n = len(labels)
    correct = p.argmax(axis=1) == labels
    p_y = p[np.arange(n), labels].astype(np.float64)
    nll = float(np.mean(-np.log(np.maximum(p_y, NLL_EPS))))
    brier = float(np.mean(((p.astype(np.float64) - np.eye(CLASSES)[labels]) ** 2).sum(axis=1)))
    conf = p.max(axis=1)
    upper = (np.arange(1, N_BINS + 1, dtype=np.float32) / np.float32(N_BINS))
    b = np.minimum(np.searchsorted(upper, conf, side="left"), N_BINS - 1)
    count = np.bincount(b, minlength=N_BINS)
    conf_sum = np.bincount(b, weights=conf.astype(np.float64), minlength=N_BINS)
    hit_sum = np.bincount(b, weights=correct.astype(np.float64), minlength=N_BINS)
    nz = count > 0
    ece = float(np.sum(count[nz] / n * np.abs(conf_sum[nz] / count[nz] - hit_sum[nz] / count[nz])))
    return dict(acc=float(correct.mean()), nll=nll, ece=ece, brier=brier)


# ----------------------------------------------------------------------------- one seed

def sync(device):
    """Waits for the GPU's queued work, so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CANDLE_NAMES = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight",
                "conv2.bias", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias"]


def run_seed(args, seed, x_train, y_train, x_test):
    device = x_train.device
    torch.manual_seed(seed)
    model = make_model().to(device)
    params = list(model.parameters())
    orders = []
    if args.dump_init:
        # The initial weights under examples/mnist_cnn.rs's names, for `mnist_cnn --init-from`.
        out = Path(args.dump_init)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / f"init_seed{seed}.npz",
                 **{k: p.detach().cpu().numpy() for k, p in zip(CANDLE_NAMES, params)})
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    swag = Swag(sum(p.numel() for p in params), device)
    t_train = t_collect = 0.0
    n = len(x_train)
    for epoch in range(args.epochs):
        t = time.perf_counter()
        model.train()
        order = torch.randperm(n).to(device)
        orders.append(order.cpu().numpy().astype(np.int64))
        loss_sum = 0.0
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            if args.trace and epoch == 0 and i < 3 * BATCH:
                norms = ", ".join(f"{k} {float(p.grad.double().norm()):.6f}"
                                  for k, p in sorted(zip(CANDLE_NAMES, params)))
                print(f"trace step {i // BATCH}: loss {loss.item():.6f}; gradient norms: {norms}")
            opt.step()
            if args.trace:
                loss_sum += loss.item() * len(idx)
        sync(device)
        t_train += time.perf_counter() - t
        if args.trace:
            norm = float(parameters_to_vector(params).detach().double().norm())
            print(f"trace seed {seed} epoch {epoch}: mean training loss {loss_sum / n:.6f}, "
                  f"parameter norm {norm:.6f}", flush=True)
        if epoch >= args.swag_start:
            t = time.perf_counter()
            swag.collect(parameters_to_vector(params).detach().clone())
            sync(device)
            t_collect += time.perf_counter() - t
    if args.dump_init:
        # The batch order of every epoch, [epochs, n] int64, for `mnist_cnn --init-from`.
        np.save(Path(args.dump_init) / f"order_seed{seed}.npy", np.stack(orders))
    if swag.n == 0:
        raise SystemExit("no SWAG collection: --swag-start must be < --epochs")
    divisor = RANK - 1 if args.divisor == "rank" else max(len(swag.devs) - 1, 1)

    t = time.perf_counter()
    probs = {"SGD": predict(model, x_test)}  # final weights, BN as left by training
    with torch.no_grad():
        vector_to_parameters(swag.mean.clone(), params)
        refresh_bn(model, x_train)
        probs["SWA"] = predict(model, x_test)
        for name, diag_only in (("SWAG-diag", True), ("SWAG", False)):
            total = torch.zeros(len(x_test), CLASSES, dtype=torch.float64, device=device)
            for _ in range(args.samples):
                vector_to_parameters(swag.sample(diag_only, divisor), params)
                refresh_bn(model, x_train)
                total += predict(model, x_test)
            probs[name] = total / args.samples
    sync(device)
    t_bma = time.perf_counter() - t
    timing = dict(train_s=t_train, collect_s=t_collect, bma_s=t_bma)
    return {k: v.cpu().numpy() for k, v in probs.items()}, timing


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--swag-start", type=int, default=15, help="first 0-based epoch collected")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--train-limit", type=int, default=0, help="first N training images (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--divisor", choices=("rank", "rows"), default="rank",
                    help="low-rank divisor: K-1 (Maddox et al.) or max(rows held - 1, 1) "
                         "(candle-swag's default)")
    ap.add_argument("--data", default="data", help="directory of the mnist5k-* IDX files")
    ap.add_argument("--test", action="append", default=[], metavar="FILE.csv",
                    help="one more test set (mnist_cnn's CSV format), named by the file's stem; "
                         "repeatable")
    ap.add_argument("--dump-init", metavar="DIR",
                    help="write DIR/init_seedS.npz (initial weights under mnist_cnn's names) and "
                         "DIR/order_seedS.npy (each epoch's batch order) for mnist_cnn --init-from")
    ap.add_argument("--trace", action="store_true",
                    help="print each epoch's mean training loss and parameter norm")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.optim.SGD([torch.zeros(1)], lr=0.1)  # one-off lazy imports (~1-2 s), kept out of timings

    d = Path(args.data)
    train_images = read_idx(d / "mnist5k-train-images-idx3-ubyte")
    train_labels = read_idx(d / "mnist5k-train-labels-idx1-ubyte")
    if args.train_limit > 0:
        train_images, train_labels = train_images[:args.train_limit], train_labels[:args.train_limit]
    test_images = read_idx(d / "mnist5k-test-images-idx3-ubyte")
    test_labels = read_idx(d / "mnist5k-test-labels-idx1-ubyte").astype(np.int64)
    sets = [("clean", test_images)] + [(f"rotated {a}°", rotate(test_images, a)) for a in ANGLES]
    for path in args.test:
        images, labels = read_image_csv(path)
        if not np.array_equal(labels, test_labels):
            raise SystemExit(f"{path}: its labels are not the MNIST-5k test labels in order")
        sets.append((Path(path).stem, images))
    x_train = to_tensor(train_images).to(device)
    y_train = torch.from_numpy(train_labels.astype(np.int64)).to(device)
    # One forward per sample.
    x_test = torch.cat([to_tensor(images) for _, images in sets]).to(device)
    if device.type == "cuda":  # CUDA context and kernels initialised outside the timings
        F.conv2d(x_test[:1], torch.zeros(1, 1, 3, 3, device=device)).sum().item()

    rows, timings = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t = time.perf_counter()
        probs, timing = run_seed(args, seed, x_train, y_train, x_test)
        for method, p in probs.items():
            for k, (name, _) in enumerate(sets):
                block = p[k * len(test_labels):(k + 1) * len(test_labels)]
                rows.append(dict(seed=seed, method=method, set=name, **metrics(block, test_labels)))
        timings.append(dict(seed=seed, **timing, total_s=time.perf_counter() - t))
        if args.json:
            for r in rows[-len(probs) * len(sets):] + [timings[-1]]:
                print(json.dumps(r, ensure_ascii=False), flush=True)

    if args.json:
        return
    print(f"mean ± std over {args.seeds} seed(s) (std: divisor n−1), torch {torch.__version__}, "
          f"{args.threads} thread(s), device {device}\n")
    print("| test set | method | accuracy | NLL | ECE | Brier |\n|---|---|---|---|---|---|")
    for name, _ in sets:
        for method in ("SGD", "SWA", "SWAG-diag", "SWAG"):
            sel = [r for r in rows if r["set"] == name and r["method"] == method]
            cols = []
            for key in ("acc", "nll", "ece", "brier"):
                v = np.array([r[key] for r in sel])
                sd = v.std(ddof=1) if len(v) > 1 else 0.0
                cols.append(f"{v.mean():.3f} ± {sd:.3f}")
            print(f"| {name} | {method} | " + " | ".join(cols) + " |")
    print("\nwall time per seed (s): training (SGD steps) | SWAG collection | "
          "BMA with BN refresh (4 methods) | total")
    for t in timings:
        print(f"seed {t['seed']}: {t['train_s']:.1f} | {t['collect_s']:.3f} | "
              f"{t['bma_s']:.1f} | {t['total_s']:.1f}")


if __name__ == "__main__":
    main()
