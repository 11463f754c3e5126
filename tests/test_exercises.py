"""The exercise checks: every solution passes, every known mistake gets its own message."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision

from fl_lab import exercises as ex
from fl_lab.exercises import solutions
from fl_lab.loss import balanced_cross_entropy

CHECKS = {
    "focal_loss": ex.check_focal_loss,
    "p_t_alpha_t": ex.check_p_t_alpha_t,
    "anchors_at": ex.check_anchors_at,
    "match": ex.check_match,
    "prior_bias": ex.check_prior_bias,
    "normalised_loss": ex.check_normalised_loss,
    "loss_cdf": ex.check_loss_cdf,
    "ohem_select": ex.check_ohem_select,
    "nms": ex.check_nms,
}


def assert_caught(feedback: ex.Feedback, keyword: str) -> None:
    assert not feedback.passed
    assert keyword in feedback.message, feedback.message


@pytest.mark.parametrize("name", CHECKS)
def test_the_solution_passes(name):
    feedback = CHECKS[name](getattr(solutions, name))
    assert feedback.passed, feedback.message
    assert feedback.message.startswith("Correct")


@pytest.mark.parametrize("name", CHECKS)
def test_a_stub_is_not_written_yet(name):
    def stub(*args):
        raise NotImplementedError  # your code here

    assert_caught(CHECKS[name](stub), "Not written yet")


@pytest.mark.parametrize("name", CHECKS)
def test_another_exception_is_named(name):
    def buggy(*args):
        return {}["oops"]

    assert_caught(CHECKS[name](buggy), "raised KeyError")


def test_a_result_instead_of_a_function():
    assert_caught(ex.check_focal_loss(torch.tensor(1.0)), "Pass your function itself")


def test_feedback_reads_well():
    good, bad = ex.Feedback(True, "Correct."), ex.Feedback(False, "Not yet.")
    assert str(good) == repr(good) == "✓ Correct." and str(bad) == "✗ Not yet."
    assert bad._repr_markdown_() == "**✗** Not yet."


# Lesson 1: focal loss -------------------------------------------------------------------
def log_p_t(x, t):
    return torch.where(t == 1, F.logsigmoid(x), F.logsigmoid(-x))


def alpha_t(t, alpha):
    return torch.where(t == 1, alpha, 1 - alpha)


def fl_alpha_on_negatives(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-alpha_t(t, 1 - alpha) * (1 - lp.exp()) ** gamma * lp).sum()


def fl_no_alpha(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-((1 - lp.exp()) ** gamma) * lp).sum()


def fl_gamma_on_p_t(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-alpha_t(t, alpha) * lp.exp() ** gamma * lp).sum()


def fl_gamma_on_p(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-alpha_t(t, alpha) * (1 - torch.sigmoid(x)) ** gamma * lp).sum()


def fl_detached(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-alpha_t(t, alpha) * (1 - lp.exp()).detach() ** gamma * lp).sum()


def fl_mean(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (-alpha_t(t, alpha) * (1 - lp.exp()) ** gamma * lp).mean()


def fl_no_minus(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return (alpha_t(t, alpha) * (1 - lp.exp()) ** gamma * lp).sum()


def fl_log_of_sigmoid(x, t, gamma, alpha):
    p = torch.sigmoid(x)
    p_t = torch.where(t == 1, p, 1 - p)
    return (-alpha_t(t, alpha) * (1 - p_t) ** gamma * torch.log(p_t)).sum()


def fl_clamped(x, t, gamma, alpha):
    p = torch.sigmoid(x).clamp(1e-7, 1 - 1e-7)
    p_t = torch.where(t == 1, p, 1 - p)
    return (-alpha_t(t, alpha) * (1 - p_t) ** gamma * torch.log(p_t)).sum()


def fl_item(x, t, gamma, alpha):
    return solutions.focal_loss(x, t, gamma, alpha).item()


def fl_not_summed(x, t, gamma, alpha):
    lp = log_p_t(x, t)
    return -alpha_t(t, alpha) * (1 - lp.exp()) ** gamma * lp


def fl_new_graph(x, t, gamma, alpha):
    return torch.tensor(solutions.focal_loss(x, t, gamma, alpha).item(), requires_grad=True)


def fl_no_graph(x, t, gamma, alpha):
    with torch.no_grad():
        return solutions.focal_loss(x, t, gamma, alpha)


@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (fl_alpha_on_negatives, "weights the negatives by α"),
        (fl_no_alpha, "leaves out α_t"),
        (fl_gamma_on_p_t, "is p_t^γ"),
        (fl_gamma_on_p, "applies γ to 1 − p"),
        (fl_detached, "wrong gradient"),
        (fl_mean, "averaged"),
        (fl_no_minus, "is negative"),
        (fl_log_of_sigmoid, "NaN or inf at large ones"),
        (fl_clamped, "clamped"),
        (fl_item, "not a Python number"),
        (fl_not_summed, "with shape ()"),
        (fl_no_graph, "has no gradient"),
        (fl_new_graph, "not computed from the inputs"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_focal_loss_mistakes(wrong, keyword):
    assert_caught(ex.check_focal_loss(wrong), keyword)


def test_torchvision_focal_loss_passes():
    """Another correct formulation (probabilities in the factor, CE from logits) is accepted."""

    def from_torchvision(x, t, gamma, alpha):
        return torchvision.ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="sum")

    assert ex.check_focal_loss(from_torchvision).passed


def test_p_t_reference_agrees_with_the_kit():
    from fl_lab.exercises.loss import _reference_p_t_alpha_t

    x, t = torch.randn(8, 3), (torch.rand(8, 3) < 0.3).float()
    p_t, a_t = _reference_p_t_alpha_t(x, t, 0.25)
    ce = balanced_cross_entropy(x, t, alpha=0.25, reduction="none")
    torch.testing.assert_close(-a_t * torch.log(p_t), ce)
    torch.testing.assert_close(p_t, torch.where(t == 1, torch.sigmoid(x), torch.sigmoid(-x)))  # the definition


def test_independent_references_fail_a_wrong_solution():
    # p_t and α_t swapped between the classes, and a prior bias off by a little: both refused
    def swapped(x, t, alpha):
        p_t, a_t = solutions.p_t_alpha_t(x, t, alpha)
        return 1 - p_t, 1 - a_t

    assert not ex.check_p_t_alpha_t(swapped).passed
    assert not ex.check_prior_bias(lambda pi: solutions.prior_bias(pi) + 1e-3).passed
    assert ex.check_prior_bias(lambda pi: math.log(pi / (1 - pi))).passed  # another correct form


def p_t_variant(x, t, alpha, p_t_pos="p", alpha_pos="alpha", order="p first"):
    p, pos = torch.sigmoid(x), t == 1
    p_t = {"p": torch.where(pos, p, 1 - p), "1-p": torch.where(pos, 1 - p, p), "p everywhere": p}[p_t_pos]
    a_t = {"alpha": torch.where(pos, alpha, 1 - alpha), "1-alpha": torch.where(pos, 1 - alpha, alpha),
           "alpha everywhere": torch.full_like(p, alpha)}[alpha_pos]
    return (p_t, a_t) if order == "p first" else (a_t, p_t)


@pytest.mark.parametrize(
    "mistake, keyword",
    [
        (dict(p_t_pos="1-p", alpha_pos="1-alpha"), "Both are swapped"),
        (dict(p_t_pos="1-p"), "Your p_t is swapped"),
        (dict(alpha_pos="1-alpha"), "Your α_t is swapped"),
        (dict(p_t_pos="p everywhere"), "p_t equals p everywhere"),
        (dict(alpha_pos="alpha everywhere"), "α_t equals α everywhere"),
        (dict(order="alpha first"), "wrong order"),
    ],
    ids=str,
)
def test_p_t_alpha_t_mistakes(mistake, keyword):
    assert_caught(ex.check_p_t_alpha_t(partial(p_t_variant, **mistake)), keyword)


def test_p_t_alpha_t_must_return_a_pair():
    assert_caught(ex.check_p_t_alpha_t(lambda x, t, alpha: torch.sigmoid(x)), "Return a pair")


# Lesson 2: anchors and matching -----------------------------------------------------------
def anchors(x, y, stride, size, offset=0.0, scale_major=False, wh_swapped=False, corners=True, half=2,
            scales=(1, 2 ** (1 / 3), 2 ** (2 / 3)), swap_xy=False):
    """A learner's anchors, with one mistake switched on by a keyword."""
    col, row = (y, x) if swap_xy else (x, y)
    cx, cy = (col + offset) * stride, (row + offset) * stride
    pairs = [(r, s) for r in (0.5, 1.0, 2.0) for s in scales]
    if scale_major:
        pairs = [(r, s) for s in scales for r in (0.5, 1.0, 2.0)]
    boxes = []
    for r, s in pairs:
        w, h = size * s / math.sqrt(r), size * s * math.sqrt(r)
        if wh_swapped:
            w, h = h, w
        boxes.append([cx - w / half, cy - h / half, cx + w / half, cy + h / half] if corners else [cx, cy, w, h])
    return torch.tensor(boxes)


