"""Compression trained together with distillation: quantization-aware training, unstructured
and channel pruning, regularization; each scheduled by a policy of the run config."""

from kdistill.compression.pruning import MaskPruner, agp_sparsity, apply_layer_shapes, layer_shapes
from kdistill.compression.rebuild import rebuild

__all__ = ["MaskPruner", "agp_sparsity", "apply_layer_shapes", "layer_shapes", "rebuild"]
