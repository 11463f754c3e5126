"""Training RetinaNet: one readable loop and its command line (paper §4.1 "Optimization").

SGD with momentum 0.9 and weight decay 1e-4; a linear warm-up; the learning rate divided
by 10 at 2/3 and 8/9 of the run (the paper's 60k and 80k of 90k iterations); horizontal
flips the only augmentation.

    python -m fl_lab.train --preset cpu-pretrained      # Shapes, ResNet-18 pretrained on Shapes, minutes on a CPU
    python -m fl_lab.train --preset cpu-fast            # the same from scratch
    python -m fl_lab.train --preset gpu                 # Shapes at 512 px, ResNet-50 fine-tuned, bf16
    python -m fl_lab.train --preset coco --data-root data/coco --backbone-weights r50.pth
    python -m fl_lab.train --resume runs/cpu-fast       # continue exactly where it stopped
    torchrun --nproc_per_node=8 -m fl_lab.train --preset coco ...   # DistributedDataParallel

A run folder holds ``config.json``, ``log.jsonl`` (one JSON object per logged step),
``last.pt`` (the latest checkpoint, replaced atomically) and ``metrics.json`` (the final AP).
"""

from __future__ import annotations

from .cli import config_from_args, main  # noqa: E402  (the command line uses the package's docstring)
from .config import PRESETS, Config, lesson_config
from .loop import Diverged, TrainSettings, load_checkpoint, lr_multiplier, read_log, sgd, train, train_step
from .runner import backbone_weights_file, build_model, datasets, load_run, read_config, run

__all__ = ["PRESETS", "Config", "Diverged", "TrainSettings", "backbone_weights_file", "build_model", "config_from_args",
           "datasets", "lesson_config", "load_checkpoint", "load_run", "lr_multiplier", "main", "read_config",
           "read_log", "run", "sgd", "train", "train_step"]
