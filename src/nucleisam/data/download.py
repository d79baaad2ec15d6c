"""Public data sets fetched from their authors' Zenodo record, verified, unpacked safely, checked.

NuInsSeg is published by its authors as Zenodo record 10518968 (doi:10.5281/zenodo.10518968, CC BY
4.0). Zenodo's records API (``https://zenodo.org/api/records/<id>``) lists each file of a record as
``{"key": ..., "size": <bytes>, "checksum": "md5:<hex>", "links": {"self":
"https://zenodo.org/api/records/<id>/files/<key>/content"}}``; the checksum is always read from there
at run time, never stored here.

What is known of the record without access to it (public scripts that download it, not the record
itself): it holds one archive, ``NuInsSeg.zip`` (≈1.6 GB), fetched as
``https://zenodo.org/api/records/10518968/files/NuInsSeg.zip/content`` or
``https://zenodo.org/records/10518968/files/NuInsSeg.zip``. The scripts disagree on its layout: some
read the organ folders at the top of the unpacked tree (InstanSeg's data loader), another says they
sit in a top-level ``NuInsSeg/`` folder; :func:`find_dataset_root` accepts either.

:func:`download_dataset` reads the record, downloads each zip archive beside the target folder
(resumable, md5-checked before anything is unpacked), unpacks it into a temporary sibling folder
(refusing absolute paths, ``..`` and links), finds the data set's root inside the unpacked tree
(the archive may or may not wrap the organ folders in a top-level folder), reads it with the code
behind ``nucleisam data info``, writes ``ATTRIBUTION.md`` and ``nucleisam-download.json`` and only
then renames the folder into place: a failure at any step leaves no data set folder behind.
:func:`install_from_archive` does the same with an archive downloaded elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from tqdm.auto import tqdm

from nucleisam import __version__
from nucleisam.data.datasets import is_nuinsseg_root, load_nuinsseg
from nucleisam.data.summary import DatasetSummary, summarize
from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import write_json_atomic, write_text_atomic
from nucleisam.utils.download import DownloadError, cache_dir, download_file, fetch_json, file_digest

#: Environment variable replacing Zenodo's API base URL (a mirror, or a local test server).
API_ENV = "NUCLEISAM_ZENODO_API"
ZENODO_API = "https://zenodo.org/api"
#: Written into every installed folder: where the data came from and what it holds.
MARKER = "nucleisam-download.json"
ATTRIBUTION = "ATTRIBUTION.md"

_CHUNK = 1 << 20
# Resource forks that macOS's archiver adds; never part of a data set.
_IGNORED_TOP = "__MACOSX"


@dataclass(frozen=True)
class ZenodoDataset:
    """A data set its authors publish as a Zenodo record, and how to credit them."""

    name: str  # what `--data NAME` and `nucleisam data download NAME` accept
    title: str
    record_id: int
    doi: str  # the record's DOI
    folder: str  # folder name under the cache's datasets/ folder
    expected_images: int
    citation: str
    licence: str

    @property
    def landing_page(self) -> str:
        return f"https://zenodo.org/records/{self.record_id}"


NUINSSEG = ZenodoDataset(
    name="nuinsseg",
    title="NuInsSeg",
    record_id=10518968,
    doi="10.5281/zenodo.10518968",
    folder="NuInsSeg",
    expected_images=665,
    citation='A. Mahbod et al., "NuInsSeg: A fully annotated dataset for nuclei instance segmentation in '
    'H&E-stained histological images", Scientific Data 11:295 (2024), doi:10.1038/s41597-024-03117-2',
    licence="Creative Commons Attribution 4.0 International (CC BY 4.0), "
    "https://creativecommons.org/licenses/by/4.0/",
)

#: Data sets known by name, for `--data NAME` and `nucleisam data download|path NAME`.
DATASETS: dict[str, ZenodoDataset] = {NUINSSEG.name: NUINSSEG}


@dataclass(frozen=True)
class ArchiveFile:
    """One archive of a Zenodo record, as its records API lists it."""

    key: str
    size: int
    algorithm: str
    digest: str
    url: str

    @property
    def checksum(self) -> str:
        return f"{self.algorithm}:{self.digest}"


@dataclass
class InstallResult:
    """An installed data set: its folder, its counts, and what the user should be told."""

    dataset: ZenodoDataset
    root: Path
    summary: DatasetSummary
    already_present: bool = False
    notes: list[str] = field(default_factory=list)


def get_dataset(name: str) -> ZenodoDataset:
    """The registered data set called ``name`` (case-insensitive)."""
    dataset = DATASETS.get(name.lower())
    if dataset is None:
        raise NucleisamError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}.")
    return dataset


def zenodo_api() -> str:
    """Base URL of the Zenodo API: ``$NUCLEISAM_ZENODO_API`` if set, else https://zenodo.org/api."""
    return (os.environ.get(API_ENV) or ZENODO_API).rstrip("/")


