"""Downloading COCO 2014, COCO 2017 and PASCAL VOC 2012 into the layouts the loaders expect.

``download("coco2017", "data", parts=["val", "annotations"])`` fetches the official archives
into ``data/``, checks them, and extracts them so that:

- COCO lands in ``root/coco/{train2017,val2017,annotations}`` (2014 likewise, beside it);
- VOC lands in ``root/VOCdevkit/VOC2012/...``, what ``torchvision.datasets.VOCDetection(root)`` reads.

It returns the folder to hand to the loader: ``root/coco`` for COCO, ``root`` for VOC.

Parts, with their rough sizes (``parts=None`` takes them all):

- ``coco2014``: ``train`` (13 GB), ``val`` (6 GB), ``test`` (6 GB, no labels), ``annotations`` (0.2 GB);
- ``coco2017``: ``train`` (18 GB), ``val`` (0.8 GB), ``test`` (6 GB, no labels), ``annotations`` (0.2 GB);
- ``voc2012``: ``trainval`` (2 GB).

Safety rules: bytes go to ``<file>.part`` and are renamed to ``<file>`` only once verified, so a
whole-looking file is always whole. An interrupted transfer keeps the ``.part`` and the next call
resumes it with an HTTP Range request (a server that ignores Range makes it start over cleanly).
A complete file that fails its check (MD5 where the publisher gives one, as for VOC; the SHA-256
prefix in a torch hub file name, as for ImageNet weights; otherwise the server's size and, for zips,
every member's CRC) is deleted, since resuming it cannot help.
Extraction goes to a temporary folder inside the destination, is moved into place, and only then
is a marker ``.<archive>.extracted`` written there: a re-run skips both download and extraction,
and the archive may be deleted afterwards to save space.

Command line: ``python -m fl_lab.data.archives coco2017 --root data --parts val annotations``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Union

from tqdm import tqdm

__all__ = ["DATASETS", "Resource", "download", "extract", "fetch", "main"]

CHUNK = 1 << 20  # 1 MiB per read: few Python calls per GB, small enough for a smooth progress bar
TIMEOUT_S = 60  # a stalled connection raises (and can be resumed) instead of hanging forever


@dataclass(frozen=True)
class Resource:
    """One archive: where it lives, its file name, and the checks its publisher gives (or None)."""

    url: str
    filename: str
    md5: Optional[str] = None
    size: Optional[int] = None  # bytes; None means "trust the server's Content-Length"
    sha256_prefix: Optional[str] = None  # the first hex digits of the SHA-256 (torch hub's file names carry them)


_COCO = "http://images.cocodataset.org"
_VOC = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012"


def _coco(year: int) -> dict[str, Resource]:
    # COCO publishes no checksums: fetch() checks the server's size and the zip's CRCs instead.
    zips = {part: Resource(f"{_COCO}/zips/{part}{year}.zip", f"{part}{year}.zip") for part in ("train", "val", "test")}
    name = f"annotations_trainval{year}.zip"
    return {**zips, "annotations": Resource(f"{_COCO}/annotations/{name}", name)}


DATASETS: dict[str, dict[str, Resource]] = {
    "coco2014": _coco(2014),
    "coco2017": _coco(2017),
    # The MD5 is torchvision's (datasets.voc.DATASET_YEAR_DICT["2012"]); a test keeps them equal.
    "voc2012": {"trainval": Resource(f"{_VOC}/VOCtrainval_11-May-2012.tar", "VOCtrainval_11-May-2012.tar",
                                     md5="6cd6e144f989b92b3379bac3b3de84fd")},
}
# Where each dataset's archives are extracted, relative to root; download() returns that folder,
# the one its loader takes. VOC's tar already starts with VOCdevkit/VOC2012/.
_SUBDIR = {"coco2014": "coco", "coco2017": "coco", "voc2012": "."}


def download(name: str, root: Union[str, Path], parts: Optional[Iterable[str]] = None, progress: bool = True) -> Path:
    """Fetch, verify and extract dataset ``name`` (a key of DATASETS) under ``root``; return its folder.

    The folder returned is the one the loaders take: ``root/coco`` for COCO (images in
    ``train2017/``, ``val2017/``, JSON in ``annotations/``), ``root`` itself for VOC (what
    ``VOCDetection(root)`` and ``fl_lab.data.voc`` read; the files are in ``root/VOCdevkit/VOC2012``).

    ``parts`` picks some of its archives (see the module docstring); None means all of them.
    Raises ValueError for an unknown name or part or a corrupt archive, and ConnectionError
    (naming the URL; the partial file is kept, so call again to resume) for a network failure.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    resources = DATASETS[name]
    chosen = list(resources) if parts is None else [parts] if isinstance(parts, str) else list(parts)
    unknown = [p for p in chosen if p not in resources]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown} of {name}; choose from {list(resources)}")
    root = Path(root)
    folder = root / _SUBDIR[name]
    for part in chosen:
        resource = resources[part]
        if not _marker(folder, resource.filename).exists():  # done before: no request at all
            extract(fetch(resource, root, progress=progress), folder, progress=progress)
    return folder


