"""fl_lab.compare: the inference timer, the orderings' judgement, and the comparison end to end."""

from pathlib import Path

import pytest
import torch

from fl_lab.data import Shapes
from fl_lab.inference_timing import inference_ms_per_image, side_by_side_ms
from fl_lab.model import RetinaNet
from fl_lab.torchvision_detectors import ImagesOnly

torch.set_grad_enabled(True)
SIZE, K = 128, 3


@pytest.fixture(scope="module")
def data():
    return Shapes(8, image_size=SIZE, num_classes=K, seed=0)


class _Clocked(torch.nn.Module):
    """A fake detector whose n-th call takes ``durations[n]`` seconds on a fake clock."""

    def __init__(self, durations):
        super().__init__()
        self.durations, self.now, self.calls = list(durations), 0.0, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return ImagesOnly(images)

    def detect(self, output, image_sizes):
        assert not self.training  # timed in eval mode
        self.now += self.durations[self.calls]
        self.calls += 1
        return [{} for _ in image_sizes]


def test_inference_timer_excludes_warmup_and_takes_the_median():
    # two slow warm-up calls (10 s), then 0.2, 0.4, 0.3 s for a batch of 2 images
    model = _Clocked([10.0, 10.0, 0.2, 0.4, 0.3]).train()
    ms = inference_ms_per_image(model, torch.zeros(2, 3, 8, 8), repeats=3, warmup=2, clock=lambda: model.now)
    assert ms == pytest.approx(1e3 * 0.3 / 2)
    assert model.calls == 5 and model.training  # mode restored
    with pytest.raises(ValueError, match="repeats"):
        inference_ms_per_image(model, torch.zeros(1, 3, 8, 8), repeats=0)


def test_detectors_are_timed_in_turns_and_each_keeps_its_median_round():
    calls = []
    times = {"a": iter([5.0, 9.0, 6.0]), "b": iter([50.0, 40.0, 45.0])}  # ms of each model, round by round

    def timer(model, images, sizes):
        calls.append(model)
        return next(times[model])

    assert side_by_side_ms([("a", None, []), ("b", None, [])], rounds=3, timer=timer) == [6.0, 45.0]
    assert calls == ["a", "b", "b", "a", "a", "b"]  # in turns, every other round reversed
    with pytest.raises(ValueError, match="rounds"):
        side_by_side_ms([("a", None, [])], rounds=0, timer=timer)


def test_inference_timer_on_fl_lab_retinanet():
    model = RetinaNet(K, backbone="resnet18", fpn_channels=32, head_convs=1).train()
    detected = []
    real_detect = model.detect
    model.detect = lambda *a, **kw: detected.append(model.training) or real_detect(*a, **kw)
    ticks = iter(range(100))  # a clock that advances one second at each reading
    ms = inference_ms_per_image(model, torch.zeros(2, 3, SIZE, SIZE), repeats=3, warmup=1,
                                clock=lambda: float(next(ticks)))
    assert ms == 1e3 * 1.0 / 2  # each timed call spans one reading to the next; 2 images a batch
    assert detected == [False] * 4 and model.training  # 1 + 3 calls in eval mode, the mode restored


def test_orderings_are_judged_against_the_seeds_noise():
    import dataclasses

    from fl_lab.analysis import FAILS, HOLDS, NOT_TESTED, WITHIN_NOISE
    from fl_lab.compare import check_orderings
    from fl_lab.experiment import Arm, ArmResult, RunRecord

    def entry(name, aps, ms, detector=None):
        runs = [RunRecord({"seed": i, "image_size": 96}, {"AP": a, "AP50": a}, None, {}, 1.0, "")
                for i, a in enumerate(aps)]
        return ArmResult(Arm(name, detector=detector), runs, {"ms_per_image": ms})

    entries = [entry("RetinaNet (FL)", [0.30, 0.31, 0.32], 5.0), entry("RetinaNet (α-CE)", [0.20, 0.21, 0.19], 5.0),
               entry("Faster R-CNN", [0.25, 0.40, 0.31], 9.0),
               entry("SSDlite320-MobileNetV3", [0.40, 0.41, 0.42], 3.0, "ssdlite")]
    assert [c.verdict for c in check_orderings(entries)] == [HOLDS, WITHIN_NOISE, FAILS, HOLDS]
    names = ("RetinaNet (FL)", "RetinaNet (α-CE)", "Faster R-CNN", "SSD300-VGG16")
    kinds = (None, None, "faster_rcnn", "ssd300")
    ties = [entry(n, [0.3, 0.3, 0.3], 1.0, d) for n, d in zip(names, kinds, strict=True)]
    assert [c.verdict for c in check_orderings(ties)] == [WITHIN_NOISE] * 3 + [FAILS]  # a tie is no win
    silent = [dataclasses.replace(e, runs=[dataclasses.replace(r, metrics={"AP": 0.0, "AP50": 0.0}) for r in e.runs])
              for e in ties]
    assert [c.verdict for c in check_orderings(silent)][:3] == [NOT_TESTED] * 3  # nothing detected: nothing to rank