@pytest.mark.parametrize(
    "mistake, keyword",
    [
        (dict(offset=0.5), "half a stride off"),
        (dict(swap_xy=True), "mirrored cell"),
        (dict(corners=False), "not centre and size"),
        (dict(half=1), "twice too big"),
        (dict(scale_major=True), "nested the wrong way"),
        (dict(wh_swapped=True), "width and height are swapped"),
        (dict(scales=(2 ** (2 / 3), 2 ** (1 / 3), 1)), "Right boxes, wrong order"),
    ],
    ids=str,
)
def test_anchors_at_mistakes(mistake, keyword):
    assert_caught(ex.check_anchors_at(partial(anchors, **mistake)), keyword)


def test_anchors_at_shape():
    assert_caught(ex.check_anchors_at(lambda x, y, stride, size: anchors(x, y, stride, size)[:3]), "shape (9, 4)")


def matcher(iou, fg=lambda v: v >= 0.5, bg=lambda v: v < 0.4, background=-1, ignore=-2, last_on_ties=False):
    """A learner's matcher, with one mistake switched on by a keyword."""
    if last_on_ties:
        best, idx = iou.flip(0).max(dim=0)
        idx = iou.shape[0] - 1 - idx
    else:
        best, idx = iou.max(dim=0)
    out = torch.full_like(idx, ignore)
    out[fg(best)] = idx[fg(best)]
    out[bg(best)] = background
    return out


