"""Post-processing in a thread pool while the network runs (``--postprocess-workers``): the same
outputs as the serial path, bounded look-ahead, errors surfacing as before, and no thread left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from conftest import save_random_adapter
from nucleisam.cli import main
from nucleisam.errors import NucleisamError
from nucleisam.predict import distributed
from nucleisam.predict.distributed import MethodSpec, cached_predictor
from nucleisam.predict.predictor import Predictor, auto_postprocess_workers, resolve_postprocess_workers
from nucleisam.utils.pool import ordered_map
from slides_helpers import sample_tiles, write_slide
from synthetic_nuclei import distance_watershed, synthetic_nuclei, threshold_maps


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nucleisam-pool")]


def outputs(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (zarr arrays as their decoded labels), the manifest left out: it
    records seconds."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "manifest.csv":
            continue
        if path.suffix == ".zarr":
            found[path.name] = np.asarray(zarr.open_group(path, mode="r")["0"][:]).tobytes()
        else:
            found[path.name] = path.read_bytes()
    return found


def test_ordered_map_keeps_the_order_when_later_items_finish_first() -> None:
    def slow_first(item: int) -> int:
        time.sleep(0.02 * (5 - item % 5))  # item 0 takes longest
        return item * item

    items = list(range(12))
    assert list(ordered_map(slow_first, items, workers=3, ahead=6)) == [(i, i * i) for i in items]
    assert list(ordered_map(slow_first, items, workers=0, ahead=6)) == [(i, i * i) for i in items]
    assert not pool_threads()


def test_ordered_map_takes_at_most_ahead_items_before_yielding() -> None:
    taken = [0]

    def source() -> Iterator[int]:
        for item in range(20):
            taken[0] += 1
            yield item

    most_ahead = 0
    for done, (item, _) in enumerate(ordered_map(lambda x: x, source(), workers=2, ahead=4)):
        assert item == done
        most_ahead = max(most_ahead, taken[0] - done)
    assert 1 <= most_ahead <= 4


def test_ordered_map_reraises_the_workers_exception_and_stops_the_pool() -> None:
    calls: list[int] = []

    def fails_at_three(item: int) -> int:
        calls.append(item)
        time.sleep(0.01)
        if item == 3:
            raise ValueError("bad tile 3")
        return item

    results = ordered_map(fails_at_three, range(1000), workers=2, ahead=4)
    seen = []
    with pytest.raises(ValueError, match=r"^bad tile 3$"):
        for item, _ in results:
            seen.append(item)
    assert seen == [0, 1, 2]  # everything before the failing item, in order, as the serial path
    assert len(calls) < 10  # the rest was cancelled, not run
    assert not pool_threads()


def test_ordered_map_stops_on_keyboard_interrupt_in_the_caller() -> None:
    """Ctrl-C arrives in the main thread, e.g. while the network runs: no hang, no thread left."""
    started = threading.Event()

    def source() -> Iterator[int]:
        yield from range(3)
        started.wait(5)
        raise KeyboardInterrupt

    def work(item: int) -> int:
        started.set()
        time.sleep(0.05)
        return item

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        for _ in ordered_map(work, source(), workers=2, ahead=8):
            pass
    assert time.perf_counter() - start < 5
    assert not pool_threads()


def test_ordered_map_refuses_bad_counts() -> None:
    with pytest.raises(ValueError, match="workers=-1"):
        list(ordered_map(lambda x: x, [1], workers=-1, ahead=2))
    with pytest.raises(ValueError, match="ahead=0"):
        list(ordered_map(lambda x: x, [1], workers=2, ahead=0))


def test_threads_give_the_serial_result_with_a_network_and_maps() -> None:
    """A tiled image (12 tiles in batches of 3) with maps stitched too: labels, ids and maps equal."""
    image, _ = synthetic_nuclei(700, 900, seed=5)
    results = [Predictor(label_fn=distance_watershed, map_fn=threshold_maps, tile=256, overlap=48,
                         batch_size=3, postprocess_workers=workers).predict(image, return_maps=True)
               for workers in (0, 1, 3)]
    serial = results[0]
    assert serial.n_tiles == 20 and serial.n_nuclei > 100
    for result in results[1:]:
        np.testing.assert_array_equal(result.labels, serial.labels)
        assert result.maps is not None and serial.maps is not None
        for name, values in serial.maps.items():
            np.testing.assert_array_equal(result.maps[name], values)
        assert result.postprocess_seconds > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_in_post_processing_surfaces_as_in_the_serial_path(workers: int) -> None:
    image, _ = synthetic_nuclei(600, 600, seed=1)
    calls = [0]

    def label_fn(maps, tile_image):
        calls[0] += 1
        if calls[0] == 4:
            raise NucleisamError("post-processing failed on tile 4")
        return distance_watershed(maps, tile_image)

    predictor = Predictor(label_fn=label_fn, map_fn=threshold_maps, tile=256, overlap=48, batch_size=2,
                          postprocess_workers=workers)
    with pytest.raises(NucleisamError, match=r"^post-processing failed on tile 4$"):
        predictor.predict(image)
    assert not pool_threads()


def test_cli_outputs_are_byte_identical_for_the_bundled_sample(sample_root: Path, tmp_path: Path) -> None:
    """The classical method and a model (random adapter) on a 2×2 mosaic of the bundled tiles
    (tiled 512 / 256 with overlap): every output file identical to the serial path's."""
    tiles = sample_tiles(sample_root, 4)
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    Image.fromarray(mosaic[:700, :900]).save(tmp_path / "mosaic.png")
    adapter = save_random_adapter(tmp_path / "adapter.safetensors")
    model = ["--adapter", str(adapter), "--tile", "256", "--batch-size", "3", "--device", "cpu"]
    for name, method in (("classical", ["--method", "classical"]), ("model", model)):
        runs = {}
        for workers in ("0", "2"):
            out = tmp_path / f"{name}-{workers}"
            assert main(["predict", str(tmp_path / "mosaic.png"), "--out", str(out), "--mpp", "0.25",
                         "--postprocess-workers", workers, *method]) == 0
            runs[workers] = outputs(out)
        assert sorted(runs["0"]) == ["mosaic_labels.tif", "mosaic_nuclei.csv", "mosaic_nuclei.geojson",
                                     "mosaic_overlay.png"]
        assert runs["2"] == runs["0"], name
        assert tifffile.imread(tmp_path / f"{name}-0" / "mosaic_labels.tif").max() > 20, name