def fetch(resource: Resource, root: Union[str, Path], progress: bool = True) -> Path:
    """Download ``resource`` to ``root/filename``, verify it and return that path.

    Resumes a ``<filename>.part`` left by an earlier try. A file already at the final path is
    trusted without a request: only verified files are ever renamed there.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / resource.filename
    if final.exists():
        return final
    part = root / (resource.filename + ".part")
    try:
        total = _transfer(resource.url, part, progress)
    except (OSError, http.client.HTTPException) as err:
        raise _interrupted(resource.url, part, f"failed ({err})") from err
    expected = resource.size if resource.size is not None else total
    have = part.stat().st_size
    if expected is not None and have < expected:
        raise _interrupted(resource.url, part, f"stopped at {have} of {expected} bytes")
    if expected is not None and have > expected:
        _reject(part, f"{resource.filename} has {have} bytes, expected {expected}")
    if resource.md5 is not None and (actual := _digest(part, "md5")) != resource.md5:
        _reject(part, f"{resource.filename}: MD5 {actual} does not match the published {resource.md5}")
    if (resource.sha256_prefix is not None
            and not (actual := _digest(part, "sha256")).startswith(resource.sha256_prefix)):
        _reject(part, f"{resource.filename}: SHA-256 {actual[:16]}… does not start with {resource.sha256_prefix}")
    if resource.filename.endswith(".zip"):
        try:
            with zipfile.ZipFile(part) as zf:
                bad = zf.testzip()  # reads every member and checks its CRC
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            bad = f"unreadable ({err})"
        if bad is not None:
            _reject(part, f"{resource.filename} failed the zip integrity check: {bad}")
    os.replace(part, final)
    return final


def _transfer(url: str, part: Path, progress: bool) -> Optional[int]:
    """Append the rest of ``url`` to ``part`` (Range from its current size); return the full size, if known."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # 416 "Range Not Satisfiable": nothing after offset. A .part that is exactly the whole file
        # (stopped before its check) only needs verifying; a longer one is wrong, so start over.
        if err.headers.get("Content-Range", "") == f"bytes */{offset}":
            return offset
        part.unlink()
        return _transfer(url, part, progress)
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:  # a resumed transfer: Content-Range is "bytes START-END/TOTAL"
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise http.client.HTTPException(f"asked for bytes from {offset}, got Content-Range {content_range!r}")
            total = content_range.rpartition("/")[2]
            total = int(total) if total.isdigit() else None
        else:  # 200: the whole file (a server that ignores Range lands here too), so start over
            offset = 0
            total = int(length) if length is not None else None
        name = part.name.removesuffix(".part")
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress)
        with open(part, "ab" if offset else "wb") as out, bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def _interrupted(url: str, part: Path, what: str) -> ConnectionError:
    kept = f"; the partial file {part} was kept: run again to resume" if part.exists() else ""
    return ConnectionError(f"download of {url} {what}{kept}")


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reject(part: Path, message: str) -> None:
    """A complete but wrong file: delete it (resuming cannot fix it) and raise ValueError."""
    part.unlink()
    raise ValueError(f"{message}; deleted {part} so the next run downloads it afresh")


def _marker(dest: Path, filename: str) -> Path:
    return dest / f".{filename}.extracted"


def extract(archive: Union[str, Path], dest: Union[str, Path], progress: bool = True) -> Path:
    """Unpack a .zip or .tar ``archive`` into ``dest`` (merging with what is there); return ``dest``.

    Members with absolute paths or ``..`` are refused (ValueError naming the member). Files appear
    in ``dest`` only after the whole archive unpacked, and then the marker ``.<archive>.extracted``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    is_zip = archive.name.endswith(".zip")
    with zipfile.ZipFile(archive) if is_zip else tarfile.open(archive) as opened:
        members = opened.infolist() if is_zip else opened.getmembers()
        for member in members:
            _check_member(member.filename if is_zip else member.name, archive)
        # tarfile's "data" filter (Python >= 3.10.12 / 3.11.4) also refuses links that lead outside dest.
        safe = {"filter": "data"} if not is_zip and hasattr(tarfile, "data_filter") else {}
        tmp = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest))  # same file system: moves are renames
        try:
            bar = tqdm(members, desc=f"extract {archive.name}", unit=" files", disable=not progress)
            opened.extractall(tmp, members=bar, **safe)
            for entry in list(tmp.iterdir()):
                _merge(entry, dest / entry.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _marker(dest, archive.name).touch()
    return dest


def _check_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or ":" in (path.parts[0] if path.parts else ""):
        raise ValueError(f"{archive}: refusing to extract member {name!r} (absolute path or '..')")


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; folders that exist on both sides are merged (COCO 2014 and 2017 share annotations/)."""
    if dst.is_dir() and src.is_dir():
        for child in list(src.iterdir()):
            _merge(child, dst / child.name)
    else:
        os.replace(src, dst)


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point: ``python -m fl_lab.data.archives NAME --root DIR [--parts ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_lab.data.archives",
        description="Download, verify and extract COCO 2014/2017 or PASCAL VOC 2012. Interrupted downloads resume.",
        epilog="parts (default: all):\n" + "\n".join(f"  {name}: {' '.join(res)}" for name, res in DATASETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(DATASETS), help="which dataset")
    parser.add_argument("--root", required=True, type=Path, help="folder for the archives and the extracted data")
    parser.add_argument("--parts", nargs="+", metavar="PART", help="only these archives (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        folder = download(args.name, args.root, parts=args.parts, progress=not args.no_progress)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
