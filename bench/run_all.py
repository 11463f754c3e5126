"""Run every speed benchmark of bench/ on one device and collect their tables.

    python bench/run_all.py [--device auto|cpu|cuda] [--quick] [--make-test]

In order: the focal loss, target assignment, the training step, inference, and (on a CPU)
the notebook suite. Each script writes its JSON under ``bench/results/``; this one also
writes ``bench/results/run_all_<cpu|cuda>.md``, all tables with the machine they came from
(what bench/README.md quotes). The models train one benchmark at a time in this process,
so run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_from, machine

BENCHMARKS = ["focal_loss", "assign", "train_step", "inference"]


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--repeats", type=int, default=None, help="passed to each benchmark")
    parser.add_argument("--make-test", action="store_true", help="also time `make test` (CPU, minutes)")
    parser.add_argument("--no-notebooks", action="store_true", help="skip the notebook suite")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = device_from(args.device)

    common = ["--device", device.type, "--results", str(args.results)]
    common += ["--quick"] if args.quick else []
    common += ["--repeats", str(args.repeats)] if args.repeats else []
    sections, payloads = [], {}
    for name in BENCHMARKS:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        payloads[name] = importlib.import_module(name).main(common)
        sections.append((name, payloads[name]["table"], time.perf_counter() - start))
    # Notebooks need Jupyter (absent on the GPU machine) and run on the CPU in fast mode.
    if device.type == "cpu" and not args.no_notebooks and not args.quick:
        print("\n=== notebooks", flush=True)
        start = time.perf_counter()
        payloads["notebooks"] = importlib.import_module("notebooks").main(
            ["--results", str(args.results)] + (["--make-test"] if args.make_test else []))
        sections.append(("notebooks", payloads["notebooks"]["table"], time.perf_counter() - start))

    lines = [f"Machine: {machine(device)}. Date: {time.strftime('%Y-%m-%d')}. "
             f"Command: `python bench/run_all.py {' '.join(argv if argv is not None else sys.argv[1:])}`."]
    for name, table, seconds in sections:
        lines += ["", f"### {name} ({seconds:.0f} s)", "", "```", table, "```"]
    report = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"run_all_{device.type}.md"
    out.write_text(report)
    print(f"\n{report}\nwrote {out}")
    return payloads


if __name__ == "__main__":
    main()
