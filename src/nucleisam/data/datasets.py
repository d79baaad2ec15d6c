"""Finding and pairing images with their instance labels: NuInsSeg, plain folders, Aperio XML.

Loading a data set only lists files and reads their headers (sizes, channel counts), so a few
hundred tiles load in well under a second; pixels are decoded by :meth:`Sample.load_image` and
friends. Anything that keeps a tile out of the data set (an image without a mask, a mask without an
image, a duplicate stem, a size mismatch, an unreadable or grayscale image) is collected into
:attr:`Dataset.problems`; ``strict=True`` turns any problem into a :class:`NucleisamError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucleisam.data.aperio_xml import read_xml_instances
from nucleisam.data.imageio import IMAGE_SUFFIXES, probe_image, read_rgb
from nucleisam.data.labels import LABEL_SUFFIXES, probe_label_shape, read_binary_mask, read_label_map
from nucleisam.errors import NucleisamError

#: Species prefixes recognised in organ folder names ("human spleen" → species "human").
KNOWN_SPECIES = ("human", "mouse", "rat", "dog", "pig")
UNKNOWN = "unknown"

# Folder names of the NuInsSeg release, compared after lower-casing and turning "_" into " ".
_IMAGES_DIR = "tissue images"
_LABELS_DIR = "label masks modify"
_SUMMED_LABELS_DIR = "label masks"
_VAGUE_DIRS = (("vague areas", "mask binary"), ("vague areas", "mask binary vague"), ("mask binary vague",))
_MASK_SUFFIXES = (*LABEL_SUFFIXES, ".xml")


@dataclass(frozen=True)
class Sample:
    """One image tile with its instance labels and, where annotated, its vague-area mask.

    ``labels_path`` is a label map (TIFF/PNG/NPY) or an Aperio XML file; ``binary_masks`` records
    that the label file is a binary mask to split into connected components.
    """

    stem: str
    organ: str
    species: str
    image_path: Path
    labels_path: Path
    vague_path: Path | None = None
    binary_masks: bool = False

    @property
    def group(self) -> str:
        """The organ as a grouping key, species included ("human spleen" ≠ "mouse spleen")."""
        return self.organ if self.species == UNKNOWN else f"{self.species} {self.organ}"

    def load_image(self) -> np.ndarray:
        """RGB ``uint8`` (H, W, 3)."""
        return read_rgb(self.image_path)

    def load_labels(self) -> np.ndarray:
        """Instance ids, ``int32`` (H, W); 0 is background."""
        if self.labels_path.suffix.lower() == ".xml":
            height, width, _ = probe_image(self.image_path)
            return read_xml_instances(self.labels_path, (height, width))
        return read_label_map(self.labels_path, binary_masks=self.binary_masks)

    def load_vague(self) -> np.ndarray | None:
        """``bool`` (H, W) mask of regions the annotators marked as vague, or ``None``."""
        return None if self.vague_path is None else read_binary_mask(self.vague_path)


@dataclass
class Dataset:
    """Paired samples (sorted by image file name) and the problems met while pairing them."""

    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    root: Path | None = None
    layout: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def stems(self) -> list[str]:
        return [sample.stem for sample in self.samples]

    def by_stem(self) -> dict[str, Sample]:
        return {sample.stem: sample for sample in self.samples}

    def raise_for_problems(self) -> None:
        """Raise :class:`NucleisamError` listing every problem, if there is any."""
        if self.problems:
            where = f" in {self.root}" if self.root is not None else ""
            listing = "\n  - ".join(self.problems)
            raise NucleisamError(
                f"{len(self.problems)} problem(s) found{where} (strict mode):\n  - {listing}\n"
                "Fix or remove these files, or leave strict mode (strict) to skip them."
            )


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _child_dir(parent: Path, *names: str) -> Path | None:
    """The sub-folder path ``parent/names[0]/names[1]/...`` matched loosely (case, "_" vs " ")."""
    current = parent
    for name in names:
        match = None
        try:
            children = sorted(p for p in current.iterdir() if p.is_dir())
        except OSError:
            return None
        for child in children:
            if _norm(child.name) == name:
                match = child
                break
        if match is None:
            return None
        current = match
    return current


def _list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files in ``folder`` with one of ``suffixes`` (case-insensitive), hidden files ignored."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise NucleisamError(f"cannot list folder {folder}: {exc.strerror or exc}.") from exc
    return [
        p for p in entries if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]


def _index_by_stem(files: list[Path], kind: str, problems: list[str]) -> dict[str, Path]:
    """Map stem → file; a stem seen twice is a problem and the first file (by name) is kept."""
    index: dict[str, Path] = {}
    for file in files:
        if file.stem in index:
            problems.append(f"duplicate {kind} stem {file.stem!r}: {index[file.stem]} and {file}; "
                            f"using {index[file.stem].name}")
            continue
        index[file.stem] = file
    return index


def parse_organ_folder(name: str) -> tuple[str, str]:
    """(species, organ) from a folder name: "human spleen" or "human_spleen" → ("human", "spleen")."""
    words = _norm(name).split(" ")
    if len(words) > 1 and words[0] in KNOWN_SPECIES:
        return words[0], " ".join(words[1:])
    return UNKNOWN, " ".join(words) or UNKNOWN


def _check_root(root: str | os.PathLike[str], option: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise NucleisamError(f"data folder not found: {path} ({option}). Check the path.")
    if not path.is_dir():
        raise NucleisamError(f"{path} ({option}) is not a folder.")
    return path


def _pair(
    images: dict[str, Path],
    labels: dict[str, Path],
    vague: dict[str, Path],
    *,
    organ: str,
    species: str,
    binary_masks: bool,
    problems: list[str],
) -> list[Sample]:
    """Pair by stem, checking sizes from file headers; unpaired or broken tiles become problems."""
    samples = []
    for stem, image_path in images.items():
        labels_path = labels.get(stem)
        if labels_path is None:
            problems.append(f"image without a label mask: {image_path}")
            continue
        try:
            height, width, channels = probe_image(image_path)
        except NucleisamError as exc:
            problems.append(str(exc))
            continue
        if channels < 3:
            problems.append(f"image {image_path} is grayscale; nucleisam needs RGB H&E images")
            continue
        vague_path = vague.get(stem)
        # XML polygons are rasterised at the image's size, so only raster masks can disagree.
        mask_paths = [p for p in (labels_path, vague_path) if p is not None and p.suffix.lower() != ".xml"]
        mismatch = None
        for mask_path in mask_paths:
            try:
                mask_shape = probe_label_shape(mask_path)
            except NucleisamError as exc:
                mismatch = str(exc)
                break
            if mask_shape != (height, width):
                mismatch = (f"size mismatch: image {image_path} is {height}x{width} but "
                            f"{mask_path} is {mask_shape[0]}x{mask_shape[1]}")
                break
        if mismatch is not None:
            problems.append(mismatch)
            continue
        samples.append(Sample(stem=stem, organ=organ, species=species, image_path=image_path,
                              labels_path=labels_path, vague_path=vague_path, binary_masks=binary_masks))
    for stem, labels_path in labels.items():
        if stem not in images:
            problems.append(f"label mask without an image: {labels_path}")
    return samples


def _finish(samples: list[Sample], problems: list[str], root: Path, layout: str, strict: bool) -> Dataset:
    """Drop cross-folder duplicate stems, sort by image file name, apply ``strict``."""
    samples = sorted(samples, key=lambda s: (s.image_path.name, str(s.image_path)))
    unique: list[Sample] = []
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.stem in seen:
            problems.append(f"duplicate stem {sample.stem!r}: {seen[sample.stem].image_path} and "
                            f"{sample.image_path}; using the first")
            continue
        seen[sample.stem] = sample
        unique.append(sample)
    dataset = Dataset(samples=unique, problems=problems, root=root, layout=layout)
    if strict:
        dataset.raise_for_problems()
    return dataset


def _organ_folders(root: Path) -> list[Path]:
    if _child_dir(root, _IMAGES_DIR) is not None:
        return [root]
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise NucleisamError(f"cannot list folder {root}: {exc.strerror or exc}.") from exc
    return [child for child in children if _child_dir(child, _IMAGES_DIR) is not None]


def is_nuinsseg_root(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` is a NuInsSeg organ folder or holds at least one."""
    path = Path(root)
    return path.is_dir() and bool(_organ_folders(path))


