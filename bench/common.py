"""What every benchmark in bench/ shares: timing, peak memory, the copy floor, tables, JSON.

Timings are the median of repeated runs after warm-up; on a GPU each run is bracketed by
synchronisation, so the time is the device's, not the launch's. Benchmarks print ratios;
nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from fl_lab.torch_utils import median_ms, resolve_device, sync

RESULTS = Path(__file__).resolve().parent / "results"


def device_from(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; one a machine lacks ends the benchmark with the reason."""
    try:
        return resolve_device(name)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bench_parser(script: str, doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: --device, --quick, --repeats, --results."""
    parser = argparse.ArgumentParser(prog=f"python bench/{script}.py", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=_positive_int, default=7, help="timed runs of each (default 7)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"folder for {script}_<device>.json")
    return parser


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated *during* ``fn()`` above what was allocated before it, in MiB.

    CUDA: the caching allocator's peak statistic. CPU: the profiler's record of every
    allocation and free (``profile_memory=True``), whose running total is exact for tensors.
    """
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    # Each "[memory]" event carries the bytes (de)allocated and the running total since the start.
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0) / 2**20


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def copy_floor_ms(nbytes: int, device: torch.device, repeats: int = 9) -> float:
    """Time of a plain tensor copy of ``nbytes`` (read + write) on ``device``: the bandwidth floor."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src), device, repeats=repeats)


def machine(device: torch.device) -> str:
    """One line naming the hardware the numbers came from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, numbers right-aligned, 2–3 significant places."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return "—" if v is None else str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([line([str(h) for h in headers]), "-" * (sum(widths) + 2 * (len(widths) - 1)),
                      *(line(r) for r in cells)])


def ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    """theirs / ours for times (> 1: fl_lab faster), None when either is missing or zero."""
    return theirs / ours if ours and theirs else None


def write_json(name: str, device: torch.device, payload: dict, results: Path = RESULTS) -> Path:
    """Write ``payload`` (plus the machine line) to ``results/<name>_<cpu|cuda>.json``."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}_{device.type}.json"
    payload = {"machine": machine(device), "date": time.strftime("%Y-%m-%d"), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path
