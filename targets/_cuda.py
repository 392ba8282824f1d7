"""Is there a CUDA GPU? Asked of the driver itself (libcuda), so no framework has to be imported."""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def device_count() -> int:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def why_no_gpu() -> str | None:
    """None when a CUDA device is present, else the reason."""
    return None if device_count() > 0 else "no CUDA GPU found (libcuda missing or no device)"
