"""Compression trained together with distillation: quantization-aware training, unstructured
and channel pruning, regularization; each scheduled by a policy of the run config (the specs
are :mod:`kdistill.policies`), or used directly in your own training loop (see
docs/compression.md); and the export step that writes the int8 model."""

from kdistill.compression.pruning import (
    MaskPruner,
    agp_sparsity,
    apply_layer_shapes,
    channel_prune,
    layer_shapes,
    sparsity_report,
)
from kdistill.compression.quantization import (
    convert_qat,
    freeze_observers,
    layer_settings,
    prepare_qat,
    unfreeze_observers,
)
from kdistill.compression.rebuild import apply_structure
from kdistill.compression.regularization import group_lasso_penalty, l1_penalty

__all__ = [
    "MaskPruner",
    "agp_sparsity",
    "apply_layer_shapes",
    "apply_structure",
    "channel_prune",
    "convert_qat",
    "freeze_observers",
    "group_lasso_penalty",
    "l1_penalty",
    "layer_settings",
    "layer_shapes",
    "prepare_qat",
    "sparsity_report",
    "unfreeze_observers",
]
