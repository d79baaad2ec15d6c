"""``--scheduler``: slide chunks on a Dask cluster that nucleisam did not start, as on SLURM with
dask-jobqueue. Here the cluster is a ``dask scheduler`` and a ``dask worker`` started as their own
processes, the way a cluster's job scripts start them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from nucleisam import batch
from nucleisam.cli import main
from nucleisam.predict.distributed import open_runner
from slides_helpers import write_slide
from synthetic_nuclei import synthetic_nuclei

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).with_name("dask")


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a running scheduler with two single-threaded worker processes."""
    if not DASK.exists():
        pytest.skip(f"no dask command beside {sys.executable}")
    folder = tmp_path_factory.mktemp("cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = (folder / "scheduler.log").open("w"), (folder / "worker.log").open("w")
    processes = [subprocess.Popen([str(DASK), "scheduler", "--scheduler-file", str(scheduler_file),
                                   "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                                  cwd=folder, env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, (folder / "scheduler.log").read_text()
            time.sleep(0.2)
        processes.append(subprocess.Popen(
            [str(DASK), "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "2",
             "--nthreads", "1", "--no-dashboard", "--local-directory", str(folder / "workers")],
            cwd=folder, env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def test_an_existing_cluster_gives_the_same_outputs_as_one_process(scheduler_address: str,
                                                                   tmp_path: Path) -> None:
    scene = synthetic_nuclei(512, 768, seed=11)[0]
    write_slide(tmp_path / "s.tif", scene, mpp=0.25, factors=(1, 2))
    args = ["predict", str(tmp_path / "s.tif"), "--method", "classical", "--tissue", "none", "--tile", "256",
            "--chunk-tiles", "1", "--formats", "csv,geojson,zarr"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "cluster"), "--scheduler", scheduler_address]) == 0
    for name in ("s_nuclei.csv", "s_nuclei.geojson"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "cluster" / name).read_bytes()
    labels = [zarr.open_group(tmp_path / run / "s_labels.zarr", mode="r")["0"][:]
              for run in ("one", "cluster")]
    np.testing.assert_array_equal(*labels)
    assert labels[0].max() > 100


def test_a_scheduler_that_does_not_answer_fails_each_slide_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The address is tried once (distributed waits 30 s for it); the second slide fails at once with
    the same reason instead of waiting again, nothing of either slide is written, exit 2."""
    scene = synthetic_nuclei(256, 256, seed=2)[0]
    for name in ("a", "b"):
        write_slide(tmp_path / f"{name}.tif", scene, mpp=0.25, factors=(1, 2))  # pyramids: read as slides
    out = tmp_path / "out"
    attempts = []

    def counted_open_runner(*args, **kwargs):
        attempts.append(args)
        return open_runner(*args, **kwargs)

    monkeypatch.setattr(batch, "open_runner", counted_open_runner)
    code = main(["predict", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--method", "classical",
                 "--tissue", "none", "--out", str(out), "--scheduler", "tcp://127.0.0.1:9"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "2 of 2 inputs failed (a.tif, b.tif)" in captured.err
    failures = [line for line in captured.out.splitlines() if "FAILED" in line]
    assert len(failures) == 2
    assert all("--scheduler tcp://127.0.0.1:9: cannot connect" in line for line in failures)
    assert len(attempts) == 1
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]


@pytest.mark.parametrize(("name", "gpus", "expected"), [
    (0, 4, "cuda:0"), (5, 4, "cuda:1"),  # LocalCluster: 0, 1, ...
    ("gpu-node-3", 2, "cuda:1"),  # dask worker --name gpu-node --nworkers N
    ("tcp://10.1.2.3:40123", 4, "cuda"),  # an address carries no number: the worker's own default GPU
    (2, 1, "cuda"),  # one visible GPU (dask-cuda, a SLURM job per GPU)
])
def test_each_worker_of_a_multi_gpu_machine_takes_its_own_gpu(
        name: object, gpus: int, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed
    import torch

    from nucleisam.predict.distributed import _worker_device

    monkeypatch.setattr(distributed, "get_worker", lambda: type("Worker", (), {"name": name})())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert _worker_device("cuda") == expected
    assert _worker_device("auto") == ("auto" if expected == "cuda" else expected)  # auto stays auto there
    assert _worker_device("cpu") == "cpu"


def test_a_local_cluster_does_not_need_the_default_dashboard_port() -> None:
    """Two runs on one server (two users, two cohorts) must not fight over Dask's port 8787: with it
    taken, --workers starts its cluster without a warning."""
    import socket
    import warnings

    from nucleisam.predict.distributed import open_runner

    holder = socket.socket()
    with contextlib.suppress(OSError):  # already taken by someone else: the same situation
        holder.bind(("", 8787))
        holder.listen()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with open_runner(2) as runner:
                assert callable(runner)
    finally:
        holder.close()
