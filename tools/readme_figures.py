"""Draw the README's pictures into assets/ from the kit's own code, so they stay current.

    python tools/readme_figures.py                 # trains a cpu-pretrained model first if runs/lesson04 has none
    python tools/readme_figures.py --run runs/X    # use another trained run folder

Writes assets/readme_figure1.png (the paper's Figure 1), assets/readme_anchors.png (the
P3–P7 anchors on the sample photograph), assets/readme_detections.png (a trained model's
detections on validation images) and assets/readme_loss_cdf.png (Figure 4 from that model).
The last two come from the ``cpu-pretrained`` preset (the lessons' regime) unless ``--run`` names another model.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.cbook
import matplotlib.image

from fl_lab import plots
from fl_lab.analysis import loss_cdf
from fl_lab.anchors import AnchorGenerator
from fl_lab.evaluate import predict
from fl_lab.train import PRESETS, Config, datasets, load_run, run

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "lesson04", help="a trained run folder")
    parser.add_argument("--dpi", type=int, default=65, help="resolution (kept low: the files are committed)")
    args = parser.parse_args(argv)

    def save(figure, name: str) -> None:
        figure.savefig(ASSETS / name, dpi=args.dpi, bbox_inches="tight")
        print(f"wrote {ASSETS / name}")

    save(plots.figure1(), "readme_figure1.png")
    image = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    save(plots.pyramid_figure(image, AnchorGenerator(), locations_per_level=3), "readme_anchors.png")

    if not (args.run / "last.pt").is_file():
        print(f"no trained model in {args.run}: training the cpu-pretrained preset (a few minutes on a CPU)")
        run(Config(**{**PRESETS["cpu-pretrained"], "out": str(args.run), "evaluate": False}))
    model, config = load_run(args.run)
    _, val_set = datasets(config)
    examples = [val_set[i] for i in range(8)]
    detections = predict(model, examples, batch_size=8, progress=False)
    save(plots.detections_figure([im for im, _ in examples], detections, val_set.class_names, score_thresh=0.3,
                                 targets=[t for _, t in examples],
                                 title=f"RetinaNet ({config.backbone}, {config.steps} iterations) "
                                       "on validation images"),
         "readme_detections.png")
    _, fresh = datasets(dataclasses.replace(config, val_images=200, seed=config.seed + 1))
    result = loss_cdf(model, fresh, gammas=(0, 0.5, 1, 2), max_negatives=1_000_000, batch_size=8, progress=False)
    save(plots.cdf_figure(result, title=f"Loss CDF (paper Figure 4) — {config.backbone} on {config.dataset}"),
         "readme_loss_cdf.png")


if __name__ == "__main__":
    main()
