"""fl_lab.data.archives against a local HTTP server (127.0.0.1 only): resume, verify, extract, CLI."""

import hashlib
import importlib
import io
import json
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from fl_lab.data.archives import DATASETS, Resource, download, extract, fetch, main

# The module itself (fl_lab.data may export the function under the same name).
dl = importlib.import_module("fl_lab.data.archives")
PAYLOAD = random.Random(0).randbytes(20_000)  # incompressible, so archives are big enough to cut mid-way


def make_zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tar(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(server, name: str, data: bytes, md5=None) -> Resource:
    server.files[f"/{name}"] = data
    return Resource(f"{server.url}/{name}", name, md5=md5)


def coco(server, monkeypatch, year=2017):
    """Register a tiny COCO ``year`` on the local server; return its members per part."""
    members = {
        "train": {f"train{year}/000000000009.jpg": PAYLOAD},
        "val": {f"val{year}/000000000139.jpg": PAYLOAD[::-1]},
        "annotations": {f"annotations/instances_val{year}.json": json.dumps({"images": []}).encode()},
    }
    names = {"train": f"train{year}.zip", "val": f"val{year}.zip", "annotations": f"annotations_trainval{year}.zip"}
    parts = {part: serve(server, names[part], make_zip(m)) for part, m in members.items()}
    monkeypatch.setitem(dl.DATASETS, f"coco{year}", parts)
    return members


def leftovers(root: Path) -> list:
    return [p.name for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith(".extracting")]


def test_coco_parts_download_extract_and_a_rerun_makes_no_request(server, monkeypatch, tmp_path, capsys):
    members = coco(server, monkeypatch)
    folder = download("coco2017", tmp_path, parts=["val", "annotations"], progress=False)
    assert folder == tmp_path / "coco"
    for part in ("val", "annotations"):
        for name, data in members[part].items():
            assert (folder / name).read_bytes() == data
    assert [path for path, _ in server.requests] == ["/val2017.zip", "/annotations_trainval2017.zip"]
    assert not (folder / "train2017").exists()
    assert leftovers(tmp_path) == [] and capsys.readouterr().err == ""  # progress=False prints nothing
    # Re-runs skip download and extraction, even once the archives are deleted to save space.
    (folder / "val2017" / "000000000139.jpg").write_bytes(b"edited")
    (tmp_path / "val2017.zip").unlink()
    assert download("coco2017", tmp_path, parts="val", progress=False) == folder
    assert len(server.requests) == 2 and (folder / "val2017" / "000000000139.jpg").read_bytes() == b"edited"


def test_coco_2014_and_2017_share_the_annotations_folder_and_progress_is_shown(server, monkeypatch, tmp_path, capsys):
    coco(server, monkeypatch, 2014)
    coco(server, monkeypatch, 2017)
    download("coco2017", tmp_path, parts=["annotations"])
    download("coco2014", tmp_path, parts=["annotations"])
    names = sorted(p.name for p in (tmp_path / "coco" / "annotations").iterdir())
    assert names == ["instances_val2014.json", "instances_val2017.json"]
    err = capsys.readouterr().err
    assert "annotations_trainval2017.zip" in err and "extract annotations_trainval2014.zip" in err


def test_voc_lands_where_torchvision_voc_detection_reads_it(server, monkeypatch, tmp_path):
    from PIL import Image
    from torchvision.datasets import VOCDetection

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 6), (255, 0, 0)).save(jpeg, format="JPEG")
    xml = b"<annotation><filename>2007_000027.jpg</filename><object><name>dog</name></object></annotation>"
    base = "VOCdevkit/VOC2012"
    data = make_tar({f"{base}/ImageSets/Main/trainval.txt": b"2007_000027\n",
                     f"{base}/JPEGImages/2007_000027.jpg": jpeg.getvalue(),
                     f"{base}/Annotations/2007_000027.xml": xml})
    resource = serve(server, "VOCtrainval_11-May-2012.tar", data, md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(dl.DATASETS, "voc2012", {"trainval": resource})
    assert download("voc2012", tmp_path, progress=False) == tmp_path  # the folder VOCDetection takes
    voc = VOCDetection(tmp_path, year="2012", image_set="trainval")
    image, target = voc[0]
    assert len(voc) == 1 and image.size == (8, 6) and target["annotation"]["object"][0]["name"] == "dog"
    assert leftovers(tmp_path) == []


def test_interrupted_transfer_keeps_the_part_and_resumes_from_its_end(server, tmp_path):
    data = make_zip({"val2017/a.jpg": PAYLOAD})
    resource = serve(server, "val2017.zip", data)
    server.cut_after = 3000
    with pytest.raises(ConnectionError, match=r"val2017\.zip stopped at 3000 of \d+ bytes.*kept: run again to resume"):
        fetch(resource, tmp_path, progress=False)
    assert (tmp_path / "val2017.zip.part").read_bytes() == data[:3000] and not (tmp_path / "val2017.zip").exists()
    assert fetch(resource, tmp_path, progress=False) == tmp_path / "val2017.zip"
    assert server.requests[-1] == ("/val2017.zip", "bytes=3000-")
    assert (tmp_path / "val2017.zip").read_bytes() == data and not (tmp_path / "val2017.zip.part").exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = make_zip({"val2017/a.jpg": PAYLOAD})
    resource = serve(server, "val2017.zip", data)
    server.cut_after = 5000
    with pytest.raises(ConnectionError):
        fetch(resource, tmp_path, progress=False)
    server.ignore_range = True  # answers 200 with the whole file: appending would double the first 5000 bytes
    fetch(resource, tmp_path, progress=False)
    assert server.requests[-1] == ("/val2017.zip", "bytes=5000-")
    assert (tmp_path / "val2017.zip").read_bytes() == data


@pytest.mark.parametrize("extra,requests", [(b"", 1), (b"junk", 2)])
def test_a_part_as_long_as_the_file_is_verified_and_a_longer_one_restarted(server, tmp_path, extra, requests):
    data = make_zip({"val2017/a.jpg": PAYLOAD})
    resource = serve(server, "val2017.zip", data)
    (tmp_path / "val2017.zip.part").write_bytes(data + extra)  # the server answers 416 to the Range request
    fetch(resource, tmp_path, progress=False)
    assert len(server.requests) == requests and (tmp_path / "val2017.zip").read_bytes() == data


def test_md5_mismatch_names_the_file_and_both_checksums_and_deletes_the_part(server, tmp_path):
    data = make_tar({"VOCdevkit/VOC2012/a.txt": PAYLOAD})
    good = hashlib.md5(data).hexdigest()
    resource = serve(server, "voc.tar", data, md5=good)
    server.corrupt = True
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF  # what the server sends
    bad = hashlib.md5(corrupted).hexdigest()
    with pytest.raises(ValueError, match=rf"voc\.tar: MD5 {bad} does not match the published {good}.*deleted"):
        fetch(resource, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    server.corrupt = False  # the next run starts over (no Range) and succeeds
    assert fetch(resource, tmp_path, progress=False).read_bytes() == data and server.requests[-1][1] is None


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_zip_fails_the_integrity_check(server, tmp_path, damage):
    data = make_zip({"val2017/a.jpg": PAYLOAD})
    if damage == "truncate":  # the server's own copy is short: its size checks out, the zip does not
        data = data[:-100]
    else:
        server.corrupt = True  # a flipped byte inside the member: only the CRC can tell
    resource = serve(server, "val2017.zip", data)
    with pytest.raises(ValueError, match=r"val2017\.zip failed the zip integrity check"):
        fetch(resource, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_the_url(server, tmp_path):
    resource = Resource(f"{server.url}/missing.zip", "missing.zip")
    with pytest.raises(ConnectionError, match=rf"{server.url}/missing\.zip failed \(HTTP Error 404"):
        fetch(resource, tmp_path, progress=False)


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_members_outside_dest(tmp_path, kind, member):
    archive = tmp_path / f"bad.{kind}"
    archive.write_bytes((make_zip if kind == "zip" else make_tar)({"fine.txt": b"x", member: b"evil"}))
    with pytest.raises(ValueError, match="refusing to extract member"):
        extract(archive, tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_unknown_dataset_and_part_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'coco2019'.*'coco2014', 'coco2017', 'voc2012'"):
        download("coco2019", tmp_path)
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['valid'\] of coco2017.*'val', 'test', 'annotations'"):
        download("coco2017", tmp_path, parts=["val", "valid"])
    assert list(tmp_path.iterdir()) == []


def test_registry_urls_and_voc_md5_matches_torchvision():
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    voc = DATASETS["voc2012"]["trainval"]
    assert voc.md5 == DATASET_YEAR_DICT["2012"]["md5"] and voc.filename == DATASET_YEAR_DICT["2012"]["filename"]
    assert DATASETS["coco2017"]["val"].url == "http://images.cocodataset.org/zips/val2017.zip"
    annotations = DATASETS["coco2014"]["annotations"]
    assert annotations.url == "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"


def test_cli_help_lists_datasets_and_parts():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "fl_lab.data.archives", "--help"], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--parts" in result.stdout
    assert "coco2017: train val test annotations" in result.stdout and "voc2012: trainval" in result.stdout


def test_cli_downloads_and_reports_errors(server, monkeypatch, tmp_path, capsys):
    coco(server, monkeypatch)
    assert main(["coco2017", "--root", str(tmp_path), "--parts", "val", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "coco") and (tmp_path / "coco" / "val2017").is_dir()
    with pytest.raises(SystemExit) as exit_info:
        main(["coco2017", "--root", str(tmp_path), "--parts", "valid"])
    assert exit_info.value.code == 1 and "unknown part(s) ['valid']" in capsys.readouterr().err