def test_the_curves_are_compared_size_by_size_seed_by_seed():
    from fl_lab.analysis import FAILS, HOLDS, WITHIN_NOISE
    from fl_lab.compare import scale_claims
    from fl_lab.experiment import Arm, ArmResult, RunRecord

    def entry(name, size, aps, ms, detector=None):
        runs = [RunRecord({"seed": 100 + i, "image_size": 128, "input_size": size}, {"AP": a}, None, {}, 1.0, "")
                for i, a in enumerate(aps)]
        return ArmResult(Arm(name, detector=detector), runs, {"ms_per_image": ms})

    # the base size first, as compare() makes them: check_orderings compares there
    fl = [entry("RetinaNet (FL)", 128, [0.6, 0.6, 0.6], 9.0), entry("RetinaNet (FL)", 96, [0.50, 0.52, 0.51], 5.0),
          entry("RetinaNet (FL)", 192, [0.70, 0.72, 0.71], 20.0)]
    frcnn = [entry("Faster R-CNN", 128, [0.5, 0.5, 0.5], 90.0, "faster_rcnn"),
             entry("Faster R-CNN", 96, [0.40, 0.43, 0.41], 40.0, "faster_rcnn"),
             entry("Faster R-CNN", 192, [0.70, 0.75, 0.69], 10.0, "faster_rcnn")]
    ssd = entry("SSDlite320-MobileNetV3", 128, [0.1, 0.1, 0.1], 3.0, "ssdlite")
    claims = scale_claims([*fl, frcnn[2], ssd, frcnn[0], frcnn[1]])  # any order but FL's first; the SSD is no curve
    assert [c.text for c in claims] == [
        "at 96 px, RetinaNet with FL beats Faster R-CNN", "at 96 px, RetinaNet is faster than Faster R-CNN",
        "at 192 px, RetinaNet with FL beats Faster R-CNN", "at 192 px, RetinaNet is faster than Faster R-CNN"]
    assert [c.verdict for c in claims] == [HOLDS, HOLDS, WITHIN_NOISE, FAILS]
    assert "paired over 3 seeds" in claims[0].detail and "5.0 vs 40.0 ms per image (8.0×)" in claims[1].detail
    assert scale_claims([fl[0], frcnn[0]]) == []  # one size: check_orderings' comparison
    assert scale_claims([fl[0], fl[1], frcnn[0]]) == []  # no Faster R-CNN at 96 px: nothing to compare there


