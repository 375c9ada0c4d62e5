"""A student with low-rank adapters as its own teacher: its frozen base weights, the adapters
switched off for the teacher's forward pass, without a second copy of the model in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class AdaptersOff(nn.Module):
    """The base model under ``student``'s adapters (peft's LoRA layers, found by their
    ``_disable_adapters`` switch), as a model: its forward pass runs the student with every
    adapter off and in eval mode, then puts both back. The student is referenced, not
    registered, so the teacher adds no parameters to an optimizer or a device move;
    ``named_parameters`` gives the base weights (under the base model's own names), so a
    teacher cache's fingerprint is the base model's."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_student", student)  # not a submodule: nothing is shared twice
        if not self._switches():
            raise ValueError("the student has no low-rank adapters to switch off")

    def _switches(self) -> list[nn.Module]:
        return [m for m in self._student.modules() if hasattr(m, "_disable_adapters")]

    @contextmanager
    def _base(self) -> Iterator[nn.Module]:
        switches = self._switches()
        before = [m._disable_adapters for m in switches]
        was_training = self._student.training
        for m in switches:
            m._disable_adapters = True
        self._student.eval()
        try:
            yield self._student
        finally:
            for m, value in zip(switches, before, strict=True):
                m._disable_adapters = value
            self._student.train(was_training)

    def forward(self, ids: Tensor, **kwargs) -> Tensor:
        with self._base() as base:
            return base(ids, **kwargs)

    def hidden_states(self, ids: Tensor) -> Tensor:
        with self._base() as base:
            return base.hidden_states(ids)

    @property
    def head(self) -> nn.Module | None:
        return getattr(self._student, "head", None)

    @property
    def gives_last_hidden(self) -> bool:
        return bool(getattr(self._student, "gives_last_hidden", False))

    @property
    def vocab_size(self) -> int | None:
        return getattr(self._student, "vocab_size", None)

    @property
    def context(self) -> int | None:
        return getattr(self._student, "context", None)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate=True):
        """The base weights (what this teacher computes with), under the base model's names."""
        for name, p in self._student.named_parameters(remove_duplicate=remove_duplicate):
            if ".lora_" not in f".{name}":
                yield prefix + name.replace(".base_layer.", "."), p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate=True):
        """The base model's buffers (rotary tables...), under its own names."""
        for name, b in self._student.named_buffers(remove_duplicate=remove_duplicate):
            yield prefix + name.replace(".base_layer.", "."), b
