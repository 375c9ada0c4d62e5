"""How a run's training loop runs (:class:`~kdistill.engine.trainer.Loop`), from its config:
the one place image and language-model runs build it."""

from __future__ import annotations

import torch

from kdistill.config.schema import RunConfig
from kdistill.engine.schedule import build_lr_factor
from kdistill.engine.trainer import Loop


def build_loop(
    cfg: RunConfig, device: torch.device, num_classes: int, batches_per_epoch: int, world: int
) -> Loop:
    """The loop of ``cfg`` on ``device``: epochs, the learning-rate schedule over the optimizer
    steps of ``batches_per_epoch`` batches, precision, clipping, accumulation, and data
    parallelism over ``world`` processes; the best epoch is chosen once compression has given
    the student its final form."""
    steps_per_epoch = -(-batches_per_epoch // cfg.train.grad_accumulation)
    return Loop(
        epochs=cfg.train.epochs,
        device=device,
        num_classes=num_classes,
        lr_factor=build_lr_factor(
            cfg.schedule, steps_per_epoch=steps_per_epoch, epochs=cfg.train.epochs
        ),
        precision=cfg.train.precision,
        grad_clip=cfg.optim.grad_clip,
        grad_accumulation=cfg.train.grad_accumulation,
        data_parallel=world > 1,
        sync_batchnorm=cfg.train.sync_batchnorm,
        sharded=world > 1 and cfg.train.parallel == "fsdp",
        selectable_from=cfg.final_form_epoch,
    )