def test_compare_trains_scores_times_and_writes_what_lesson_07_reads(tmp_path, monkeypatch, capsys, resnet18_file):
    """The command line end to end: every design over two seeds, fine-tuned like the lessons' regime from
    one weights file, scored, timed, judged, written; then read back."""
    import dataclasses
    import json

    from fl_lab import compare, confirm
    from fl_lab.experiment import weights_sha256
    from fl_lab.plots import figure2

    fast, full = compare.compare_base(gpu=False, fast=True), compare.compare_base(gpu=False, fast=False)
    assert fast.backbone_weights is None and full.backbone_weights == "shapes"  # tests never pretrain
    # the committed comparison's base is results/confirm's: RetinaNet (FL) at 128 px is its FL arm
    assert dataclasses.replace(full, out="x") == dataclasses.replace(confirm.lessons_base(), out="x")
    assert full.val_images == 500 and full.checkpoint_every == 0
    assert dataclasses.replace(full, steps=fast.steps, warmup=fast.warmup, batch_size=fast.batch_size,
                               train_images=fast.train_images, val_images=fast.val_images,
                               backbone_weights=None, log_every=fast.log_every) == fast
    tiny = dataclasses.replace(fast, steps=2, warmup=1, batch_size=2, train_images=4, val_images=2, image_size=64,
                               backbone_weights=str(resnet18_file))
    live = compare.compare_base(gpu=False, fast=False, live=True)
    assert dataclasses.replace(full, steps=100, warmup=10) == live  # lesson 07's run: a fifth of the schedule
    assert compare.compare_base(gpu=False, fast=True, live=True) == fast
    monkeypatch.setattr(compare, "compare_base", lambda gpu, fast: tiny)
    args = ["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--seeds", "0,1",
            "--sizes", "96"]
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    assert "4 detectors (RetinaNet and Faster R-CNN also at 96 px) × 2 seeds of 2 iterations on CPU" in printed
    assert "(n=2)" in printed
    saved = json.loads((tmp_path / "res" / "compare.json").read_text())
    assert saved["device"] == "CPU" and saved["seeds"] == [0, 1] and saved["base"]["steps"] == 2
    assert saved["base"]["device"] == "cpu" and saved["base"]["out"] == str(tmp_path / "runs")
    # Figure 2's curves: RetinaNet and Faster R-CNN on the same images, as made and resized to every scale
    assert [(e["name"], e["runs"][0]["config"]["image_size"], e["runs"][0]["config"]["input_size"])
            for e in saved["entries"]] == [("RetinaNet (FL)", 64, None), ("RetinaNet (FL)", 64, 96),
                                           ("RetinaNet (α-CE)", 64, None), ("Faster R-CNN", 64, None),
                                           ("Faster R-CNN", 64, 96), ("SSDlite320-MobileNetV3", 64, None)]
    entries = saved["entries"]
    assert [run["config"]["seed"] for run in entries[3]["runs"]] == [0, 1]
    assert entries[5]["group"] == compare.DETECTORS["ssdlite"] and entries[5]["detector"] == "ssdlite"  # the CPU's SSD
    # RetinaNet and Faster R-CNN fine-tune the same backbone; SSD trains its own from scratch
    assert [e["runs"][0]["config"]["backbone_weights"] for e in entries] == [str(resnet18_file)] * 5 + [None]
    # each record says what trained: torchvision's detectors with their own losses, whatever the config's loss_fn
    assert [(e["runs"][0]["model"], e["runs"][0]["loss"]) for e in entries] == [
        ("RetinaNet (resnet18)", "focal(gamma=2.0, alpha=0.25)"), ("RetinaNet (resnet18)",
                                                                     "focal(gamma=2.0, alpha=0.25)"),
        ("RetinaNet (resnet18)", "balanced_ce(alpha=0.5)"), ("faster_rcnn", "faster_rcnn's own"),
        ("faster_rcnn", "faster_rcnn's own"), ("ssdlite", "ssdlite's own")]
    digest = weights_sha256(resnet18_file)
    assert [e["runs"][0]["weights_sha256"] for e in entries] == [digest] * 5 + [None]
    outs = [run["out"] for e in entries for run in e["runs"]]
    assert len(set(outs)) == len(outs) and all(Path(o, "metrics.json").is_file() for o in outs)  # a folder each
    assert all(e["measured"]["ms_per_image"] > 0 for e in entries) and len(saved["claims"]) == 4 + 2
    loaded = compare.load_results(tmp_path / "res" / "compare.json")
    assert [compare.image_size(e) for e in loaded] == [64, 96, 64, 64, 96, 320]  # SSDlite at its native 320 px
    table = compare.format_table(loaded)
    assert table in printed and all(compare.PAPER[e.name] in table for e in loaded)
    judged = [*compare.check_orderings(loaded), *compare.scale_claims(loaded)]  # at 64 px; then at 96 px
    assert [(c.text, c.verdict) for c in judged] == [(c["text"], c["verdict"]) for c in saved["claims"]]
    assert "the two curves at their other sizes" in printed and "at 96 px, RetinaNet is faster" in printed
    assert (tmp_path / "res" / "compare.png").stat().st_size > 1000
    assert (tmp_path / "res" / "compare.txt").read_text().startswith("$ python -m fl_lab.compare --device cpu")
    fig = figure2(compare.figure2_points(loaded), compare.PAPER_SPEED, title="t")
    ours, paper = fig.axes
    assert ours.get_xlabel() and ours.get_ylabel() and ours.get_legend() is not None
    assert paper.get_legend() is not None and len(paper.lines) == 2  # the paper's R50 and R101 curves
    assert len(ours.containers) == 4  # one error-bar line per design; each detector's two sizes joined
    curves = {c.get_label(): len(c.lines[0].get_xdata()) for c in ours.containers}  # points on each detector's line
    assert curves == {"RetinaNet (FL)": 2, "RetinaNet (α-CE)": 1, "Faster R-CNN": 2, "SSDlite320-MobileNetV3": 1}
    # the first seed's model was timed when trained, then again side by side with the others; that time is kept
    timings = [json.loads(Path(e["runs"][0]["out"], compare.TIMING).read_text()) for e in entries]
    assert [t["ms_per_image"] for t in timings] == [e["measured"]["ms_per_image"] for e in entries]
    assert all(t["side_by_side"] and e["measured"]["side_by_side"] for t, e in zip(timings, entries, strict=True))
    assert "all timed side by side in turns" in printed
    assert not any(Path(run["out"], compare.TIMING).exists() for e in entries for run in e["runs"][1:])
    # a second call without the weights (a study continued elsewhere from its records) reads runs and times back
    for weights in (tmp_path / "runs").rglob("*.pt"):
        weights.unlink()
    again = compare.compare(tiny, tmp_path / "runs", sizes=(96,), seeds=(0, 1), timing_batch=2,
                            progress=False, device="cpu")
    assert [r.seconds for e in again for r in e.runs] == [r["seconds"] for e in entries for r in e["runs"]]
    assert [e.measured["ms_per_image"] for e in again] == [e["measured"]["ms_per_image"] for e in entries]
    assert not any(e.measured["side_by_side"] for e in again)  # kept from before, not timed in this sitting
    # a time measured on another run of the folder (one trained again since: another run.json) is not reused
    record = Path(entries[0]["runs"][0]["out"], compare.RECORD)
    made = record.read_text()
    record.write_text(made.replace('"seconds": ', '"seconds": 1'))
    with pytest.raises(FileNotFoundError, match="holds neither a timing.json of its run nor the weights"):
        compare.compare(tiny, tmp_path / "runs", sizes=(96,), seeds=(0, 1), progress=False, device="cpu")
    record.write_text(made)
    Path(entries[0]["runs"][0]["out"], compare.TIMING).unlink()
    with pytest.raises(FileNotFoundError, match="holds neither a timing.json of its run nor the weights"):
        compare.compare(tiny, tmp_path / "runs", sizes=(96,), seeds=(0, 1), progress=False, device="cpu")
    with pytest.raises(FileNotFoundError, match="python -m fl_lab.compare --results"):
        compare.load_results(tmp_path / "nothing.json")


