"""The generic training loop: one model, one training set, optional per-epoch validation.

Works with any module obeying the NucleiSam contract: ``forward(images)`` takes float (B, 3, H, W)
RGB on the 0–255 scale and returns a dict of (B, 1, H, W) maps (``foreground`` logits, and for the
instance head ``center_distance`` / ``boundary_distance`` in [0, 1]); ``train()`` keeps frozen parts
in eval mode; ``trainable_parameters()`` lists what the optimiser updates.

Guarantees:

- **Resumable**: after every epoch a checkpoint (weights, optimiser, step, history, best epoch,
  RNG states) is written atomically; ``resume=True`` continues from it, and with a fixed seed on
  CPU the result equals an uninterrupted run.
- **Ctrl-C** (SIGINT) or SIGTERM: the loop finishes the current optimiser step, saves a checkpoint
  at that point (including the position inside the epoch) and raises :class:`TrainingInterrupted`.
  A second Ctrl-C aborts at once.
- **Non-finite loss**: the step is not applied; :class:`NonFiniteLossError` says where the last
  good checkpoint is. **CUDA out of memory**: a :class:`NucleisamError` suggesting what to lower.
- **DDP** under ``torchrun`` (see :mod:`nucleisam.train.distributed`): each process sees its share
  of every global batch; losses are per-image means, so the trajectory matches one process with
  the same global batch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from nucleisam.errors import NucleisamError
from nucleisam.io.atomic import write_text_atomic
from nucleisam.train.config import TrainConfig
from nucleisam.train.dataset import TARGET_KEYS, EpochSampler, pad_collate
from nucleisam.train.distributed import DistContext
from nucleisam.train.losses import segmentation_loss
from nucleisam.train.schedule import WarmupCosine, build_optimizer
from nucleisam.train.state import (
    load_checkpoint,
    read_train_state,
    save_checkpoint,
    save_weights,
    seed_everything,
)
from nucleisam.train.state import trainable_state as _trainable_state

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)

Validate = Callable[[torch.nn.Module], Mapping[str, float]]


class NonFiniteLossError(NucleisamError):
    """The loss became NaN or infinite; the weights of that step were not applied."""


class TrainingInterrupted(Exception):
    """Training stopped on request after saving a checkpoint; ``--resume`` continues it."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class FitResult:
    """Outcome of :func:`fit`. Epoch numbers are 1-based; ``best_weights`` is a safetensors file
    of the best epoch's trainable state (None without validation)."""

    history: list[dict[str, float]]
    best_epoch: int | None
    best_score: float | None
    best_weights: Path | None
    epochs_completed: int
    extra: dict[str, Any] = field(default_factory=dict)


