"""The generic training loop with a tiny stand-in model: learning, resume, interruption, NaN stop,
gradient accumulation, schedule, RNG state, and DDP with two CPU processes."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from nucleisam.config import TrainConfig
from nucleisam.data import load_nuinsseg
from nucleisam.errors import NucleisamError
from nucleisam.train.dataset import SampleCache, TrainingDataset
from nucleisam.train.loop import NonFiniteLossError, TrainingInterrupted, fit
from nucleisam.train.schedule import WarmupCosine
from nucleisam.train.state import (
    capture_rng_state,
    read_train_state,
    restore_rng_state,
    seed_everything,
    trainable_state,
)
from train_helpers import TinyNucleiNet, simple_targets, write_samples

TINY = dict(epochs=4, batch_size=2, lr=5e-3, num_workers=0, progress=False, seed=3, warmup_fraction=0.1)


def make_model(instance: bool = True) -> TinyNucleiNet:
    torch.manual_seed(123)
    return TinyNucleiNet(instance=instance)


def dataset(root: Path, count: int = 8) -> TrainingDataset:
    samples = write_samples(root, count=count)
    return TrainingDataset(samples, SampleCache("memory", targets_fn=simple_targets), seed=1)


def val_score(model: torch.nn.Module, data: TrainingDataset) -> dict[str, float]:
    """Stand-in validation: foreground Dice of thresholded logits on the training tiles."""
    inter = total = 0.0
    for i in range(len(data)):
        item = data[i]
        pred = model(item["image"][None])["foreground"][0] > 0
        gt = item["foreground"] > 0
        inter += float((pred & gt).sum())
        total += float(pred.sum() + gt.sum())
    return {"aji": 2 * inter / max(total, 1.0)}


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = trainable_state(a), trainable_state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def strip_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_fit_learns_and_writes_outputs(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data")
    model = make_model()
    frozen_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    lines: list[str] = []
    result = fit(
        model,
        data,
        TrainConfig(**TINY),
        out_dir=tmp_path / "run",
        validate=lambda m: val_score(m, data),
        label="fold 0",
        log=lines.append,
    )
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert {
        "train_bce",
        "train_dice",
        "train_center_distance",
        "train_boundary_distance",
        "val_aji",
        "lr",
    } <= set(result.history[0])
    assert result.best_epoch == max(range(1, 5), key=lambda e: result.history[e - 1]["val_aji"])
    assert result.best_weights is not None and result.best_weights.is_file()
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["epoch", "step", "lr"] and "val_aji" in header
    assert len(lines) == 4 and lines[0].startswith("fold 0: epoch 1/4") and "val aji" in lines[0]
    # The frozen part (BatchNorm running stats included) never changed.
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    state = read_train_state(tmp_path / "run" / "checkpoint")  # loads with weights_only=True
    assert state is not None and state["epoch"] == 4 and state["step"] == 16


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data")
    config = TrainConfig(**TINY)
    reference = make_model()
    full = fit(reference, data, config, out_dir=tmp_path / "full", validate=lambda m: val_score(m, data))

    def crash(epoch: int, row: object) -> None:
        if epoch == 2:
            raise RuntimeError("simulated kill after epoch 2")

    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(
            make_model(),
            data,
            config,
            out_dir=tmp_path / "cut",
            validate=lambda m: val_score(m, data),
            on_epoch_end=crash,
        )
    torch.manual_seed(999)  # whatever happened to the global RNG in between must not matter
    resumed_model = make_model()
    resumed = fit(
        resumed_model,
        data,
        config,
        out_dir=tmp_path / "cut",
        validate=lambda m: val_score(m, data),
        resume=True,
    )
    assert same_state(reference, resumed_model)
    assert strip_time(resumed.history) == strip_time(full.history)
    assert (resumed.best_epoch, resumed.best_score) == (full.best_epoch, full.best_score)
    # A finished run resumes to the same result without training again.
    again = fit(make_model(), data, config, out_dir=tmp_path / "cut", resume=True)
    assert again.epochs_completed == 4 and strip_time(again.history) == strip_time(full.history)


class SignalOnLoad(TrainingDataset):
    """Sends SIGINT to this process while loading a chosen item, like a user pressing Ctrl-C."""

    trigger: tuple[int, int] | None = None

    def __getitem__(self, key):
        if key == self.trigger:
            self.trigger = None
            os.kill(os.getpid(), signal.SIGINT)
        return super().__getitem__(key)


def test_ctrl_c_saves_mid_epoch_state_and_resume_is_exact(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "data", count=8)
    cache = SampleCache("memory", targets_fn=simple_targets)
    config = TrainConfig(**TINY)
    reference = make_model()
    full = fit(reference, TrainingDataset(samples, cache, seed=1), config, out_dir=tmp_path / "full")
    data = SignalOnLoad(samples, cache, seed=1)
    # Ask for the stop while the 3rd batch of epoch 2 loads (the 5th item in that epoch's order).
    sampler = torch.utils.data.DistributedSampler(range(8), num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(1)
    data.trigger = (1, list(sampler)[4])
    with pytest.raises(TrainingInterrupted, match=r"\(resume\)") as info:
        fit(make_model(), data, config, out_dir=tmp_path / "cut")
    state = read_train_state(info.value.checkpoint.parent)
    assert state["epoch"] == 1 and state["batches_done"] == 3 and state["step"] == 7
    resumed_model = make_model()
    resumed = fit(resumed_model, data, config, out_dir=tmp_path / "cut", resume=True)
    assert same_state(reference, resumed_model)
    # The interrupted epoch's mean loss is rebuilt from the saved partial sums (float rounding only).
    for row_a, row_b in zip(strip_time(resumed.history), strip_time(full.history), strict=True):
        assert row_a == pytest.approx(row_b, rel=1e-6)


class PoisonedDataset(TrainingDataset):
    """Returns a NaN image from a given epoch on."""

    poison_epoch = 2

    def __getitem__(self, key):
        item = super().__getitem__(key)
        if isinstance(key, tuple) and key[0] >= self.poison_epoch:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "data", count=4)
    data = PoisonedDataset(samples, SampleCache("memory", targets_fn=simple_targets))
    model = make_model()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(epoch: int, row: object) -> None:
        snapshots[epoch] = {k: v.clone() for k, v in trainable_state(model).items()}

    with pytest.raises(NonFiniteLossError) as info:
        fit(model, data, TrainConfig(**TINY), out_dir=tmp_path / "run", on_epoch_end=keep)
    message = str(info.value)
    assert (
        "nan" in message and "epoch 3" in message and "epoch 2) is kept" in message and "train.lr" in message
    )
    assert isinstance(info.value, NucleisamError)
    # The weights were not touched by the NaN step, and the checkpoint on disk is epoch 2's.
    state = read_train_state(tmp_path / "run" / "checkpoint")
    assert state["epoch"] == 2
    for key, value in trainable_state(model).items():
        assert torch.equal(value, snapshots[2][key]), key


def test_gradient_accumulation_matches_a_larger_batch(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data")
    base = dict(TINY, epochs=2)
    big, accumulated = make_model(instance=False), make_model(instance=False)
    for module in (big, accumulated):
        module.head[2].p = 0.0  # no dropout: both runs must see identical arithmetic
    one = fit(big, data, TrainConfig(**dict(base, batch_size=4)), out_dir=tmp_path / "a")
    two = fit(
        accumulated,
        data,
        TrainConfig(**dict(base, batch_size=2, grad_accumulation=2)),
        out_dir=tmp_path / "b",
    )
    assert [r["step"] for r in one.history] == [r["step"] for r in two.history] == [2, 4]
    for a, b in zip(one.history, two.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    sa, sb = trainable_state(big), trainable_state(accumulated)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def test_warmup_cosine_schedule() -> None:
    schedule = WarmupCosine(base_lr=1.0, total_steps=11, warmup_steps=2, min_ratio=0.1)
    lrs = [schedule.lr(s) for s in range(11)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert lrs[6] == pytest.approx(0.55)  # half-way through the decay: 0.1 + 0.9 · ½
    config = TrainConfig(epochs=4, warmup_epochs=1.0)
    assert WarmupCosine.from_config(config, steps_per_epoch=5).warmup_steps == 5
    assert WarmupCosine.from_config(TrainConfig(epochs=4, warmup_fraction=0.25), 5).warmup_steps == 5


def test_rng_state_round_trip() -> None:
    import random

    seed_everything(7)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first  # noqa: NPY002


# --- DDP with two CPU processes ------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    import torch.distributed as dist

    from nucleisam.train.distributed import DistContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # The parent wrote the tiles; workers only read them (two writers would race on the files).
        samples = list(load_nuinsseg(Path(root), strict=True).samples)
        data = TrainingDataset(samples, SampleCache("memory", targets_fn=simple_targets), seed=1)
        model = make_model(instance=True)
        model.head[2].p = 0.0
        config = TrainConfig(**dict(TINY, epochs=3, batch_size=2))
        context = DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
        result = fit(model, data, config, out_dir=Path(out), context=context)
        if rank == 0:
            torch.save(
                {"losses": [r["train_loss"] for r in result.history], "state": trainable_state(model)},
                Path(out) / "result.pt",
            )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_same_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    root = tmp_path / "data"
    write_samples(root, count=8)
    mp.spawn(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(root), str(tmp_path / "ddp")), nprocs=2, join=True
    )
    ddp = torch.load(tmp_path / "ddp" / "result.pt", weights_only=True)

    single_model = make_model(instance=True)
    single_model.head[2].p = 0.0
    data = TrainingDataset(
        list(load_nuinsseg(root, strict=True).samples),
        SampleCache("memory", targets_fn=simple_targets),
        seed=1,
    )
    single = fit(
        single_model, data, TrainConfig(**dict(TINY, epochs=3, batch_size=4)), out_dir=tmp_path / "one"
    )
    assert ddp["losses"] == pytest.approx([r["train_loss"] for r in single.history], rel=1e-4)
    for key, value in trainable_state(single_model).items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=1e-5)


class OutOfMemoryNet(TinyNucleiNet):
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_suggests_smaller_batch_or_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(
        NucleisamError, match=r"ran out of memory.*train\.batch_size \(now 2\).*input_size=512"
    ):
        fit(
            OutOfMemoryNet(),
            dataset(tmp_path / "data", count=2),
            TrainConfig(**TINY),
            out_dir=tmp_path / "run",
        )


def test_resume_refuses_other_base_weights_and_malicious_state(tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", count=2)
    config = TrainConfig(**dict(TINY, epochs=1))
    fit(make_model(), data, config, out_dir=tmp_path / "run")
    other = make_model()
    with torch.no_grad():
        other.encoder[0].weight.add_(1.0)  # a different frozen base
    with pytest.raises(NucleisamError, match="other frozen base weights"):
        fit(other, data, config, out_dir=tmp_path / "run", resume=True)

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"format": 1, "payload": Exploit()}, tmp_path / "run" / "checkpoint" / "train_state.pt")
    with pytest.raises(NucleisamError, match="cannot read checkpoint") as caught:
        read_train_state(tmp_path / "run" / "checkpoint")
    assert not (tmp_path / "pwned").exists()
    assert "weights_only" not in str(caught.value)


def test_resume_from_an_incomplete_train_state_is_a_clear_error(tmp_path: Path) -> None:
    """A train_state.pt without its optimiser (edited, or written by something else) is named, not a
    KeyError from the middle of the loop."""
    data = dataset(tmp_path / "data", count=2)
    config = TrainConfig(**dict(TINY, epochs=1))
    fit(make_model(), data, config, out_dir=tmp_path / "run")
    state_file = tmp_path / "run" / "checkpoint" / "train_state.pt"
    state = torch.load(state_file, weights_only=True)
    del state["optimizer"]
    torch.save(state, state_file)
    with pytest.raises(NucleisamError, match=r"train_state\.pt lacks optimizer"):
        fit(make_model(), data, config, out_dir=tmp_path / "run", resume=True)
    del state["history"]
    state["optimizer"] = {}
    torch.save(state, state_file)
    with pytest.raises(NucleisamError, match=r"lacks history"):
        fit(make_model(), data, config, out_dir=tmp_path / "run", resume=True)


def test_torchrun_environment_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    from nucleisam.train.distributed import init_distributed, launched_by_torchrun

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not launched_by_torchrun()
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.distributed) == (0, 1, True, False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun()


def test_fit_with_the_real_model_trains_lora_and_leaves_frozen_parts_alone(tmp_path: Path) -> None:
    import warnings

    from nucleisam.config import ModelConfig
    from nucleisam.model import build_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random base weights: warned about, intended here
        model = build_model(ModelConfig(mode="lora", head="instance", input_size=128, weights="none"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if "image_encoder" in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_before and all(torch.all(v == 0) for v in lora_before.values())  # B starts at zero
    data = dataset(tmp_path / "data", count=2)
    fit(model, data, TrainConfig(**dict(TINY, epochs=1, batch_size=2)), out_dir=tmp_path / "run")
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert all(torch.equal(dict(model.named_buffers())[n], v) for n, v in buffers.items())  # no BN drift
    assert any(not torch.equal(after[n], v) for n, v in lora_before.items())  # LoRA really trained