def test_cli_slide_outputs_are_byte_identical(sample_root: Path, tmp_path: Path) -> None:
    tiles = sample_tiles(sample_root, 4)
    image = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    write_slide(tmp_path / "s.tif", image[:900, :1000], mpp=0.25, factors=(1, 2))
    args = ["predict", str(tmp_path / "s.tif"), "--method", "classical", "--tissue", "none", "--tile", "256",
            "--chunk-tiles", "2", "--formats", "csv,geojson,parquet,zarr"]
    assert main([*args, "--out", str(tmp_path / "serial"), "--postprocess-workers", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "threads"), "--postprocess-workers", "2"]) == 0
    serial = outputs(tmp_path / "serial")
    assert sorted(serial) == ["s_labels.zarr", "s_nuclei.csv", "s_nuclei.geojson", "s_nuclei.parquet"]
    assert outputs(tmp_path / "threads") == serial
    assert serial["s_nuclei.csv"].count(b"\n") > 100


def test_cli_error_in_post_processing_fails_the_input_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An exception in the classical post-processing of the fifth tile: the same one-line error on
    stdout and stderr, exit status 2 and no outputs, with and without threads."""
    import nucleisam.classical

    real = nucleisam.classical.classical_instances
    image, _ = synthetic_nuclei(700, 700, seed=2)
    Image.fromarray(image).save(tmp_path / "x.png")
    messages = []
    for workers in ("0", "2"):
        calls = [0]

        def flaky(tile_image, *args, calls=calls, **kwargs):
            calls[0] += 1
            if calls[0] == 5:
                raise ValueError("hematoxylin channel is empty")
            return real(tile_image, *args, **kwargs)

        monkeypatch.setattr(nucleisam.classical, "classical_instances", flaky)
        monkeypatch.setattr(distributed, "_PREDICTORS", {})  # the predictor is built anew with it
        out = tmp_path / f"out{workers}"
        assert main(["predict", str(tmp_path / "x.png"), "--out", str(out), "--method", "classical",
                     "--tile", "256", "--postprocess-workers", workers]) == 2
        assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]
        captured = capsys.readouterr()
        failed = next(x for x in captured.out.splitlines() if "FAILED" in x)
        messages.append((failed.split(": ", 1)[1], captured.err.strip()))
        assert not pool_threads()
    assert messages[0] == messages[1]
    assert messages[0][1] == "nucleisam: error: ValueError: hematoxylin channel is empty"


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_bad_postprocess_workers_is_a_usage_error(value: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "x.png", "--out", str(tmp_path / "o"), "--method", "classical",
              "--postprocess-workers", value])
    assert exit_info.value.code == 2
    assert "--postprocess-workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_auto_uses_the_free_cores_and_one_beside_a_cpu_network() -> None:
    assert auto_postprocess_workers("cuda", 16) == 15  # one core drives the GPU and stitches
    assert auto_postprocess_workers("none", 16) == 16  # the classical method: nothing else to run
    assert auto_postprocess_workers("cpu", 16) == 1  # hides post-processing behind torch's threads
    for network in ("cuda", "none", "cpu"):
        assert auto_postprocess_workers(network, 1) == 0  # a single-core Dask worker starts no thread
    assert resolve_postprocess_workers(3, "cpu", 16) == 3
    assert resolve_postprocess_workers("auto", "cpu", 16) == 1
    with pytest.raises(NucleisamError, match="postprocess_workers=-2"):
        resolve_postprocess_workers(-2, "cuda")
    with pytest.raises(NucleisamError, match="postprocess_workers=-1"):
        Predictor(label_fn=distance_watershed, postprocess_workers=-1)


def test_a_local_dask_worker_post_processes_within_its_share_of_the_cores(monkeypatch) -> None:
    """``--workers N`` gives each worker cores/N (``torch_threads``): one core each → no extra thread;
    the predictor in this process (no Dask) counts every core it may use."""
    monkeypatch.setattr(distributed, "_PREDICTORS", {})
    monkeypatch.setattr(distributed, "available_cores", lambda: 8)
    assert cached_predictor(MethodSpec("classical", torch_threads=1)).postprocess_workers == 0
    assert cached_predictor(MethodSpec("classical", torch_threads=4)).postprocess_workers == 4
    assert cached_predictor(MethodSpec("classical")).postprocess_workers == 8
    assert cached_predictor(MethodSpec("classical", postprocess_workers=2)).postprocess_workers == 2