def record_url(dataset: ZenodoDataset) -> str:
    return f"{zenodo_api()}/records/{dataset.record_id}"


def default_data_dir(dataset: ZenodoDataset = NUINSSEG) -> Path:
    """Where ``nucleisam data download NAME`` puts a data set: ``<cache>/datasets/<folder>``."""
    return cache_dir() / "datasets" / dataset.folder


def resolve_data_root(value: str | os.PathLike[str]) -> Path:
    """What a ``--data`` value names: a folder, or a registered data set's name for its download folder.

    A folder of that name in the current directory wins over the name ("nuinsseg" there is used as is).
    """
    path = Path(value)
    dataset = DATASETS.get(str(value).lower())
    if dataset is None or path.exists():
        return path
    folder = default_data_dir(dataset)
    if not folder.is_dir():
        raise NucleisamError(
            f"{dataset.title} has not been downloaded (no folder {folder}): run `nucleisam data download "
            f"{dataset.name}`, or give the path of your own copy."
        )
    return folder


def _manual_hint(dataset: ZenodoDataset) -> str:
    return (
        f"To install it by hand, download the archive from {dataset.landing_page} (doi:{dataset.doi}) on a "
        f"machine with internet access and run "
        f"`nucleisam data download {dataset.name} --from-archive FILE.zip`."
    )