@pytest.mark.parametrize(
    "mistake, keyword",
    [
        (dict(bg=lambda v: v < 0.5), "no ignore band"),
        (dict(fg=lambda v: v > 0.5), "exactly 0.5 is foreground"),
        (dict(bg=lambda v: v <= 0.4), "exactly 0.4 is ignored"),
        (dict(background=-2, ignore=-1), "swapped"),
        (dict(last_on_ties=True), "first box"),
    ],
    ids=["no ignore band", "fg exclusive", "bg inclusive", "codes swapped", "last on ties"],
)
def test_match_mistakes(mistake, keyword):
    assert_caught(ex.check_match(partial(matcher, **mistake)), keyword)


def test_match_output_form():
    assert_caught(ex.check_match(lambda iou: iou.max(dim=1).indices), "one entry per anchor")
    assert_caught(ex.check_match(lambda iou: iou.max(dim=0).values), "integer dtype")


# Lesson 3: prior -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (lambda pi: math.log((1 - pi) / pi), "wrong sign"),
        (lambda pi: -math.log(pi / (1 - pi)), "wrong sign"),  # π and 1 − π swapped: the same number
        (lambda pi: math.log(pi), "log π is close"),
        (lambda pi: -math.log10((1 - pi) / pi), "natural logarithm"),
        (lambda pi: -(1 - pi) / pi, "Take the logarithm"),
        (lambda pi: torch.tensor([pi, pi]), "one number"),
        (lambda pi: None, "forget `return`"),
    ],
    ids=["sign", "swapped", "log pi", "log10", "no log", "tensor", "None"],
)
def test_prior_bias_mistakes(wrong, keyword):
    assert_caught(ex.check_prior_bias(wrong), keyword)


def test_prior_bias_may_return_a_tensor():
    assert ex.check_prior_bias(lambda pi: -torch.log(torch.tensor((1 - pi) / pi))).passed


# Lesson 4: normaliser --------------------------------------------------------------------
def divided(cls, box, labels, count, clamp=True, box_too=True):
    n = count(labels).clamp(min=1) if clamp else count(labels)
    return cls / n + (box / n if box_too else box)


