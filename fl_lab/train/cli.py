"""The command line ``python -m fl_lab.train``: presets, every :class:`Config` field as an option, resume."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from . import __doc__ as _DESCRIPTION
from .config import PRESETS, Config
from .loop import Diverged
from .runner import run

__all__ = ["config_from_args", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.train", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration: "
                        + "; ".join(f"{k}: {v.get('dataset', 'shapes')} at {v['image_size']} px, {v['backbone']}, "
                                    f"{v['steps']} steps" for k, v in PRESETS.items()))
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last.pt "
                        "(its saved configuration is used; only --stop-after may change)")
    for f in dataclasses.fields(Config):  # absent options stay out of the namespace (SUPPRESS): "none" is a value
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f.metadata["help"])
        else:
            parser.add_argument(name, type=_parse_value(f), default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def _parse_value(f: dataclasses.Field):
    kind = {"int": int, "float": float, "str": str}[f.type.replace("Optional[", "").rstrip("]")]
    return (lambda s: None if s.lower() == "none" else kind(s)) if f.type.startswith("Optional") else kind


def config_from_args(argv: Optional[list[str]] = None) -> tuple[Config, bool]:
    """(Config, resume?) from command-line arguments: preset, then explicit options."""
    args = _parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "resume")}
    if args.resume:
        saved = json.loads((Path(args.resume) / "config.json").read_text())
        unexpected = set(given) - {"stop_after"}
        if unexpected:
            raise SystemExit(f"--resume uses the run's saved configuration; do not pass {sorted(unexpected)}")
        saved["stop_after"] = given.get("stop_after")
        return Config(**{**saved, "out": args.resume}), True
    config = Config(**{**PRESETS.get(args.preset, {}), **given})
    if args.preset in ("gpu", "coco") and config.device == "auto" and not torch.cuda.is_available():
        # Say so before the first iteration: the run would otherwise just look frozen.
        print(f"note: the {args.preset} preset is sized for a GPU and this machine has none, so it trains on the CPU: "
              f"{config.steps} iterations of {config.batch_size} images at {config.image_size} px take hours (the gpu "
              "preset: about 15 s an iteration, 12 h, on two CPU cores). --preset cpu-fast trains in minutes on a "
              "CPU; --stop-after N stops early with a checkpoint.", file=sys.stderr)
    return config, False


def main(argv: Optional[list[str]] = None) -> int:
    config, resume = config_from_args(argv)
    try:
        result = run(config, resume=resume)
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result["metrics"] is not None:
        print("  ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
    return 0