def record_archives(dataset: ZenodoDataset, *, timeout: float = 60.0) -> list[ArchiveFile]:
    """The zip archives the dataset's Zenodo record lists, with their sizes and checksums.

    Raises:
        DownloadError: the records API cannot be reached.
        NucleisamError: the record does not list its files as expected.
    """
    url = record_url(dataset)
    record = fetch_json(url, timeout=timeout)
    archives = []
    try:
        for entry in record["files"]:
            key = entry["key"]
            if not key.lower().endswith(".zip"):
                continue
            if Path(key).name != key or key.startswith("."):
                raise ValueError(f"file key {key!r} is not a plain file name")
            algorithm, _, digest = entry["checksum"].partition(":")
            links = entry["links"]
            archives.append(
                ArchiveFile(
                    key=key,
                    size=int(entry["size"]),
                    algorithm=algorithm,
                    digest=digest.lower(),
                    url=urljoin(url, links.get("content") or links["self"]),
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NucleisamError(
            f"the Zenodo record at {url} does not list its files as expected ({exc!r}). "
            f"{_manual_hint(dataset)}"
        ) from exc
    if not archives:
        raise NucleisamError(f"the Zenodo record at {url} lists no zip archive. {_manual_hint(dataset)}")
    return archives


def download_dataset(
    name: str,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    keep_archive: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> InstallResult:
    """Download a registered data set from its Zenodo record and install it in ``out``.

    Args:
        name: registered data set ("nuinsseg").
        out: folder to create (default :func:`default_data_dir`); its archive is downloaded beside it.
        force: replace an existing folder (the new one is complete before the old one goes).
        keep_archive: keep the downloaded archive after installing (by default it is deleted).
        progress: progress bars on stderr.
        timeout: seconds to wait for the server at each step.
    Raises:
        NucleisamError: one line naming the URL or file at fault and what to do; nothing is installed.
            A download cut short keeps its ``.part`` file, and the next call resumes it.
    """
    dataset = get_dataset(name)
    target = _target(dataset, out)
    if (present := _already_present(dataset, target, force)) is not None:
        return present
    try:
        archives = record_archives(dataset, timeout=timeout)
    except DownloadError as exc:
        raise NucleisamError(
            f"could not reach the Zenodo records API at {exc.url} ({exc.reason}). {_manual_hint(dataset)}"
        ) from exc
    _make_parent(target)
    paths, downloaded, notes = [], [], []
    for archive in archives:
        path = target.parent / archive.key
        if path.is_file() and file_digest(path, archive.algorithm) == archive.digest:
            notes.append(f"used the verified {archive.key} already at {path} (kept)")
        elif path.is_file() and not force:
            raise NucleisamError(
                f"{path} exists but its {archive.algorithm} is not the record's {archive.digest}: delete it, "
                "or download it again over it (force)."
            )
        else:
            download_file(
                archive.url,
                path,
                digest=archive.digest,
                algorithm=archive.algorithm,
                size=archive.size,
                what=archive.key,
                hint=_manual_hint(dataset),
                resume=not force,
                progress=progress,
                timeout=timeout,
            )
            downloaded.append(path)
        paths.append(path)
    sources = [
        {"name": a.key, "url": a.url, "size": a.size, "checksum": a.checksum, "verified": "record checksum"}
        for a in archives
    ]
    result = _install(dataset, paths, target, sources=sources, notes=notes, progress=progress)
    if not keep_archive:
        for path in downloaded:
            path.unlink()
    return result


def install_from_archive(
    name: str,
    archive: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> InstallResult:
    """Install a data set from an archive downloaded elsewhere (the file is left where it is).

    The archive must match the size and checksum of an archive in the Zenodo record when the records
    API can be reached; otherwise (offline) only its zip CRCs and its content are checked, and a note
    says so. Arguments and errors as :func:`download_dataset`.
    """
    dataset = get_dataset(name)
    file = Path(archive)
    if not file.is_file():
        raise NucleisamError(f"archive {file} (archive) does not exist.")
    target = _target(dataset, out)
    if (present := _already_present(dataset, target, force)) is not None:
        return present
    notes: list[str] = []
    size = file.stat().st_size
    try:
        archives = record_archives(dataset, timeout=timeout)
    except DownloadError as exc:
        notes.append(
            f"could not reach the Zenodo record ({exc.url}: {exc.reason}), so {file.name} was checked by the "
            f"CRCs of its zip entries and by its content only, not by the record's checksum"
        )
        source = {
            "name": file.name,
            "size": size,
            "checksum": f"md5:{file_digest(file, 'md5')}",
            "verified": "zip CRCs and content only",
        }
    else:
        match = next(
            (a for a in archives if a.size == size and file_digest(file, a.algorithm) == a.digest), None
        )
        if match is None:
            expected = ", ".join(f"{a.key} ({a.size:,} bytes, {a.checksum})" for a in archives)
            raise NucleisamError(
                f"archive {file} (archive) is not the archive of Zenodo record {dataset.record_id}: it has "
                f"{size:,} bytes, the record lists {expected}. Download it again from {dataset.landing_page}."
            )
        source = {
            "name": match.key,
            "file": str(file.resolve()),
            "size": match.size,
            "checksum": match.checksum,
            "verified": "record checksum",
        }
    _make_parent(target)
    return _install(dataset, [file], target, sources=[source], notes=notes, progress=progress)


def _target(dataset: ZenodoDataset, out: str | os.PathLike[str] | None) -> Path:
    target = Path(out) if out is not None else default_data_dir(dataset)
    if target.exists() and not target.is_dir():
        raise NucleisamError(f"target {target} (out) exists and is not a folder.")
    return target.absolute()


def _already_present(dataset: ZenodoDataset, target: Path, force: bool) -> InstallResult | None:
    """The installed data set if ``target`` holds one (and not ``force``); an error for a foreign folder."""
    if force or not target.is_dir() or not any(target.iterdir()):
        return None
    if not (target / MARKER).is_file():
        raise NucleisamError(
            f"{target} exists and was not made by `nucleisam data download`: choose another folder (out), "
            "or replace it (force)."
        )
    summary = summarize(load_nuinsseg(target))
    return InstallResult(dataset, target, summary, already_present=True)


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NucleisamError(
            f"cannot create the folder {target.parent}: {exc.strerror or exc}. Choose another folder (out)."
        ) from exc


def _install(
    dataset: ZenodoDataset,
    archives: list[Path],
    target: Path,
    *,
    sources: list[dict[str, object]],
    notes: list[str],
    progress: bool,
) -> InstallResult:
    """Unpack into a temporary sibling of ``target``, check it, credit it, and rename it into place."""
    # Left by a run that was killed outright (an interrupted or failed run removes its own).
    for stale in target.parent.glob(f".{target.name}.unpacking-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=target.parent))
    try:
        for archive in archives:
            safe_extract(archive, staging, progress=progress)
        root = find_dataset_root(staging, archives)
        summary = summarize(load_nuinsseg(root))
        if summary.images != dataset.expected_images:
            notes.append(
                f"{dataset.title} should have {dataset.expected_images} images; this copy has "
                f"{summary.images}"
            )
        write_text_atomic(root / ATTRIBUTION, attribution(dataset))
        write_json_atomic(
            root / MARKER,
            {
                "dataset": dataset.name,
                "zenodo_record": dataset.record_id,
                "doi": dataset.doi,
                "archives": sources,
                "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "nucleisam_version": __version__,
                "images": summary.images,
                "nuclei": summary.nuclei,
                "organs": len(summary.organs),
            },
        )
        _move_into_place(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # The counts were taken in the staging folder; report the paths where the files now are.
    moved = dataclasses.replace(
        summary, root=str(target), problems=[p.replace(str(root), str(target)) for p in summary.problems]
    )
    return InstallResult(dataset, target, moved, notes=notes)


def _move_into_place(root: Path, target: Path) -> None:
    """Rename ``root`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(root, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent)) / target.name
    os.rename(target, old)
    try:
        os.rename(root, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old.parent, ignore_errors=True)


def attribution(dataset: ZenodoDataset) -> str:
    """ATTRIBUTION.md of an installed data set: where it came from, the paper to cite, the licence."""
    return (
        f"# {dataset.title}\n\n"
        f"Installed by `nucleisam data download {dataset.name}` from Zenodo record {dataset.record_id} "
        f"(doi:{dataset.doi}, {dataset.landing_page}), the dataset authors' release.\n\n"
        f"Please cite:\n\n> {dataset.citation}.\n\n"
        f"Licence: {dataset.licence}.\n"
    )


def _member_parts(name: str) -> list[str]:
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    """Refuse entries that would land outside the target folder, and links or special files."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise NucleisamError(
            f"refused to unpack {archive}: entry {name!r} points outside the folder (an absolute path or "
            "'..'); nothing was unpacked. Is the archive from the data set's authors?"
        )
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
        raise NucleisamError(
            f"refused to unpack {archive}: entry {name!r} is {kind}; nothing was unpacked. Is the archive "
            "from the data set's authors?"
        )


def safe_extract(
    archive: str | os.PathLike[str], destination: str | os.PathLike[str], *, progress: bool = False
) -> None:
    """Unpack a zip archive into ``destination`` after checking every entry.

    Every entry is checked before anything is written: absolute paths, ``..`` components, symbolic
    links and special files are refused. Files are written as plain files (never links), never over
    an existing file, and every entry's CRC-32 is checked as it is read. ``__MACOSX/`` is skipped.

    Raises:
        NucleisamError: naming the archive and the entry at fault.
    """
    archive, destination = Path(archive), Path(destination)
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if _member_parts(m.filename)[:1] != [_IGNORED_TOP]]
            for member in members:
                _check_member(archive, member)
            needed, free = sum(m.file_size for m in members), shutil.disk_usage(destination).free
            if needed > free:
                raise NucleisamError(
                    f"unpacking {archive} needs {needed / 1e9:.1f} GB but {destination} has "
                    f"{free / 1e9:.1f} GB free."
                )
            for member in tqdm(members, desc=f"unpacking {archive.name}", unit="file", disable=not progress):
                parts = _member_parts(member.filename)
                if not parts:
                    continue
                path = destination.joinpath(*parts)
                if member.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, open(path, "xb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
    except FileExistsError as exc:
        raise NucleisamError(f"refused to unpack {archive}: it holds {exc.filename} twice.") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise NucleisamError(f"{archive} is not a complete zip archive ({exc}); download it again.") from exc
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encrypted entries
        raise NucleisamError(
            f"cannot unpack {archive} ({exc}): unpack it with another tool and use the folder as the data "
            "root (data.root)."
        ) from exc


def find_dataset_root(tree: Path, archives: Sequence[Path] = ()) -> Path:
    """The folder of an unpacked tree holding the organ folders, descending through lone wrapper folders."""
    current = tree
    while not is_nuinsseg_root(current):
        children = [p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(children) != 1:
            names = ", ".join(str(a) for a in archives) or str(tree)
            raise NucleisamError(
                f"{names} holds no NuInsSeg organ folders ('<organ>/tissue images', '<organ>/label masks "
                "modify'); is it the NuInsSeg release?"
            )
        current = children[0]
    return current
