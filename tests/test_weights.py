"""ImageNet backbone weights on request: fetched into the torch hub cache through the kit's verified,
resumable downloader (tested against a local server on 127.0.0.1), loaded with weights_only=True."""

import hashlib
import io

import pytest
import torch
import torchvision

import fl_lab.weights as weights
from fl_lab.model import RetinaNet


@pytest.fixture(scope="module")
def resnet18_file():
    """A ResNet-18 state dict as bytes, and the torch-hub style name carrying its SHA-256 prefix."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    body = buffer.getvalue()
    return body, f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvisions_urls_carry_a_hash_prefix():
    for backbone in ("resnet18", "resnet34", "resnet50", "resnet101"):
        url = weights._imagenet_url(backbone)
        assert url.startswith("https://download.pytorch.org/models/") and url.rsplit("-", 1)[1].split(".")[0].isalnum()
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'vgg16'"):
        weights._imagenet_url("vgg16")


def test_download_verify_resume_and_load(server, hub, resnet18_file, monkeypatch):
    body, name = resnet18_file
    server.files[f"/models/{name}"] = body
    url = f"{server.url}/models/{name}"
    server.cut_after = len(body) // 3  # the first transfer breaks off
    with pytest.raises(ConnectionError, match="was kept: run again to resume"):
        weights.imagenet_weights("resnet18", url=url, progress=False)
    assert (hub / f"{name}.part").is_file() and not (hub / name).exists()
    path = weights.imagenet_weights("resnet18", url=url, progress=False)  # resumes with a Range request
    assert path == hub / name and path.read_bytes() == body and server.requests[-1][1] == f"bytes={len(body) // 3}-"
    requests = len(server.requests)
    assert weights.imagenet_weights("resnet18", url=url, progress=False) == path and len(server.requests) == requests

    monkeypatch.setattr(weights, "_imagenet_url", lambda backbone: url)  # RetinaNet(..., "imagenet") finds the cache
    model = RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=1, backbone_weights="imagenet")
    served = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.body.conv1.weight, served["conv1.weight"])
    assert not model.backbone.body.conv1.weight.requires_grad  # fine-tuning as the paper: stem fixed, BN frozen
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_a_corrupt_file_is_refused_and_deleted(server, hub, resnet18_file):
    body, name = resnet18_file
    server.files[f"/models/{name}"], server.corrupt = body, True
    with pytest.raises(ValueError, match=r"SHA-256 .* does not start with .*deleted"):
        weights.imagenet_weights("resnet18", url=f"{server.url}/models/{name}", progress=False)
    assert not (hub / name).exists() and not (hub / f"{name}.part").exists()


def test_offline_names_the_url_and_where_to_put_the_file(hub, monkeypatch, capsys):
    from fl_lab.train import main

    url = "http://127.0.0.1:9/models/resnet18-00000000.pth"  # the discard port: refused at once
    with pytest.raises(ConnectionError, match=rf"put it at {hub / 'resnet18-00000000.pth'}"):
        weights.imagenet_weights("resnet18", url=url, progress=False)
    monkeypatch.setattr(weights, "_imagenet_url", lambda backbone: url)
    code = main(["--backbone-weights", "imagenet", "--steps", "1", "--image-size", "64", "--workers", "0",
                 "--min-object-size", "16", "--device", "cpu", "--out", str(hub.parent / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "error: download of" in err and "Traceback" not in err


def test_the_coco_preset_fine_tunes_imagenet_weights():
    from fl_lab.train import PRESETS, Config

    assert Config(**PRESETS["coco"]).backbone_weights == "imagenet"
