"""Shared fixtures: the bundled sample (always present) and the shared NuInsSeg data (optional)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fake_zenodo import FakeZenodo, FakeZenodoServer

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Six spleen tiles in the NuInsSeg release layout, shipped with the repository (CC BY 4.0).
SAMPLE_ROOT = REPO_ROOT / "examples" / "NuInsSeg"


def _find_shared_data() -> Path:
    """``shared/data`` next to the checkout, or one level up for a git worktree in a sub-folder."""
    for parent in (REPO_ROOT.parent, REPO_ROOT.parent.parent):
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return REPO_ROOT.parent / "shared" / "data"


#: The development machines' copy of one full NuInsSeg organ; absent in a user's fresh clone.
#: NUCLEISAM_SHARED_DATA points elsewhere explicitly; otherwise shared/data is looked for next to
#: the checkout and one level up (a git worktree in a sub-folder).
SHARED_DATA = Path(os.environ["NUCLEISAM_SHARED_DATA"]) if "NUCLEISAM_SHARED_DATA" in os.environ else (
    _find_shared_data()
)
SHARED_NUINSSEG = SHARED_DATA / "NuInsSeg"
SHARED_SPLEEN = SHARED_NUINSSEG / "human spleen"
SHARED_UNLABELLED = SHARED_DATA / "NuInsSeg-unlabelled"

requires_shared_data = pytest.mark.skipif(
    not SHARED_SPLEEN.is_dir(),
    reason=f"shared NuInsSeg spleen tiles not found at {SHARED_SPLEEN} (only on development/CI machines)",
)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """Root of the bundled NuInsSeg sample (organ folders below it)."""
    assert SAMPLE_ROOT.is_dir(), f"bundled sample missing at {SAMPLE_ROOT}"
    return SAMPLE_ROOT


@pytest.fixture
def sample_copy(tmp_path: Path, sample_root: Path) -> Path:
    """A writable copy of the bundled sample below a folder whose name has a space."""
    root = tmp_path / "my data"
    shutil.copytree(sample_root, root)
    return root


@pytest.fixture(scope="session")
def cropped_sample(
    sample_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int, int], Path]:
    """``cropped_sample(count, size)``: the root of a small real data set for end-to-end runs, the
    first ``count`` bundled tiles cropped to their top-left ``size``² (written once per session)."""
    made: dict[tuple[int, int], Path] = {}

    def make(count: int, size: int) -> Path:
        if (count, size) not in made:
            root = tmp_path_factory.mktemp(f"cropped-{count}x{size}") / "NuInsSeg"
            made[count, size] = _write_cropped_sample(sample_root, root, count=count, size=size)
        return made[count, size]

    return make


def save_random_adapter(path: Path) -> Path:
    """A seeded, randomly initialised LoRA + instance-head adapter (input 256, no base checkpoint)
    recording tuned post-processing, as training would."""
    import warnings

    import torch

    from nucleisam.config import ModelConfig
    from nucleisam.model import build_model, save_adapter

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random base weights are the point here
        model = build_model(ModelConfig(input_size=256, weights="none"))
    return save_adapter(model, path, extra_metadata={"postprocess": {"foreground_threshold": 0.45,
                                                                      "min_area": 5}})


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``nucleisam ARGV`` in this process: exit status, stdout, stderr."""
    from nucleisam.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def shared_nuinsseg() -> Path:
    """Root of the shared NuInsSeg copy; tests using it skip where it is absent."""
    if not SHARED_SPLEEN.is_dir():
        pytest.skip(f"shared NuInsSeg data not found at {SHARED_NUINSSEG}")
    return SHARED_NUINSSEG


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread for torch-heavy modules: two threads per process oversubscribe a shared
    2-core machine badly (a 4 s test took 35 s). Use with ``pytestmark = usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised MobileSAM state_dict with the official checkpoint's 439 keys, saved the
    way ``mobile_sam.pt`` is (a flat state_dict), standing in for the weights we cannot download."""
    import torch

    from nucleisam.model.mobilesam import build_mobilesam

    torch.manual_seed(21)
    path = tmp_path_factory.mktemp("weights") / "mobile_sam.pt"
    torch.save(build_mobilesam(256).state_dict(), path)
    return path


@pytest.fixture()
def fake_zenodo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeZenodo]:
    """A zenodo.org stand-in on 127.0.0.1 (tests/fake_zenodo.py): NUCLEISAM_ZENODO_API points at it and
    NUCLEISAM_HOME at an empty ``tmp_path/home``, so no test touches the network or the user's cache."""
    monkeypatch.setenv("NUCLEISAM_HOME", str(tmp_path / "home"))
    for name in ("no_proxy", "NO_PROXY"):  # a proxy configured for the real internet must not intercept
        monkeypatch.setenv(name, "127.0.0.1")
    with FakeZenodoServer() as server:
        monkeypatch.setenv("NUCLEISAM_ZENODO_API", server.api)
        yield server


@pytest.fixture()
def unreachable_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused): offline, without a network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _write_cropped_sample(sample_root: Path, root: Path, *, count: int, size: int) -> Path:
    """Copy the first ``count`` bundled tiles, cropped to their top-left ``size``², into ``root`` in
    the NuInsSeg layout (image, instance labels, vague mask)."""
    import numpy as np
    import tifffile
    from PIL import Image

    from nucleisam.data import load_nuinsseg

    for sample in list(load_nuinsseg(sample_root).samples)[:count]:
        organ = root / sample.image_path.parents[1].name
        for folder in ("tissue images", "label masks modify", "vague areas/mask binary"):
            (organ / folder).mkdir(parents=True, exist_ok=True)
        image = sample.load_image()[:size, :size]
        Image.fromarray(image).save(organ / "tissue images" / f"{sample.stem}.png")
        labels = sample.load_labels()[:size, :size].astype(np.uint16)
        tifffile.imwrite(organ / "label masks modify" / f"{sample.stem}.tif", labels)
        vague = sample.load_vague()
        if vague is not None:
            Image.fromarray((vague[:size, :size] * 255).astype(np.uint8)).save(
                organ / "vague areas" / "mask binary" / f"{sample.stem}.png"
            )
    return root
