#!/usr/bin/env python3
"""One LoRA training step and one forward pass in torch + peft: the reference of
`lora_swag --arch bert --model-dir DIR --bench-step` (issue 29, item 4).

The same step as the candle example, on the same checkpoint (all-MiniLM-L6-v2 unpacked by
scripts/fetch_minilm.sh): a BERT encoder with LoRA r = 8 (alpha 16, no dropout) on the
attention's query and value, the checkpoint's pooling (mean for MiniLM: 1_Pooling/config.json),
a new linear head of 2 classes, cross-entropy, AdamW (lr 1e-4, weight decay 0.01); batch 32 x
128 tokens, every token real, the ids the example builds. Dropout as in the checkpoint's config,
in training only. Timed as the example does: one untimed call, then the median (and minimum) of
--repeats calls; the forward pass in eval mode without autograd.

Offline (HF_HUB_OFFLINE=1): nothing is downloaded. Threads: torch.set_num_threads(--threads,
default $RAYON_NUM_THREADS or 2), so that both sides use as many.

Setup (a venv under target/, never committed; torch from plain PyPI):
    python3 -m venv target/torch-venv
    target/torch-venv/bin/pip install torch transformers peft
    RAYON_NUM_THREADS=2 HF_HUB_OFFLINE=1 target/torch-venv/bin/python \
        scripts/torch_reference/lora_step_torch.py --model-dir target/minilm [--json]
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def bench_ids(n, length, vocab):
    """The example's ids: [CLS] ... [SEP] around deterministic word pieces."""
    rows = []
    for i in range(n):
        row = []
        for j in range(length):
            if j == 0:
                t = 101
            elif j == length - 1:
                t = 102
            else:
                t = 1000 + (i * 7919 + j * 31) % 20000
            row.append(t % vocab)
        rows.append(row)
    return rows


def median_ms(repeats, f):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", "2")))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.repeats < 1 or args.threads < 1:
        fail("--repeats and --threads must be >= 1")

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg_path = os.path.join(args.model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        fail(f"{cfg_path}: no such file (run scripts/fetch_minilm.sh)")
    config = BertConfig.from_pretrained(args.model_dir)
    bert = BertModel.from_pretrained(args.model_dir, config=config, add_pooling_layer=False)
    pooling = "cls"
    pool_cfg = os.path.join(args.model_dir, "1_Pooling", "config.json")
    if os.path.isfile(pool_cfg):
        with open(pool_cfg) as f:
            if json.load(f).get("pooling_mode_mean_tokens"):
                pooling = "mean"
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"], bias="none")
    bert = get_peft_model(bert, lora)
    head = torch.nn.Linear(config.hidden_size, 2)
    length = min(args.tokens, config.max_position_embeddings)
    ids = torch.tensor(bench_ids(args.batch, length, config.vocab_size), dtype=torch.long)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    y = torch.tensor([i % 2 for i in range(args.batch)], dtype=torch.long)
    trainable = [p for p in bert.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    dropout = torch.nn.Dropout(config.hidden_dropout_prob)

    def logits(train):
        h = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        if pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1)
        else:
            pooled = h[:, 0]
        return head(dropout(pooled) if train else pooled)

    def step():
        bert.train()
        head.train()
        loss = torch.nn.functional.cross_entropy(logits(True), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward():
        bert.eval()
        head.eval()
        with torch.no_grad():
            logits(False)

    step_ms, step_min = median_ms(args.repeats, step)
    fwd_ms, fwd_min = median_ms(args.repeats, forward)
    n_trainable = sum(p.numel() for p in trainable)
    print(
        f"torch {torch.__version__} + peft: {args.model_dir}, batch {args.batch} x {length} tokens, "
        f"LoRA r 8 on query and value ({n_trainable} trainable scalars, head included), AdamW; "
        f"{torch.get_num_threads()} threads; pooling {pooling}",
        file=sys.stderr,
    )
    print(
        f"torch: training step median {step_ms:.1f} ms (min {step_min:.1f}) over {args.repeats} repeats; "
        f"forward (eval) median {fwd_ms:.1f} ms (min {fwd_min:.1f})",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps({"impl": "torch", "version": torch.__version__, "model": args.model_dir,
                          "batch": args.batch, "tokens": length, "rank": 8,
                          "threads": torch.get_num_threads(), "repeats": args.repeats,
                          "step_ms_median": step_ms, "step_ms_min": step_min,
                          "forward_ms_median": fwd_ms, "forward_ms_min": fwd_min,
                          "trainable": n_trainable}))


if __name__ == "__main__":
    main()