def load_nuinsseg(root: str | os.PathLike[str], *, strict: bool = False) -> Dataset:
    """Load the NuInsSeg release layout: organ folders below ``root`` (or ``root`` itself an organ).

    Each organ folder ("human spleen" or "human_spleen") holds ``tissue images/<stem>.png``,
    ``label masks modify/<stem>.tif`` and optionally ``vague areas/mask binary/<stem>.png`` (or
    ``mask binary_vague``). The ``label masks`` folder is never read: where nuclei overlap it
    stores the *sum* of their ids. Species and organ come from the folder name.
    """
    path = _check_root(root, "root")
    organs = _organ_folders(path)
    if not organs:
        raise NucleisamError(
            f"no NuInsSeg organ folders in {path}: expected '<organ>/tissue images/<stem>.png' with "
            "'<organ>/label masks modify/<stem>.tif' (or ROOT being one organ folder). For other "
            "layouts give a folder of images (images) and one of label maps (masks)."
        )
    problems: list[str] = []
    samples: list[Sample] = []
    n_images = 0
    for organ_dir in organs:
        species, organ = parse_organ_folder(organ_dir.resolve().name)
        images_dir = _child_dir(organ_dir, _IMAGES_DIR)
        assert images_dir is not None  # _organ_folders only returns folders that have one
        images = _index_by_stem(_list_files(images_dir, IMAGE_SUFFIXES), "image", problems)
        n_images += len(images)
        labels_dir = _child_dir(organ_dir, _LABELS_DIR)
        if labels_dir is None:
            hint = (" (its 'label masks' folder is not used: it stores sums of overlapping ids)"
                    if _child_dir(organ_dir, _SUMMED_LABELS_DIR) is not None else "")
            problems.append(f"no 'label masks modify' folder in {organ_dir}{hint}")
            labels: dict[str, Path] = {}
        else:
            labels = _index_by_stem(_list_files(labels_dir, LABEL_SUFFIXES), "label mask", problems)
        vague: dict[str, Path] = {}
        for names in _VAGUE_DIRS:
            vague_dir = _child_dir(organ_dir, *names)
            if vague_dir is not None:
                vague = _index_by_stem(_list_files(vague_dir, LABEL_SUFFIXES), "vague mask", problems)
                break
        if labels_dir is None:
            problems.extend(f"image without a label mask: {p}" for p in images.values())
            continue
        samples.extend(_pair(images, labels, vague, organ=organ, species=species,
                             binary_masks=False, problems=problems))
    if n_images == 0:
        raise NucleisamError(f"no images found in {path}: the 'tissue images' folders are empty.")
    return _finish(samples, problems, path, "nuinsseg", strict)


