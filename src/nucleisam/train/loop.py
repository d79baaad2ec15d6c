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
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from nucleisam.config import TrainConfig
from nucleisam.errors import NucleisamError
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
    trainable_state,
)
from nucleisam.utils.tables import write_rows_csv

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.csv"
#: The loop's own bookkeeping in ``train_state.pt``, all read back on resume.
LOOP_STATE_KEYS = ("history", "best_epoch", "best_score", "best_file", "batches_done", "partial_sums")

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


class Trainer:
    """State of one training run; :func:`fit` is the usual entry point."""

    def __init__(
        self,
        model: torch.nn.Module,
        train_set: torch.utils.data.Dataset,
        config: TrainConfig,
        *,
        out_dir: str | Path,
        validate: Validate | None = None,
        context: DistContext | None = None,
        label: str = "",
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.validate = validate
        self.context = context or DistContext()
        self.label = label
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self._print = log or tqdm.write
        self.device = self.context.device
        model.to(self.device)
        if hasattr(model, "trainable_parameters"):
            self.trainable = list(model.trainable_parameters())
        else:
            self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, config)
        self.wrapped: torch.nn.Module = model
        if self.context.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        self.sampler = _SkippingSampler(
            DistributedSampler(
                train_set,  # type: ignore[arg-type]
                num_replicas=self.context.world_size,
                rank=self.context.rank,
                shuffle=True,
                seed=config.seed,
                drop_last=False,
            )
        )
        workers = config.num_workers
        self.loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=pad_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_ignore_sigint_in_worker if workers > 0 else None,
            # Worker seeds come from this generator, not from torch's global RNG, so that creating
            # the loader consumes no global randomness (resume equivalence).
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.batches_per_epoch = len(self.loader)
        steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accumulation)
        self.schedule = WarmupCosine.from_config(config, steps_per_epoch)
        # Progress: completed epochs/steps, batches done inside the current epoch and their sums.
        self.epoch = 0
        self.step = 0
        self.batches_done = 0
        self.partial_sums: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.best_file: str | None = None

    # -- logging and saving ------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.context.is_main:
            self._print(f"{self.label}: {message}" if self.label else message)

    def restore(self) -> bool:
        """Load the checkpoint of ``out_dir`` if there is one; True when resumed."""
        state = load_checkpoint(
            self.ckpt_dir, model=self.model, optimizer=self.optimizer, required=LOOP_STATE_KEYS
        )
        if state is None:
            return False
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best_epoch, self.best_score, self.best_file = (
            state["best_epoch"],
            state["best_score"],
            state["best_file"],
        )
        self.batches_done = int(state["batches_done"])
        self.partial_sums = dict(state["partial_sums"])
        where = f"epoch {self.epoch}" + (f" + {self.batches_done} batches" if self.batches_done else "")
        self.say(f"resumed from {self.ckpt_dir} ({where})")
        return True

    def save(self) -> Path:
        """Checkpoint the current progress (rank 0 writes; every rank waits for it)."""
        if self.context.is_main:
            extra = {
                "history": self.history,
                "best_epoch": self.best_epoch,
                "best_score": self.best_score,
                "best_file": self.best_file,
                "batches_done": self.batches_done,
                "partial_sums": dict(self.partial_sums),
            }
            save_checkpoint(
                self.ckpt_dir,
                model=self.model,
                optimizer=self.optimizer,
                epoch=self.epoch,
                step=self.step,
                extra=extra,
            )
            for stale in self.ckpt_dir.glob("best-*.safetensors"):
                if stale.name != self.best_file:
                    stale.unlink(missing_ok=True)
        self.context.barrier()
        return self.ckpt_dir / "train_state.pt"

    # -- one optimiser step ------------------------------------------------------------------------

    def _forward_backward(self, batch: Mapping[str, torch.Tensor], group_size: int, sync: bool) -> dict:
        images = batch["image"].to(self.device, non_blocking=True)
        targets = {k: batch[k].to(self.device, non_blocking=True) for k in TARGET_KEYS}
        valid = batch["valid"].to(self.device, non_blocking=True)
        no_sync = self.context.distributed and not sync
        with self.wrapped.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with _autocast(self.device, self.config.amp):
                outputs = self.wrapped(images)
            losses = segmentation_loss(outputs, targets, valid, self.config.loss)
            (losses["loss"] / group_size).backward()
        return {k: v.detach().float() for k, v in losses.items()}

    def _reduce(
        self, group: Mapping[str, torch.Tensor], group_size: int, stop: bool
    ) -> tuple[dict, float, bool]:
        """One all-reduce per optimiser step: loss sums, micro-batch count and the stop votes."""
        keys = sorted(group)
        packed = torch.stack(
            [group[k] for k in keys]
            + [
                torch.tensor(float(group_size), device=self.device),
                torch.tensor(float(stop), device=self.device),
            ]
        )
        values = self.context.all_reduce_sum(packed).tolist()
        count = values[-2]
        return {k: v / count for k, v in zip(keys, values[:-2], strict=True)}, count, values[-1] > 0

    def _non_finite(self, means: Mapping[str, float]) -> NonFiniteLossError:
        self.optimizer.zero_grad(set_to_none=True)
        last_good = read_train_state(self.ckpt_dir)
        kept = (
            f"the last good checkpoint (epoch {last_good['epoch']}) is kept in {self.ckpt_dir}"
            if last_good is not None
            else "no checkpoint had been written yet"
        )
        return NonFiniteLossError(
            f"{self.label + ': ' if self.label else ''}training loss became {means['loss']} at epoch "
            f"{self.epoch + 1}, optimiser step {self.step + 1}; that step was not applied and {kept}. "
            f"Lower train.lr (now {self.config.lr}), set train.grad_clip, or check the training images "
            "and masks; then continue the run (resume)."
        )

    def _apply_step(self) -> float:
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        lr = self.schedule.apply(self.optimizer, self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr

    # -- epochs ------------------------------------------------------------------------------------

    def train_epoch(self, stop: _StopRequest) -> dict[str, float]:
        """Train the epoch ``self.epoch`` (from ``batches_done`` on); returns the summed losses."""
        config, accumulation = self.config, self.config.grad_accumulation
        self.sampler.set_epoch(self.epoch)
        first = self.batches_done
        self.sampler.skip = first * config.batch_size
        sums, self.partial_sums = self.partial_sums, {}
        self.wrapped.train()
        progress = tqdm(
            total=self.batches_per_epoch,
            initial=first,
            desc=f"{self.label + ' ' if self.label else ''}epoch {self.epoch + 1}/{config.epochs}",
            disable=not (config.progress and self.context.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        group: dict[str, torch.Tensor] = {}
        for position, batch in enumerate(self.loader, start=first):
            group_start = position - position % accumulation
            group_size = min(accumulation, self.batches_per_epoch - group_start)
            last_in_group = position == group_start + group_size - 1
            for key, value in self._forward_backward(batch, group_size, sync=last_in_group).items():
                group[key] = group.get(key, 0.0) + value
            progress.update(1)
            if not last_in_group:
                continue
            means, count, stop_voted = self._reduce(group, group_size, stop.requested)
            group = {}
            if not all(math.isfinite(v) for v in means.values()):
                progress.close()
                raise self._non_finite(means)
            sums["_lr"] = self._apply_step()
            for key, value in means.items():
                sums[key] = sums.get(key, 0.0) + value * count
            sums["_batches"] = sums.get("_batches", 0.0) + count
            progress.set_postfix(loss=f"{sums['loss'] / sums['_batches']:.4f}", refresh=False)
            if stop_voted:
                progress.close()
                self.batches_done, self.partial_sums = position + 1, sums
                path = self.save()
                self.say(f"stopped at epoch {self.epoch + 1}, batch {position + 1}; saved in {path.parent}")
                raise TrainingInterrupted(
                    f"training interrupted; state saved in {path.parent}. Continue by resuming the run "
                    "(resume).",
                    path,
                )
        progress.close()
        self.batches_done = 0
        return sums

    def validate_epoch(self, row: dict[str, float]) -> bool:
        """Score the model on rank 0, record the metrics in ``row``; True when it is the best so far."""
        improved = False
        if self.context.is_main:
            assert self.validate is not None
            self.model.eval()
            with torch.no_grad(), _autocast(self.device, self.config.amp):
                metrics = dict(self.validate(self.model))
            metric = self.config.select_metric
            if metric not in metrics:
                raise KeyError(f"validation returned no {metric!r} (it returned {sorted(metrics)})")
            row.update({f"val_{k}": float(v) for k, v in metrics.items()})
            score = float(metrics[metric])
            if self.best_score is None or score > self.best_score:
                self.best_epoch, self.best_score = self.epoch + 1, score
                self.best_file = f"best-{self.epoch + 1:04d}.safetensors"
                save_weights(self.ckpt_dir / self.best_file, trainable_state(self.model))
                improved = True
        # Other ranks only need to know which file is the best one (rank 0 writes everything).
        best = torch.tensor([float(self.best_epoch or 0)], dtype=torch.float64)
        self.context.broadcast(best)
        if not self.context.is_main and best.item() > 0:
            self.best_epoch = int(best.item())
            self.best_file = f"best-{self.best_epoch:04d}.safetensors"
        return improved

    def _epoch_line(self, row: Mapping[str, float], improved: bool) -> str:
        parts = "  ".join(
            f"{k.removeprefix('train_')} {v:.4f}" for k, v in row.items() if k.startswith("train_")
        )
        metric = f"val_{self.config.select_metric}"
        val = (
            f"  val {self.config.select_metric} {row[metric]:.4f}{' (best)' if improved else ''}"
            if metric in row
            else ""
        )
        timing = f"{row['seconds']:.1f} s"
        return f"epoch {self.epoch}/{self.config.epochs}  {parts}  lr {row['lr']:.3g}{val}  {timing}"

    def run(self, on_epoch_end: Callable[[int, Mapping[str, float]], None] | None = None) -> FitResult:
        """Train the remaining epochs; see :func:`fit`."""
        config = self.config
        with _StopRequest(self.say) as stop:
            try:
                while self.epoch < config.epochs:
                    started = time.perf_counter()
                    sums = self.train_epoch(stop)
                    row: dict[str, float] = {
                        "epoch": self.epoch + 1,
                        "step": self.step,
                        "lr": sums.get("_lr", 0.0),
                    }
                    batches = max(sums.get("_batches", 0.0), 1.0)  # micro-batches of all processes
                    row.update({f"train_{k}": v / batches for k, v in sums.items() if not k.startswith("_")})
                    due = (self.epoch + 1) % config.validate_every == 0 or self.epoch + 1 == config.epochs
                    improved = self.validate_epoch(row) if self.validate is not None and due else False
                    row["seconds"] = time.perf_counter() - started
                    self.history.append(row)
                    self.epoch += 1
                    self.save()
                    if self.context.is_main:
                        write_rows_csv(self.out / HISTORY_FILE, self.history)
                    self.say(self._epoch_line(row, improved))
                    if on_epoch_end is not None:
                        on_epoch_end(self.epoch, row)
                    if stop.requested:
                        raise TrainingInterrupted(
                            f"training interrupted after epoch {self.epoch}; state saved in {self.ckpt_dir}. "
                            "Continue by resuming the run (resume).",
                            self.ckpt_dir / "train_state.pt",
                        )
            except _OOM_ERRORS as exc:
                raise _oom_error(config, exc) from exc
        return FitResult(
            history=self.history,
            best_epoch=self.best_epoch,
            best_score=self.best_score,
            best_weights=(self.ckpt_dir / self.best_file) if self.best_file else None,
            epochs_completed=len(self.history),
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
        resume: continue from ``out_dir/checkpoint`` when it exists (else start afresh).
        context: process/device context (default: one CPU process).
        label: prefix of log lines (e.g. "fold 2").
        on_epoch_end: called with (epoch, history row) after each epoch's checkpoint is saved.
        log: line printer (default: ``tqdm.write``); only rank 0 logs.
    """
    trainer = Trainer(
        model, train_set, config, out_dir=out_dir, validate=validate, context=context, label=label, log=log
    )
    if not (resume and trainer.restore()):
        seed_everything(config.seed + trainer.context.rank)
    return trainer.run(on_epoch_end)