class _StopRequest:
    """SIGINT/SIGTERM → a flag checked between optimiser steps; a second SIGINT aborts at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.requested = False
        self._log = log
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self._log("stop requested: saving a checkpoint after the current step (Ctrl-C again aborts)")

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_sigint_in_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; workers keep serving batches so the main process can
    # reach the end of its step and save. The main process shuts them down afterwards.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _SkippingSampler(EpochSampler):
    """:class:`EpochSampler` that can skip the first items of the next epoch (resume mid-epoch)."""

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0
        for position, item in enumerate(super().__iter__()):
            if position >= skip:
                yield item


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _oom_error(config: TrainConfig, exc: BaseException) -> NucleisamError:
    return NucleisamError(
        f"the GPU ran out of memory ({str(exc).splitlines()[0]}). Lower train.batch_size (now "
        f"{config.batch_size}) and raise train.grad_accumulation to keep the effective batch, "
        "use model.input_size=512 for native 512² tiles, or keep train.amp=true (bf16)."
    )


def fit(
    model: torch.nn.Module,
    train_set: torch.utils.data.Dataset,
    config: TrainConfig,
    *,
    out_dir: str | Path,
    validate: Validate | None = None,
    resume: bool = False,
    context: DistContext | None = None,
    label: str = "",
    on_epoch_end: Callable[[int, Mapping[str, float]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_set`` for ``config.epochs`` epochs; checkpoints go to ``out_dir``.

    Args:
        model: a module obeying the NucleiSam contract (moved to ``context.device``).
        train_set: items as produced by :class:`~nucleisam.train.dataset.TrainingDataset`
            (``image``, the target maps, ``valid``), addressed by ``(epoch, index)`` keys.
        config: optimisation options.
        out_dir: folder for ``checkpoint/`` and ``history.csv``.
        validate: called on rank 0 with the (unwrapped) model in eval mode under ``no_grad``
            every ``validate_every`` epochs and after the last; returns metrics including
            ``config.select_metric`` (higher is better). The best epoch's weights are kept.
        resume: continue from ``out_dir/checkpoint`` when it exists.
        context: process/device context (default: one CPU process).
        label: prefix of log lines (e.g. "fold 2").
        on_epoch_end: called with (epoch, history row) after each epoch's checkpoint is saved.
        log: line printer (default: ``tqdm.write``); only rank 0 logs.
    """
    context = context or DistContext()
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    printer = log or tqdm.write
    say: Callable[[str], None] = (
        (lambda m: printer(f"{label}: {m}" if label else m)) if context.is_main else (lambda m: None)
    )
    device = context.device
    model.to(device)
    trainable = (
        list(model.trainable_parameters())
        if hasattr(model, "trainable_parameters")
        else [p for p in model.parameters() if p.requires_grad]
    )
    optimizer = build_optimizer(trainable, config)
    wrapped: torch.nn.Module = model
    if context.distributed:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)

    sampler = _SkippingSampler(
        DistributedSampler(
            train_set,  # type: ignore[arg-type]
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=True,
            seed=config.seed,
            drop_last=False,
        )
    )
    workers = config.num_workers
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=pad_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigint_in_worker if workers > 0 else None,
        # Worker seeds come from this generator, not from torch's global RNG, so that creating
        # the loader consumes no global randomness (resume equivalence).
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    schedule = WarmupCosine.from_config(config, steps_per_epoch)

    history: list[dict[str, float]] = []
    best_epoch: int | None = None
    best_score: float | None = None
    best_file: str | None = None
    start_epoch, step, batches_done = 0, 0, 0
    partial: dict[str, float] = {}
    state = load_checkpoint(ckpt_dir, model=model, optimizer=optimizer) if resume else None
    if state is not None:
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = list(state["history"])
        best_epoch, best_score, best_file = state["best_epoch"], state["best_score"], state["best_file"]
        batches_done = int(state["batches_done"])
        partial = dict(state["partial_sums"])
        where = f"epoch {start_epoch}" + (f" + {batches_done} batches" if batches_done else "")
        say(f"resumed from {ckpt_dir} ({where})")
    else:
        seed_everything(config.seed + context.rank)

    def checkpoint(epoch: int, done: int, sums: Mapping[str, float]) -> Path:
        path = ckpt_dir / "train_state.pt"
        if context.is_main:
            extra = {
                "history": history,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "best_file": best_file,
                "batches_done": done,
                "partial_sums": dict(sums),
            }
            save_checkpoint(ckpt_dir, model=model, optimizer=optimizer, epoch=epoch, step=step, extra=extra)
            for stale in ckpt_dir.glob("best-*.safetensors"):
                if stale.name != best_file:
                    stale.unlink(missing_ok=True)
        context.barrier()
        return path

    with _StopRequest(say) as stop:
        try:
            for epoch in range(start_epoch, config.epochs):
                started = time.perf_counter()
                sampler.set_epoch(epoch)
                skip_batches, batches_done = batches_done, 0
                sampler.skip = skip_batches * config.batch_size
                sums = partial or {}
                partial = {}
                wrapped.train()
                progress = tqdm(
                    total=batches_per_epoch,
                    initial=skip_batches,
                    desc=f"{label + ' ' if label else ''}epoch {epoch + 1}/{config.epochs}",
                    disable=not (config.progress and context.is_main),
                    leave=False,
                    dynamic_ncols=True,
                )
                group_losses: dict[str, torch.Tensor] = {}
                for position, batch in enumerate(loader, start=skip_batches):
                    group_start = position - position % config.grad_accumulation
                    group_size = min(config.grad_accumulation, batches_per_epoch - group_start)
                    last_in_group = position == group_start + group_size - 1
                    images = batch["image"].to(device, non_blocking=True)
                    targets = {k: batch[k].to(device, non_blocking=True) for k in TARGET_KEYS}
                    valid = batch["valid"].to(device, non_blocking=True)
                    sync = (
                        contextlib.nullcontext()
                        if last_in_group or not context.distributed
                        else wrapped.no_sync()
                    )
                    with sync:
                        with _autocast(device, config.amp):
                            outputs = wrapped(images)
                        losses = segmentation_loss(outputs, targets, valid, config.loss)
                        (losses["loss"] / group_size).backward()
                    for key, value in losses.items():
                        group_losses[key] = group_losses.get(key, 0.0) + value.detach().float()
                    progress.update(1)
                    if not last_in_group:
                        continue
                    # One all-reduce per optimiser step: summed losses, micro-batch count, flags.
                    keys = sorted(group_losses)
                    packed = torch.stack(
                        [group_losses[k] for k in keys]
                        + [torch.tensor(float(group_size), device=device)]
                        + [torch.tensor(float(stop.requested), device=device)]
                    ).to(device)
                    context.all_reduce_sum(packed)
                    values = packed.tolist()
                    count, stop_votes = values[-2], values[-1]
                    group_means = {k: v / count for k, v in zip(keys, values[:-2], strict=True)}
                    group_losses = {}
                    if not all(math.isfinite(v) for v in group_means.values()):
                        optimizer.zero_grad(set_to_none=True)
                        last_good = read_train_state(ckpt_dir)
                        good = (
                            f"the last good checkpoint (epoch {last_good['epoch']}) is kept in {ckpt_dir}"
                            if last_good is not None
                            else "no checkpoint had been written yet"
                        )
                        raise NonFiniteLossError(
                            f"{label + ': ' if label else ''}training loss became {group_means['loss']} at "
                            f"epoch {epoch + 1}, optimiser step {step + 1}; that step was not applied and "
                            f"{good}. Lower train.lr (now {config.lr}), set train.grad_clip, or check the "
                            "training images and masks; then continue with --resume."
                        )
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                    lr = schedule.apply(optimizer, step)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    for key, value in group_means.items():
                        sums[key] = sums.get(key, 0.0) + value * count
                    sums["_batches"] = sums.get("_batches", 0.0) + count
                    sums["_lr"] = lr
                    progress.set_postfix(loss=f"{sums['loss'] / sums['_batches']:.4f}", refresh=False)
                    if stop_votes > 0:
                        progress.close()
                        path = checkpoint(epoch, position + 1, sums)
                        say(
                            f"stopped at epoch {epoch + 1}, batch {position + 1}; saved in {path.parent}"
                        )
                        raise TrainingInterrupted(
                            f"training interrupted; state saved in {path.parent}. Run the same command "
                            "with --resume to continue.",
                            path,
                        )
                progress.close()

                row: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": sums.get("_lr", 0.0)}
                total = sums.get("_batches", 0.0)  # micro-batches of all processes
                for key, value in sums.items():
                    if not key.startswith("_"):
                        row[f"train_{key}"] = value / max(total, 1.0)
                is_last = epoch + 1 == config.epochs
                note = ""
                if validate is not None and ((epoch + 1) % config.validate_every == 0 or is_last):
                    if context.is_main:
                        model.eval()
                        with torch.no_grad(), _autocast(device, config.amp):
                            metrics = dict(validate(model))
                        if config.select_metric not in metrics:
                            raise KeyError(
                                f"validation returned no {config.select_metric!r}: {sorted(metrics)}"
                            )
                        row.update({f"val_{k}": float(v) for k, v in metrics.items()})
                        score = float(metrics[config.select_metric])
                        if best_score is None or score > best_score:
                            best_epoch, best_score = epoch + 1, score
                            best_file = f"best-{epoch + 1:04d}.safetensors"
                            save_weights(ckpt_dir / best_file, _trainable_state(model))
                            note = " (best)"
                    best_info = torch.tensor(
                        [float(best_epoch or 0), best_score if best_score is not None else float("nan")],
                        dtype=torch.float64,
                    )
                    context.broadcast(best_info)
                    if not context.is_main:
                        best_epoch = int(best_info[0].item()) or None
                        best_file = f"best-{best_epoch:04d}.safetensors" if best_epoch else None
                row["seconds"] = time.perf_counter() - started
                history.append(row)
                checkpoint(epoch + 1, 0, {})
                if context.is_main:
                    _write_history(out / HISTORY_FILE, history)
                parts = "  ".join(
                    f"{k.removeprefix('train_')} {v:.4f}" for k, v in row.items() if k.startswith("train_")
                )
                val = (
                    f"  val {config.select_metric} {row[f'val_{config.select_metric}']:.4f}{note}"
                    if (f"val_{config.select_metric}" in row)
                    else ""
                )
                say(
                    f"epoch {epoch + 1}/{config.epochs}  {parts}  lr {row['lr']:.3g}{val}  "
                    f"{row['seconds']:.1f} s"
                )
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, row)
                if stop.requested:
                    raise TrainingInterrupted(
                        f"training interrupted after epoch {epoch + 1}; state saved in {ckpt_dir}. "
                        "Run the same command with --resume to continue.",
                        ckpt_dir / "train_state.pt",
                    )
        except _OOM_ERRORS as exc:
            raise _oom_error(config, exc) from exc

    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_score=best_score,
        best_weights=(ckpt_dir / best_file) if best_file else None,
        epochs_completed=len(history),
    )