@pytest.mark.parametrize(
    "mistake, keyword",
    [
        (dict(count=lambda labels: torch.tensor(labels.numel())), "divide by all anchors"),
        (dict(count=lambda labels: (labels != -2).sum()), "count background anchors"),
        (dict(count=lambda labels: (labels != -1).sum()), "count ignored anchors"),
        (dict(count=lambda labels: (labels > 0).sum()), "Class 0 is an object"),
        (dict(count=lambda labels: (labels >= 0).sum(), box_too=False), "box loss"),
        (dict(count=lambda labels: (labels >= 0).sum(), clamp=False), "max(1, count)"),
    ],
    ids=["all anchors", "non-ignored", "ignored counted", "class 0", "box", "no max(1)"],
)
def test_normalised_loss_mistakes(mistake, keyword):
    assert_caught(ex.check_normalised_loss(partial(divided, **mistake)), keyword)


@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (lambda c, b, y: solutions.normalised_loss(c, b, y).item(), "not a Python number"),
        (lambda c, b, y: torch.tensor(float(solutions.normalised_loss(c, b, y).detach()), requires_grad=True),
         "not computed from the inputs"),
        (lambda c, b, y: solutions.normalised_loss(c, b, y).detach().requires_grad_(), "not computed from the inputs"),
        (lambda c, b, y: solutions.normalised_loss(c, b.detach(), y), "cut out of the graph"),
        (lambda c, b, y: solutions.normalised_loss(c, b, y) + 0 * c.detach() - (c - c.detach()) * 0.5,
         "cut out of the graph"),
    ],
    ids=["item", "new tensor", "detached and re-attached", "box detached", "half the cls gradient"],
)
def test_normalised_loss_keeps_its_gradient(wrong, keyword):
    """Values alone can't tell these apart from the solution: the check compares gradients too."""
    assert_caught(ex.check_normalised_loss(wrong), keyword)


# Lesson 5: CDF ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (lambda losses: torch.sort(losses, descending=True).values.cumsum(0) / losses.sum(), "ascending"),
        (lambda losses: torch.sort(losses).values.cumsum(0), "Divide by the total loss, so"),
        (lambda losses: torch.sort(losses).values.cumsum(0) / losses.numel(), "not by the number of samples"),
        (lambda losses: (losses / losses.sum()).cumsum(0), "Sort the losses"),
        (lambda losses: torch.sort(losses).values / losses.sum(), "cumulative sum"),
        (lambda losses: losses.sum(), "shape"),
    ],
    ids=["descending", "not normalised", "by n", "unsorted", "no cumsum", "shape"],
)
def test_loss_cdf_mistakes(wrong, keyword):
    assert_caught(ex.check_loss_cdf(wrong), keyword)


# Lesson 6: OHEM --------------------------------------------------------------------------
def hardest(losses, labels, batch_size, largest=True, skip_ignored=True, drop_padding=True):
    """A learner's per-image selection, looping over images, with one mistake switched on."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for i in range(len(losses)):
        candidates = torch.nonzero(labels[i] != -2).squeeze(1) if skip_ignored else torch.arange(labels.shape[1])
        if not drop_padding:  # rank the ignored last but still take batch_size
            candidates = torch.cat((candidates, torch.nonzero(labels[i] == -2).squeeze(1)))
            ranked = torch.where(labels[i, candidates] == -2, -math.inf, losses[i, candidates])
            order = torch.argsort(ranked, descending=True)
        else:
            order = torch.argsort(losses[i, candidates], descending=largest)
        mask[i, candidates[order[:batch_size]]] = True
    return mask


def hardest_of_batch(losses, labels, batch_size, per_image_budget=True):
    k = batch_size * len(losses) if per_image_budget else batch_size
    flat = torch.where(labels != -2, losses, -math.inf).flatten()
    chosen = torch.argsort(flat, descending=True)[:k]
    mask = torch.zeros(flat.shape, dtype=torch.bool)
    mask[chosen] = True
    return mask.view_as(labels) & (labels != -2)


@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (partial(hardest, largest=False), "lowest losses"),
        (hardest_of_batch, "each image separately"),
        (partial(hardest_of_batch, per_image_budget=False), "each image separately"),
        (partial(hardest, skip_ignored=False), "must never be selected"),
        (partial(hardest, drop_padding=False), "fills up with ignored"),
        (lambda losses, labels, b: hardest(losses, labels, b).long(), "torch.bool"),
        (lambda losses, labels, b: losses.topk(min(b, losses.shape[1]), dim=1).indices, "shape"),
    ],
    ids=["lowest", "across batch", "across batch, batch_size in all", "ignored", "filled", "dtype", "indices"],
)
def test_ohem_select_mistakes(wrong, keyword):
    assert_caught(ex.check_ohem_select(wrong), keyword)


def test_ohem_select_accepts_any_choice_among_ties():
    """The learner's loop breaks ties by argsort, the reference by topk: both are right."""
    assert ex.check_ohem_select(hardest).passed


