"""The command line ``python -m fl_lab.train``: presets, every :class:`Config` field as an option, resume."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional

import torch

from . import __doc__ as _DESCRIPTION
from .config import PRESETS, Config
from .loop import Diverged
from .runner import read_config, run

__all__ = ["config_from_args", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.train", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration: "
                        + "; ".join(f"{k}: {v.get('dataset', 'shapes')} at {v['image_size']} px, {v['backbone']}, "
                                    f"{v['steps']} steps" for k, v in PRESETS.items()))
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last.pt "
                        "(its saved configuration is used; only --stop-after may change)")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    for f in dataclasses.fields(Config):  # absent options stay out of the namespace (SUPPRESS): "none" is a value
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f.metadata["help"])
        else:
            parser.add_argument(name, type=_parse_value(f), default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"),
                                help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def _parse_value(f: dataclasses.Field):
    kind = {"int": int, "float": float, "str": str}[f.type.replace("Optional[", "").rstrip("]")]
    return (lambda s: None if s.lower() == "none" else kind(s)) if f.type.startswith("Optional") else kind


def _resumed(folder: str, given: dict) -> Config:
    """The configuration a run folder saved, with only ``--stop-after`` changed; ``ValueError`` names
    the file and the remedy when the folder or its config.json cannot be used."""
    out = Path(folder)
    fresh = f"start a fresh run with --out {folder}"
    if not out.is_dir():
        raise ValueError(f"--resume {folder}: no such run folder; {fresh}")
    path = out / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: {folder} is not a run of fl_lab.train; {fresh}")
    unexpected = set(given) - {"stop_after"}
    if unexpected:
        options = ", ".join("--" + k.replace("_", "-") for k in sorted(unexpected))
        raise ValueError(f"--resume continues with the run's saved configuration: drop {options} (only --stop-after "
                         f"may change), or {fresh.replace(folder, 'another folder')}")
    try:
        saved = read_config(out)
    except ValueError as err:
        raise ValueError(f"{err}: restore the file, or {fresh}") from None
    if not (out / "last.pt").is_file():
        raise ValueError(f"{out / 'last.pt'} not found: the run saved no checkpoint yet; {fresh}")
    return dataclasses.replace(saved, stop_after=given.get("stop_after"), out=folder)


def config_from_args(argv: Optional[list[str]] = None) -> tuple[Config, bool]:
    """(Config, resume?) from command-line arguments: preset, then explicit options, checked.

    A bad value or an unusable ``--resume`` folder raises ``ValueError`` naming the option or file.
    """
    args = _parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "resume", "debug")}
    if args.resume:
        return _resumed(args.resume, given).check(), True
    config = Config(**{**PRESETS.get(args.preset, {}), **given}).check()
    if args.preset in ("gpu", "coco") and config.device == "auto" and not torch.cuda.is_available():
        # Say so before the first iteration: the run would otherwise just look frozen.
        print(f"note: the {args.preset} preset is sized for a GPU and this machine has none, so it trains on the CPU: "
              f"{config.steps} iterations of {config.batch_size} images at {config.image_size} px take hours, after "
              f"pretraining its {config.backbone} on Shapes crops if no weights are cached. --preset cpu-pretrained "
              "trains in minutes on a CPU; --stop-after N stops early with a checkpoint.", file=sys.stderr)
    return config, False


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m fl_lab.train``. A user error — a bad value, a missing or damaged file — ends with one
    ``error:`` line and exit status 2, a diverged run with exit status 1; ``--debug`` shows tracebacks."""
    parser = _parser()
    debug = parser.parse_args(argv).debug  # argparse's own errors (unknown option, bad number) exit here
    try:
        config, resume = config_from_args(argv)
        result = run(config, resume=resume)
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        if debug:
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if result["metrics"] is not None:
        print("  ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
    return 0
