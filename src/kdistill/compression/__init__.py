"""Compression trained together with distillation: quantization-aware training, unstructured
and channel pruning, regularization; each scheduled by a policy of the run config, or used
directly in your own training loop (see docs/compression.md)."""

from kdistill.compression.pruning import (
    MaskPruner,
    agp_sparsity,
    apply_layer_shapes,
    channel_prune,
    layer_shapes,
    sparsity_report,
)
from kdistill.compression.quantization import (
    convert_to_onnx,
    freeze_observers,
    layer_settings,
    onnx_predictor,
    onnx_session,
    prepare_qat,
)
from kdistill.compression.rebuild import rebuild
from kdistill.compression.regularization import group_lasso_penalty, l1_penalty

__all__ = [
    "MaskPruner",
    "agp_sparsity",
    "apply_layer_shapes",
    "channel_prune",
    "convert_to_onnx",
    "freeze_observers",
    "group_lasso_penalty",
    "l1_penalty",
    "layer_settings",
    "layer_shapes",
    "onnx_predictor",
    "onnx_session",
    "prepare_qat",
    "rebuild",
    "sparsity_report",
]