def load_folders(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str] | None = None,
    *,
    binary_masks: bool = False,
    strict: bool = False,
) -> Dataset:
    """Pair a folder of images with a folder of instance labels by file stem.

    Label files may be TIFF, PNG, NPY or Aperio/MoNuSeg XML. With ``masks=None`` an ``<stem>.xml``
    next to each image is used. ``binary_masks=True`` accepts binary masks and splits them into
    connected components. Organ and species are ``"unknown"``.
    """
    images_dir = _check_root(images, "images")
    masks_dir = images_dir if masks is None else _check_root(masks, "masks")
    problems: list[str] = []
    image_files = _list_files(images_dir, IMAGE_SUFFIXES)
    if masks is None:
        mask_files = _list_files(masks_dir, (".xml",))
    else:
        mask_files = _list_files(masks_dir, _MASK_SUFFIXES)
        if masks_dir.resolve() == images_dir.resolve():
            image_names = {p.name for p in image_files}
            mask_files = [p for p in mask_files if p.name not in image_names]
    if not image_files:
        raise NucleisamError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images_dir} (images).")
    if not mask_files:
        where = f"next to the images in {images_dir}" if masks is None else f"in {masks_dir} (masks)"
        raise NucleisamError(f"no label masks (TIFF, PNG, NPY or XML) found {where}.")
    image_index = _index_by_stem(image_files, "image", problems)
    mask_index = _index_by_stem(mask_files, "label mask", problems)
    samples = _pair(image_index, mask_index, {}, organ=UNKNOWN, species=UNKNOWN,
                    binary_masks=binary_masks, problems=problems)
    return _finish(samples, problems, images_dir, "folders", strict)


def _looks_like_xml_folder(root: Path) -> bool:
    stems = {p.stem for p in _list_files(root, (".xml",))}
    return any(p.stem in stems for p in _list_files(root, IMAGE_SUFFIXES))


def open_dataset(
    root: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    masks: str | os.PathLike[str] | None = None,
    *,
    binary_masks: bool = False,
    strict: bool = False,
) -> Dataset:
    """Open a data set in whichever supported layout it is.

    Either ``root`` (a NuInsSeg root or organ folder, or a folder of images with ``.xml``
    annotations beside them), or ``images`` with ``masks`` (paired by stem; ``masks`` may be
    omitted when ``.xml`` files sit next to the images).
    """
    if root is not None and (images is not None or masks is not None):
        raise NucleisamError("give either a data root (root) or folders of images (images), not both.")
    if root is None:
        if images is None:
            if masks is not None:
                raise NucleisamError("a folder of label maps (masks) needs a folder of images (images).")
            raise NucleisamError(
                "no data given: a data root (root), or a folder of images (images) with one of label maps "
                "(masks)."
            )
        return load_folders(images, masks, binary_masks=binary_masks, strict=strict)
    path = _check_root(root, "root")
    if is_nuinsseg_root(path):
        return load_nuinsseg(path, strict=strict)
    if _looks_like_xml_folder(path):
        return load_folders(path, None, binary_masks=binary_masks, strict=strict)
    if not any(path.iterdir()):
        raise NucleisamError(f"data folder {path} is empty.")
    raise NucleisamError(
        f"{path} is not in a layout nucleisam reads: expected NuInsSeg organ folders "
        "('<organ>/tissue images', '<organ>/label masks modify'), images with .xml annotations beside "
        "them, or give a folder of images (images) and one of label maps (masks)."
    )