@pytest.mark.parametrize("args, says", [(["--seeds", "0,one"], "--seeds: expected comma-separated integers"),
                                         (["--sizes", "96px"], "--sizes: expected comma-separated pixel sizes"),
                                         (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
                                         (["--ssd", "yolo"], "argument --ssd: invalid choice: 'yolo'")])
def test_command_line_says_what_is_wrong(args, says, capsys):
    from fl_lab import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err and "Traceback" not in err


def test_command_line_turns_a_user_error_into_one_line(tmp_path, capsys):
    from fl_lab import compare

    (tmp_path / "file").write_text("")
    for args, says in [(["--seeds", "0,0", "--out", str(tmp_path / "runs")], "seeds must be distinct"),
                       (["--out", str(tmp_path / "file" / "runs")], "Not a directory")]:  # --out under a file
        with pytest.raises(SystemExit) as exit_info:
            compare.main(["--fast", "--device", "cpu", *args])
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert exit_info.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("python -m fl_lab.compare: error:") and says in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_command_line_refuses_cuda_without_a_gpu(capsys):
    from fl_lab import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--device", "cuda"])
    assert exit_info.value.code == 2 and "--device cuda: no CUDA device here" in capsys.readouterr().err


def test_the_committed_comparison_names_its_ssd_for_what_it_is():
    """Records made when the SSD arm was called "SSD" read back under its own name, at the 320 px it ran at."""
    import dataclasses
    import json

    from fl_lab import compare

    path = Path(__file__).parents[1] / "results" / "compare_cpu" / "compare.json"
    entries = compare.load_results(path)
    ssd = [e for e in entries if e.arm.detector == "ssdlite"]
    assert [(e.name, compare.image_size(e)) for e in ssd] == [("SSDlite320-MobileNetV3", 320)]
    assert "the paper's SSD513" in compare.format_table(entries) and "SSD" not in [e.name for e in entries]
    # judged as when they were made: the SSD is found by what it is, not by its name
    assert [dataclasses.asdict(c) for c in compare.check_orderings(entries)] == json.loads(path.read_text())["claims"]
