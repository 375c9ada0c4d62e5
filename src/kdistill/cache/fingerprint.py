"""Fingerprints: a hash of everything that determines a teacher's outputs.

Hashing the actual bytes (teacher weights, training images, sample ids) rather than file
names or timestamps is what makes a stale cache impossible rather than unlikely. The one
exception is a streamed image folder, whose images are not read to key the cache: there the key
is each file's path, size, modification time and change time (``ImageFiles.digest``), which a
rewrite or a swap of files changes even when the modification time is restored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def tensor_digest(tensor: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer of a module (persistent or not), by name."""
    h = hashlib.sha256()
    named = dict(module.named_parameters())
    named.update(dict(module.named_buffers()))
    for name in sorted(named):
        h.update(name.encode())
        h.update(tensor_digest(named[name]).encode())
    return h.hexdigest()


def array_digest(array: np.ndarray | Tensor) -> str:
    return tensor_digest(
        torch.as_tensor(np.asarray(array)) if isinstance(array, np.ndarray) else array
    )


def fingerprint(description: Mapping[str, Any]) -> str:
    """sha256 of a JSON description (keys sorted): the cache's identity."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
