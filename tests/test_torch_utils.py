"""fl_lab.torch_utils: the one device resolver, the eval-mode context and the timer."""

import pytest
import torch
from torch import nn

from fl_lab.torch_utils import eval_mode, median_ms, resolve_device


def test_auto_is_cuda_when_present_else_cpu():
    expected = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert str(resolve_device("auto", local_rank=1)) == expected and resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize("name,says", [("gpu", "must be auto, cpu, cuda or cuda:N"), ("cuda:x", "cuda:x")])
def test_a_bad_name_is_named(name, says):
    if name == "cuda:x" and not torch.cuda.is_available():
        says = "no CUDA device here"
    with pytest.raises(ValueError, match=says):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(ValueError, match=r"^--device cuda:0: no CUDA device here; use --device cpu \(or auto\)$"):
        resolve_device("cuda:0")


def test_eval_mode_restores_the_mode_even_after_an_error():
    model = nn.Sequential(nn.Dropout()).train()
    with eval_mode(model) as inside:
        assert inside is model and not model.training
    assert model.training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model in eval mode stays there


def test_median_ms_times_only_the_repeats_on_the_given_clock():
    readings = iter([0.0, 0.5, 10.0, 10.1, 20.0, 20.9])  # three calls: 0.5, 0.1, 0.9 s
    calls = []
    ms = median_ms(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2, clock=lambda: next(readings))
    assert ms == pytest.approx(500.0) and len(calls) == 5
    with pytest.raises(ValueError, match="repeats"):
        median_ms(lambda: None, torch.device("cpu"), repeats=0)
