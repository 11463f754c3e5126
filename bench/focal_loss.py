"""Focal loss forward + backward: fl_lab against ``torchvision.ops.sigmoid_focal_loss``.

Both compute Σ FL (γ 2, α 0.25) of fp32 logits (N, K) and its gradient:

- fl_lab takes the training loop's form, index targets (N,) with -1 background and -2
  ignore, through its default fused path (value and closed-form gradient in one pass);
- torchvision needs a dense one-hot (N, K) and the ignored rows removed; building them is
  part of what a user of it must do, so it is timed too (the ``tv + one-hot`` column), next
  to the loss call alone on a prebuilt one-hot (``tv``).

It also times fl_lab's readable reference path (``fused=False``), reports the achieved
bandwidth against a plain copy of the logits' bytes (the floor: read the logits, write the
gradient), and the peak extra memory of each (allocations during the call, the gradient
included).

    python bench/focal_loss.py [--device auto|cpu|cuda] [--repeats 7] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
from torchvision.ops import sigmoid_focal_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    bench_parser,
    copy_floor_ms,
    device_from,
    format_table,
    machine,
    peak_memory_mib,
    ratio,
    write_json,
)

from fl_lab.loss import BACKGROUND, IGNORE, focal_loss
from fl_lab.torch_utils import median_ms

SIZES = [(100_000, 80), (200_000, 80)]
QUICK_SIZES = [(2_000, 80)]


def make_inputs(n: int, k: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, k) like a detector's after the prior init (mostly easy negatives), and index targets (n,):
    1% foreground, 5% ignored, the rest background."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2 - 4.6  # σ(-4.6) ≈ 0.01: the prior (§3.3)
    target = torch.full((n,), BACKGROUND, dtype=torch.long)
    order = torch.randperm(n, generator=g)
    fg = order[: n // 100]
    target[fg] = torch.randint(0, k, (len(fg),), generator=g)
    target[order[n // 100 : n // 100 + n // 20]] = IGNORE
    return logits.to(device), target.to(device)


def one_hot_valid(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What torchvision's loss needs: the non-ignored rows of the logits and their dense 0/1 targets."""
    keep = target != IGNORE
    t = target[keep]
    dense = torch.zeros(len(t), logits.shape[1], dtype=logits.dtype, device=logits.device)
    fg = t >= 0
    dense[torch.nonzero(fg).squeeze(1), t[fg]] = 1.0
    return keep, dense


def _step(fn, logits: torch.Tensor) -> None:
    x = logits.detach().requires_grad_()
    fn(x).backward()


def main(argv: Optional[list[str]] = None) -> dict:
    args = bench_parser("focal_loss", __doc__, "one tiny size (for tests)").parse_args(argv)
    device = device_from(args.device)

    rows, table_rows = [], []
    for n, k in QUICK_SIZES if args.quick else SIZES:
        logits, target = make_inputs(n, k, device)
        keep, dense = one_hot_valid(logits, target)
        # The same number from both before anything is timed.
        ours, theirs = focal_loss(logits, target), sigmoid_focal_loss(logits[keep], dense, 0.25, 2.0, "sum")
        if not torch.allclose(ours, theirs, rtol=1e-4):
            raise RuntimeError(f"fl_lab and torchvision disagree on ({n}, {k}): {ours.item()} vs {theirs.item()}")

        cases = {  # (defaults bind this size's tensors)
            "fl_lab": lambda x, t=target: focal_loss(x, t),
            "fl_lab reference": lambda x, t=target: focal_loss(x, t, fused=False),
            "tv": lambda x, k=keep, d=dense: sigmoid_focal_loss(x[k], d, 0.25, 2.0, "sum"),
            "tv + one-hot": lambda x, k=keep, t=target: sigmoid_focal_loss(x[k], one_hot_valid(x, t)[1], 0.25, 2.0,
                                                                           "sum"),
        }
        ms = {name: median_ms(lambda f=f, x=logits: _step(f, x), device, repeats=args.repeats)
              for name, f in cases.items()}
        mem = {name: peak_memory_mib(lambda f=f, x=logits: _step(f, x), device) for name, f in cases.items()}
        moved = 2 * logits.numel() * logits.element_size()  # read the logits once, write the gradient once
        floor = copy_floor_ms(moved // 2, device)  # a copy of the logits reads and writes exactly these bytes
        row = {
            "shape": [n, k],
            "ms": ms,
            "peak_mib": mem,
            "copy_ms": floor,
            "fl_lab_GBps": moved / ms["fl_lab"] / 1e6,
            "copy_GBps": moved / floor / 1e6,
            "speedup_vs_tv": ratio(ms["fl_lab"], ms["tv"]),
            "memory_vs_tv": mem["fl_lab"] / mem["tv"] if mem["tv"] else None,
        }
        rows.append(row)
        table_rows.append([f"({n:,}, {k})", ms["fl_lab"], ms["fl_lab reference"], ms["tv"], ms["tv + one-hot"],
                           row["speedup_vs_tv"], floor, row["fl_lab_GBps"], row["copy_GBps"], mem["fl_lab"], mem["tv"],
                           row["memory_vs_tv"]])

    headers = ["logits", "fl_lab ms", "fl ref ms", "tv ms", "tv+1hot ms", "tv / fl", "copy ms", "fl GB/s", "copy GB/s",
               "fl MiB", "tv MiB", "fl/tv mem"]
    table = format_table(headers, table_rows)
    print(f"focal loss forward + backward, fp32, Σ FL (γ 2, α 0.25) — {machine(device)}\n{table}")
    payload = {"benchmark": "focal_loss", "device": device.type, "rows": rows, "table": table}
    print(f"wrote {write_json('focal_loss', device, payload, results=args.results)}")
    return payload


if __name__ == "__main__":
    main()