def test_an_unknown_mistake_gets_the_values():
    feedback = ex.check_prior_bias(lambda pi: 1.0)
    assert_caught(feedback, "Not quite")
    assert "π = 0.01" in feedback.message and "-4.5951" in feedback.message


# Lesson 7 -----------------------------------------------------------------------------
def counts(num_pos, num_neg, batch_size, fraction, share=None, top_up=True, cap_pos=True, cap_neg=True):
    """A learner's sample_counts, written out, with switches for the known mistakes."""
    share = int(batch_size * fraction) if share is None else share(batch_size, fraction)
    n_pos = min(num_pos, share) if cap_pos else share
    n_neg = batch_size - (n_pos if top_up else share)
    return n_pos, (min(num_neg, n_neg) if cap_neg else n_neg)


def test_sample_counts_solution_and_a_learner_version_pass():
    assert ex.check_sample_counts(solutions.sample_counts).passed
    assert ex.check_sample_counts(counts).passed
    assert ex.check_sample_counts(lambda *a: tuple(torch.tensor(c) for c in counts(*a))).passed  # 0-d tensors are fine


@pytest.mark.parametrize(
    "wrong, keyword",
    [
        (partial(counts, share=lambda b, f: int(b * (1 - f))), "inverted"),
        (partial(counts, cap_pos=False), "more positives than there are"),
        (partial(counts, top_up=False), "filled up with negatives"),
        (partial(counts, cap_neg=False), "more negatives than there are"),
        (partial(counts, share=lambda b, f: math.ceil(b * f)), "round the positives' share up"),
        (partial(counts, share=lambda b, f: round(b * f)), "to the nearest whole number"),
        (lambda *a: counts(*a)[0], "Return a pair"),
        (lambda *a: (float(counts(*a)[0]), counts(*a)[1]), "whole numbers"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError), "Not written yet"),
    ],
    ids=["inverted", "positives uncapped", "no top-up", "negatives uncapped", "ceil", "round", "one number", "floats",
         "stub"],
)
def test_sample_counts_mistakes(wrong, keyword):
    assert_caught(ex.check_sample_counts(wrong), keyword)


def test_fast_mode_also_grades_the_worked_solution(monkeypatch):
    # What a learner sees is their own result; in fast mode (CI) the check proves the solution too.
    monkeypatch.setenv("FL_LAB_FAST", "1")

    def stub(*args):
        raise NotImplementedError

    feedback = ex.check_prior_bias(stub)
    assert not feedback.passed and "Not written yet" in feedback.message
    monkeypatch.setattr(solutions, "prior_bias", lambda pi: 0.0)  # a broken solution is caught loudly
    with pytest.raises(AssertionError, match="worked solution of prior_bias fails"):
        ex.check_prior_bias(stub)
    monkeypatch.setenv("FL_LAB_FAST", "0")
    assert "Not written yet" in ex.check_prior_bias(stub).message  # outside fast mode only the learner's



# ---------------------------------------------------------------- box coding and NMS (lesson 3)
def _coding(boxes, anchors, weights, corner=False, ratio=False, swap=False, inverse_weights=False):
    """encode written out from the paper's formulas, with a learner's slip switched on."""
    wx, wy, ww, wh = (1 / w for w in weights) if inverse_weights else weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = (boxes[:, 0], boxes[:, 1]) if corner else (boxes[:, 0] + w / 2, boxes[:, 1] + h / 2)
    ax, ay = (anchors[:, 0], anchors[:, 1]) if corner else (anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2)
    size = (lambda r: r - 1) if ratio else torch.log
    t = [wx * (x - ax) / aw, wy * (y - ay) / ah, ww * size(w / aw), wh * size(h / ah)]
    return torch.stack([t[1], t[0], t[3], t[2]] if swap else t, dim=1)


