"""The teacher-output cache: the only code that persists teacher outputs."""

from kdistill.cache.fingerprint import array_digest, fingerprint, module_digest, tensor_digest
from kdistill.cache.store import (
    CacheError,
    CacheLayout,
    DamagedCacheError,
    TeacherCache,
    build_cache,
    open_cache,
    topk_to_distribution,
)

__all__ = [
    "CacheError",
    "CacheLayout",
    "DamagedCacheError",
    "TeacherCache",
    "array_digest",
    "build_cache",
    "fingerprint",
    "module_digest",
    "open_cache",
    "tensor_digest",
    "topk_to_distribution",
]
