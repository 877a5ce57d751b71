"""The optimisation loop shared by both detectors: losses, EMA, progress bar, budgets.

Runs under ``accelerate`` (one or many GPUs, bf16 on CUDA, plain CPU otherwise), keeps an EMA
copy (``ema_pytorch``), shows one tqdm bar over all steps (loss, epoch, ETA, time budget left)
and stops at the first of: the last epoch, ``max_steps``, or the wall-clock ``deadline`` less
the time it will take to calibrate (``reserve_steps`` optimiser steps' worth). No files here:
the caller saves checkpoints in ``on_epoch_end``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader


class StopReason(StrEnum):
    """Why the loop ended; reported by ``tamperscan train``."""

    EPOCHS = "epochs"
    MAX_STEPS = "max_steps"
    TIME_BUDGET = "time_budget"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def training_loss(
    kind: str, model: nn.Module, batch: torch.Tensor, max_timestep: int | None = None
) -> torch.Tensor:
    """BTD: the library's diffusion loss (pred_noise) at t uniform in [0, ``max_timestep``]
    (all timesteps when None, as ``GaussianDiffusion.forward`` does). Inpaint: hole MSE."""
    if kind == "btd":
        diffusion = _unwrap(model)
        if max_timestep is None:
            return model(batch)
        t = torch.randint(0, max_timestep + 1, (batch.shape[0],), device=batch.device).long()
        return diffusion.p_losses(diffusion.normalize(batch), t)
    pred = model(batch)
    mask = _unwrap(model).mask
    return ((pred - batch).square() * mask).sum() / (mask.sum() * batch.shape[0])


@dataclass
class FitResult:
    model: nn.Module
    ema: Any
    losses: list[float] = field(default_factory=list)
    stopped: StopReason = StopReason.EPOCHS
    seconds: float = 0.0

    def __iter__(self) -> Iterator[Any]:  # ``model, ema, losses = fit(...)`` still works
        return iter((self.model, self.ema, self.losses))


def _accelerator(device: str) -> Any:
    from accelerate import Accelerator

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    bf16 = not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")


def _total_steps(
    loader: Any, epochs: int, start_epoch: int, start: int, max_steps: int | None
) -> int | None:
    try:
        total = start + len(loader) * (epochs - start_epoch)
    except TypeError:  # an iterable without a length
        return max_steps
    return min(total, max_steps) if max_steps is not None else total


class _Progress:
    """The step counter, the stop rules and the tqdm bar (whose total follows the budget)."""

    def __init__(
        self,
        kind: str,
        start_step: int,
        max_steps: int | None,
        max_seconds: float | None,
        reserve_steps: float,
        show: bool,
    ) -> None:
        self.kind, self.start_step, self.step = kind, start_step, start_step
        self.max_steps, self.reserve = max_steps, reserve_steps
        self.started = time.monotonic()
        self.deadline = None if max_seconds is None else self.started + max_seconds
        self.show = show
        self.bar: Any = None
        self.planned: int | None = None

    def open(self, planned: int | None) -> None:
        from tqdm.auto import tqdm

        self.planned = planned
        self.bar = tqdm(
            total=planned,
            initial=self.step,
            desc=f"train {self.kind}",
            unit="step",
            file=sys.stderr,
            disable=not self.show,
            dynamic_ncols=True,
        )

    def mean_step_s(self) -> float:
        done = self.step - self.start_step
        return (time.monotonic() - self.started) / done if done else 0.0

    def stepped(self, loss: float, epoch: str) -> None:
        self.step += 1
        self.bar.update(1)
        postfix = {"loss": f"{loss:.4f}", "epoch": epoch}
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            postfix["budget"] = f"{left / 60:.1f} min"
            affordable = self.step + max(0, int(left / self.mean_step_s() - self.reserve))
            self.bar.total = affordable if self.planned is None else min(self.planned, affordable)
        self.bar.set_postfix(postfix, refresh=False)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop_reason(self) -> StopReason | None:
        if self.max_steps is not None and self.step >= self.max_steps:
            return StopReason.MAX_STEPS
        if self.deadline is None:
            return None
        if time.monotonic() + self.mean_step_s() * (1 + self.reserve) >= self.deadline:
            return StopReason.TIME_BUDGET
        return None

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.monotonic() - self.started


def fit(
    kind: str,
    model: nn.Module,
    batches: Callable[[int], Iterable[torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    start_epoch: int = 0,
    start_step: int = 0,
    ema_decay: float = 0.995,
    optimizer_state: dict | None = None,
    ema_state: dict | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    progress: bool = True,
    on_epoch_end: Callable[[int, int, nn.Module, Any, Any], None] | None = None,
    accelerator: Any = None,
    max_seconds: float | None = None,
    between_steps: Callable[[], None] | None = None,
    max_timestep: int | None = None,
    reserve_steps: float = 0.0,
    after_step: Callable[[int, float, nn.Module, Any], None] | None = None,
) -> FitResult:
    """Train; returns the model, its EMA, the per-step losses and why it stopped.

    ``batches(epoch)`` yields the epoch's batches (a DataLoader, or anything iterable).
    ``between_steps`` runs after every optimiser step: retraining inside serve passes one that
    waits while studies are being scored, so live scoring keeps the device. ``max_seconds``
    is a budget from now; the loop stops ``reserve_steps`` mean step times before it runs out.
    ``after_step(step, elapsed_s, model, ema)`` runs on the main process after every step
    (snapshots of the weights along the way).
    """
    from ema_pytorch import EMA

    accelerator = accelerator or _accelerator(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    ema = EMA(model, beta=ema_decay, update_every=10, include_online_model=False)
    if ema_state:
        ema.load_state_dict(ema_state)
    ema.to(accelerator.device)
    model, opt = accelerator.prepare(model, opt)
    result = FitResult(model, ema)
    show = progress and accelerator.is_main_process
    run = _Progress(kind, start_step, max_steps, max_seconds, reserve_steps, show)
    for epoch in range(start_epoch, epochs):
        model.train()
        loader = batches(epoch)
        if isinstance(loader, DataLoader):  # shard across processes under `accelerate launch`
            loader = accelerator.prepare_data_loader(loader)
        if run.bar is None:
            run.open(_total_steps(loader, epochs, start_epoch, start_step, max_steps))
        for batch in loader:
            with accelerator.autocast():
                loss = training_loss(kind, model, batch.to(accelerator.device), max_timestep)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update()
            result.losses.append(float(loss.detach()))
            run.stepped(result.losses[-1], f"{epoch + 1}/{epochs}")
            if between_steps is not None:
                between_steps()
            if after_step is not None and accelerator.is_main_process:
                after_step(run.step, run.elapsed(), accelerator.unwrap_model(model), ema)
            if run.stop_reason() is not None:
                break
        if on_epoch_end is not None and accelerator.is_main_process:
            on_epoch_end(epoch + 1, run.step, accelerator.unwrap_model(model), ema, opt)
        reason = run.stop_reason()
        if reason is not None:
            result.stopped = reason
            break
    result.seconds = run.close()
    result.model = accelerator.unwrap_model(model)
    return result