def _boxes_from(deltas, anchors, weights, clamp=True, exp=True, half=0.5, corners=True, swap=False):
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = anchors[:, 0] + aw / 2 + deltas[:, 0] / wx * aw, anchors[:, 1] + ah / 2 + deltas[:, 1] / wy * ah
    dw, dh = deltas[:, 2] / ww, deltas[:, 3] / wh
    if clamp:
        dw, dh = dw.clamp(max=math.log(1000 / 16)), dh.clamp(max=math.log(1000 / 16))
    grow = torch.exp if exp else (lambda d: 1 + d)
    w, h = grow(dw) * aw, grow(dh) * ah
    out = [x - half * w, y - half * h, x + half * w, y + half * h] if corners else [x, y, w, h]
    return torch.stack([out[1], out[0], out[3], out[2]] if swap else out, dim=1)


def test_box_coding_passes_the_solution_and_torchvision():
    from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

    assert ex.check_box_coding(solutions.encode, solutions.decode).passed
    assert ex.check_box_coding(_coding, _boxes_from).passed  # this file's own, written from the formulas

    def tv(w):
        return TorchvisionBoxCoder(w, bbox_xform_clip=math.log(1000 / 16))

    assert ex.check_box_coding(lambda b, a, w: tv(w).encode_single(b, a),
                               lambda d, a, w: tv(w).decode_single(d, a)).passed


@pytest.mark.parametrize("slip,keyword", [
    (dict(corner=True), "between *centres*"),
    (dict(ratio=True), "logarithms"),
    (dict(swap=True), "swapped"),
    (dict(inverse_weights=True), "yours divide here"),
])
def test_each_encoding_slip_is_named(slip, keyword):
    feedback = ex.check_box_coding(partial(_coding, **slip), solutions.decode)
    assert_caught(feedback, keyword)
    assert feedback.message.startswith("encode:")


@pytest.mark.parametrize("slip,keyword", [
    (dict(clamp=False), "Clamp t_w and t_h"),
    (dict(exp=False), "Undo the log"),
    (dict(corners=False), "Return corners"),
    (dict(half=1.0), "half the width"),
    (dict(swap=True), "swapped"),
])
def test_each_decoding_slip_is_named(slip, keyword):
    feedback = ex.check_box_coding(solutions.encode, partial(_boxes_from, **slip))
    assert_caught(feedback, keyword)
    assert feedback.message.startswith("decode:")


def _iou(a, b):
    x1, y1 = torch.maximum(a[0], b[0]), torch.maximum(a[1], b[1])
    x2, y2 = torch.minimum(a[2], b[2]), torch.minimum(a[3], b[3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _my_nms(boxes, scores, labels, thr, per_class=True, strict=True, best_first=True, greedy=True):
    order = sorted(range(len(scores)), key=lambda i: float(scores[i]), reverse=best_first)
    kept = []
    for i in order:
        rivals = kept if greedy else [j for j in order if float(scores[j]) > float(scores[i])]
        overlaps = [(_iou(boxes[i], boxes[j]) > thr) if strict else (_iou(boxes[i], boxes[j]) >= thr) for j in rivals
                    if (labels[i] == labels[j] or not per_class)]
        if not any(bool(o) for o in overlaps):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


@pytest.mark.parametrize("slip,keyword", [
    (dict(per_class=False), "per class"),
    (dict(strict=False), "*greater than*"),
    (dict(best_first=False), "*highest* score down"),
    (dict(greedy=False), "greedy"),
])
def test_each_nms_slip_is_named(slip, keyword):
    assert ex.check_nms(_my_nms).passed
    assert_caught(ex.check_nms(partial(_my_nms, **slip)), keyword)


def test_nms_wants_indices():
    assert_caught(ex.check_nms(lambda b, s, c, t: torch.ones(len(s), dtype=torch.bool)), "not a mask")
    assert_caught(ex.check_nms(lambda b, s, c, t: None), "forget `return`")


def test_box_coding_stubs_and_a_missing_return_are_named():
    def stub(*args):
        raise NotImplementedError

    feedback = ex.check_box_coding(stub, stub)
    assert_caught(feedback, "Not written yet") and feedback.message.startswith("encode:")
    assert_caught(ex.check_box_coding(solutions.encode, lambda d, a, w: None), "forget `return`")
