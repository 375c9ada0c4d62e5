"""``FrozenTeacher``: a trained model used only for inference, whatever its container does."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from kdistill.types import TeacherOutput, logits_of
from kdistill.validation import BN_POLICIES, BatchNormPolicy


class Renormalize(nn.Module):
    """Maps inputs normalized with one mean/std to inputs normalized with another.

    Use it as a teacher's ``input_transform`` when the teacher was trained on differently
    normalized inputs than the student sees: ``x_t = (x_s * std_s + mean_s - mean_t) / std_t``.
    Means and stds are per channel (dimension 1; per feature for ``(N, F)`` vectors).
    """

    def __init__(
        self,
        from_mean: Sequence[float],
        from_std: Sequence[float],
        to_mean: Sequence[float],
        to_std: Sequence[float],
    ) -> None:
        super().__init__()
        lengths = {len(from_mean), len(from_std), len(to_mean), len(to_std)}
        if len(lengths) != 1:
            raise ValueError(
                "Renormalize needs one value per channel in every mean/std, got lengths "
                f"{len(from_mean)}, {len(from_std)}, {len(to_mean)}, {len(to_std)}"
            )
        for name, std in (("from_std", from_std), ("to_std", to_std)):
            if any(s <= 0 for s in std):
                raise ValueError(f"{name} must be > 0 for every channel, got {list(std)}")

        def vec(v: Sequence[float]) -> Tensor:
            return torch.tensor(list(v), dtype=torch.float32)

        # x_t = x_s * scale + shift, folded once here.
        self.register_buffer("scale", vec(from_std) / vec(to_std), persistent=False)
        self.register_buffer(
            "shift", (vec(from_mean) - vec(to_mean)) / vec(to_std), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        # one value per channel (dimension 1), broadcast over any spatial dimensions
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype)


class Resize(nn.Module):
    """Resizes image batches ``(N, C, H, W)`` to ``size`` (bilinear, antialiased when it
    shrinks): a teacher's ``input_transform`` when it takes another resolution than the
    student sees. The size is a buffer, so a cache's fingerprint covers it."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        if len(size) != 2 or any(s < 1 for s in size):
            raise ValueError(f"Resize needs (height, width) >= 1, got {list(size)}")
        self.register_buffer("size", torch.tensor(list(size), dtype=torch.int64), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        size = (int(self.size[0]), int(self.size[1]))
        if tuple(x.shape[-2:]) == size:
            return x
        shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        return nn.functional.interpolate(
            x, size=size, mode="bilinear", align_corners=False, antialias=shrink
        )


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@contextlib.contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers normalize with batch statistics and update nothing.

    With ``training=True`` and ``track_running_stats=False`` PyTorch's BatchNorm uses the
    batch's statistics and neither reads nor writes the running buffers or the batch counter.
    """
    saved = [
        (m, m.training, m.track_running_stats) for m in model.modules() if isinstance(m, _BN_TYPES)
    ]
    try:
        for m, _, _ in saved:
            m.training = True
            m.track_running_stats = False
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            m.track_running_stats = track


class FrozenTeacher(nn.Module):
    """A trained teacher that never trains.

    * eval mode is pinned: ``.train()`` on this module (or on anything containing it) leaves the
      wrapped model in eval mode, so dropout stays off and BatchNorm statistics never move;
    * every parameter has ``requires_grad=False``;
    * the forward pass runs under :func:`torch.inference_mode`; outputs are returned as normal
      tensors (safe to use in the student's loss).

    Args:
        model: the trained teacher network; its output is logits (or a tuple / dict holding them).
        input_transform: optional callable applied to the inputs first, e.g. :class:`Renormalize`
            when the teacher expects differently normalized inputs than the student.
        bn_policy: ``"frozen"`` (default): BatchNorm uses its running statistics, which never
            change. ``"batch_stats"``: BatchNorm normalizes with each batch's statistics, still
            without updating the running ones (for a teacher facing shifted input statistics).
        dtype: run the teacher under autocast to this dtype (e.g. ``torch.bfloat16``) to make it
            cheaper; ``None`` keeps its own precision. Half-precision outputs are returned as float32.
        channels_last: store the teacher's weights and feed its inputs in channels-last memory
            format (faster convolutions on some hardware; measure before relying on it).

    Call as ``teacher(inputs)`` to get a :class:`kdistill.TeacherOutput` with logits.
    """

    is_teacher = True

    def __init__(
        self,
        model: nn.Module,
        *,
        input_transform: Callable[[Tensor], Tensor] | None = None,
        bn_policy: BatchNormPolicy = "frozen",
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"FrozenTeacher needs an nn.Module, got {type(model).__name__}")
        if bn_policy not in BN_POLICIES:
            raise ValueError(f"bn_policy must be one of {BN_POLICIES}, got {bn_policy!r}")
        if dtype is not None and dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(
                f"dtype must be torch.bfloat16, torch.float16, torch.float32 or None, got {dtype}"
            )
        self.model = model.requires_grad_(False).eval()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.input_transform = input_transform
        self.bn_policy: BatchNormPolicy = bn_policy
        self.dtype = dtype
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: a frozen teacher is always in eval mode."""
        return super().train(False)

    def forward(
        self,
        inputs: Tensor,
        *,
        sample_ids: Tensor | None = None,
        views: Tensor | None = None,
    ) -> TeacherOutput:
        with torch.inference_mode():
            x = self.input_transform(inputs) if self.input_transform is not None else inputs
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            bn = (
                _batch_statistics(self.model)
                if self.bn_policy == "batch_stats"
                else contextlib.nullcontext()
            )
            with bn, self._autocast(x.device.type):
                logits = logits_of(self.model(x))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        # A clone made outside inference mode is an ordinary tensor that autograd may save.
        return TeacherOutput(logits=logits.clone())

    def _autocast(self, device_type: str) -> contextlib.AbstractContextManager[object]:
        """The teacher's precision: autocast to ``dtype`` when it is a half precision."""
        if self.dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    @property
    def gives_last_hidden(self) -> bool:
        """Whether the wrapped model is a language model whose logits are exactly a bias-free
        ``head`` over its last hidden states (``hidden_states(ids)``), as it says with
        ``gives_last_hidden = True``: kdistill's GPTs, and ``hf:`` / GGUF causal LMs whose
        logits are not scaled or capped."""
        from torch.distributed.fsdp import FSDPModule

        head = getattr(self.model, "head", None)
        return (
            not isinstance(self.model, FSDPModule)  # sharded: weights gathered in forward only
            and bool(getattr(self.model, "gives_last_hidden", False))
            and callable(getattr(self.model, "hidden_states", None))
            and isinstance(head, nn.Linear)
            and head.bias is None
        )

    def last_hidden(self, inputs: Tensor) -> TeacherOutput:
        """The teacher's last hidden states and output head instead of its logits (a
        ``(tokens, vocab)`` tensor that a chunked loss computes a few tokens at a time)."""
        if not self.gives_last_hidden:
            raise ValueError(
                f"{type(self.model).__name__} gives no last hidden states with a bias-free head"
            )
        with torch.inference_mode(), self._autocast(inputs.device.type):
            hidden = self.model.hidden_states(inputs)
        # a float32 clone made outside inference mode is an ordinary tensor autograd may save;
        # the head is a frozen parameter, shared as it is (no copy of a vocabulary-sized matrix)
        return TeacherOutput(
            last_hidden=hidden.float().clone(), head_weight=self.model.head.weight.detach().float()
        )


def as_teacher(obj: nn.Module) -> nn.Module:
    """``obj`` itself if it is a teacher object (``is_teacher = True``), else ``FrozenTeacher(obj)``.

    Teacher objects (frozen, ensemble, cached, or a user's own class with ``is_teacher = True``)
    return a :class:`TeacherOutput`; any other ``nn.Module`` is taken to be a trained network
    that returns logits, and is frozen.
    """
    if getattr(obj, "is_teacher", False):
        return obj
    if isinstance(obj, nn.Module):
        return FrozenTeacher(obj)
    raise ValueError(
        f"a teacher must be an nn.Module or a teacher object, got {type(obj).__name__}"
    )
