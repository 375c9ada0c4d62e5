"""Feature taps: the outputs of named layers, captured during the normal forward pass.

A layer is named by its module path, as in ``model.named_modules()`` (``layer2``,
``features.3``, ``layer3.2.conv1``). :class:`FeatureTaps` registers forward hooks for the
duration of one forward pass (:meth:`FeatureTaps.capture`), so the model is not rewritten, no
second forward runs, and a model replaced during training (compression rebuilds the student)
is tapped by the same names. ``DistributedDataParallel`` wrappers are looked through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``FrozenTeacher``-like) wrapper."""
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _tensor_of(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


TAP_PREFIX = "kdistill_tap_"


def _graph_taps(model: torch.fx.GraphModule, names: Sequence[str]) -> dict[str, nn.Module]:
    """Tap points of an exported graph. Quantization-aware training turns the student into a
    ``torch.fx.GraphModule`` whose layers are operations, not called modules; each layer is
    found by the module path export recorded on its operations (``nn_module_stack``) and
    tapped at the last of them, through an identity module inserted after it (once per
    graph; it holds no state and changes no result)."""
    graph = model.graph
    found: dict[str, nn.Module] = {}
    changed = False
    for name in names:
        tap_name = TAP_PREFIX + name.replace(".", "_")
        if hasattr(model, tap_name):
            found[name] = getattr(model, tap_name)
            continue
        last = None
        for node in graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            if node.op == "call_function" and any(v[0] == name for v in stack.values()):
                last = node
        if last is None:
            continue
        tap = nn.Identity()
        model.add_submodule(tap_name, tap)
        with graph.inserting_after(last):
            tapped = graph.call_module(tap_name, (last,))
        last.replace_all_uses_with(tapped, delete_user_cb=lambda user, t=tapped: user is not t)
        found[name] = tap
        changed = True
    if changed:
        model.recompile()
    return found


def module_shapes(model: nn.Module, sample: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Every named module of ``model`` with the shape of its output for ``sample`` (a batch of
    one sample, run in eval mode without gradients; the model's mode is restored)."""
    model = unwrap(model)
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            t = _tensor_of(out)
            if t is not None and name not in shapes:
                shapes[name] = tuple(t.shape)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(name, shapes[name]) for name, _ in model.named_modules() if name in shapes]


def describe_modules(shapes: Sequence[tuple[str, tuple[int, ...]]], limit: int = 60) -> str:
    """``name (shape)`` lines for an error message."""
    lines = [f"  {name} {list(shape)}" for name, shape in shapes[:limit]]
    if len(shapes) > limit:
        lines.append(f"  ... and {len(shapes) - limit} more")
    return "\n".join(lines)


class FeatureTaps:
    """Captures the outputs of the named modules of a model during one forward pass.

    Args:
        names: module paths, as in ``model.named_modules()``.
        role: ``"student"`` or ``"teacher"`` (for messages).
        clone: copy each captured output (the student's side: a later in-place operation, such
            as ``ReLU(inplace=True)``, would otherwise change the captured tensor).
    """

    def __init__(self, names: Sequence[str], role: str, *, clone: bool = True) -> None:
        self.names = tuple(dict.fromkeys(names))
        self.role = role
        self.clone = clone
        self._modules: tuple[int, dict[str, nn.Module]] | None = None

    def _resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        model = unwrap(model)
        if self._modules is not None and self._modules[0] == id(model):
            return self._modules[1]
        if isinstance(model, torch.fx.GraphModule):  # a QAT student: its layers are operations
            available = _graph_taps(model, self.names)
        else:
            available = dict(model.named_modules())
        missing = [n for n in self.names if n not in available or not n]
        if missing:
            names = ", ".join(n for n in available if n)
            raise ValueError(
                f"the {self.role} has no module named {', '.join(map(repr, missing))}; its "
                f"modules are: {names}"
            )
        found = {n: available[n] for n in self.names}
        self._modules = (id(model), found)
        return found

    @contextlib.contextmanager
    def capture(self, model: nn.Module) -> Iterator[dict[str, Tensor]]:
        """Within the block, forward passes of ``model`` fill the yielded dict (name -> output).
        Nothing is captured (and no hook registered) when there are no names."""
        captured: dict[str, Tensor] = {}
        if not self.names:
            yield captured
            return
        handles = []
        for name, module in self._resolve(model).items():

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                t = _tensor_of(out)
                if t is None:
                    raise ValueError(
                        f"the {self.role}'s module {name!r} returned {type(out).__name__}, not a "
                        "tensor; tap another layer"
                    )
                if name not in captured:  # a module called twice: its first output, as listed
                    captured[name] = t.clone() if self.clone else t

            handles.append(module.register_forward_hook(hook))
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()
