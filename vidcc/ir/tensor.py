"""Tensor types and constants of the IR."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = Union[int, str, None]  # a fixed size, a symbolic name ("frames"), or unknown


@dataclass(frozen=True)
class TensorType:
    """dtype is an ONNX TensorProto.DataType value (0 = unknown); shape None = unknown rank."""

    dtype: int = 0
    shape: tuple[Dim, ...] | None = None

    @property
    def np_dtype(self) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.dtype)

    def __str__(self) -> str:
        name = TensorProto.DataType.Name(self.dtype).lower() if self.dtype else "?"
        if self.shape is None:
            return f"{name}[*]"
        return f"{name}[{','.join('?' if d is None else str(d) for d in self.shape)}]"


class Constant:
    """An initializer. The numpy array is made on first use; external data is memory-mapped, so a
    constant no pass changes is never copied, on load or on save."""

    __slots__ = ("name", "_proto", "_array", "_external")

    def __init__(self, name: str, *, proto: TensorProto | None = None, array: np.ndarray | None = None,
                 external: tuple[Path, int, int] | None = None):
        self.name = name
        self._proto = proto
        self._array = array
        self._external = external  # (file, offset, length) of raw little-endian data
        if array is not None:
            array.flags.writeable = False

    @classmethod
    def from_proto(cls, proto: TensorProto, base_dir: Path) -> "Constant":
        if proto.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in proto.external_data}
            location = info.get("location", "")
            path = resolve_external_path(base_dir, location, proto.name)
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else path.stat().st_size - offset
            return cls(proto.name, proto=proto, external=(path, offset, length))
        return cls(proto.name, proto=proto)

    @property
    def dtype(self) -> int:
        if self._proto is not None:
            return self._proto.data_type
        return helper.np_dtype_to_tensor_dtype(self._array.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._proto is not None:
            return tuple(self._proto.dims)
        return tuple(self._array.shape)

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    @property
    def nbytes(self) -> int:
        if self._external is not None:
            return self._external[2]
        if self._array is not None:
            return self._array.nbytes
        itemsize = helper.tensor_dtype_to_np_dtype(self.dtype).itemsize if self.dtype else 0
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_external(self) -> bool:
        return self._external is not None

    @property
    def array(self) -> np.ndarray:
        """Read-only view of the values (memory-mapped for external data)."""
        if self._array is None:
            if self._external is not None:
                self._array = _map_external(self._external, self.dtype, self.shape)
            else:
                self._array = numpy_helper.to_array(self._proto)
                self._array.flags.writeable = False
        return self._array

    def raw_chunks(self, chunk: int = 64 << 20):
        """The tensor's raw bytes in pieces, without materialising a copy of a mapped tensor."""
        if self.is_external:
            path, offset, length = self._external
            with open(path, "rb") as f:
                f.seek(offset)
                left = length
                while left:
                    piece = f.read(min(chunk, left))
                    if not piece:
                        raise onnx.checker.ValidationError(f"external data of '{self.name}' is truncated")
                    left -= len(piece)
                    yield piece
        else:
            data = np.ascontiguousarray(self.array)
            flat = data.reshape(-1).view(np.uint8)
            for start in range(0, flat.size, chunk):
                yield flat[start:start + chunk].tobytes()

    def to_proto(self) -> TensorProto:
        """An embedded TensorProto (only for constants small enough to embed)."""
        if self._proto is not None and self._proto.data_location != TensorProto.EXTERNAL:
            return self._proto
        proto = numpy_helper.from_array(np.asarray(self.array), self.name)
        if self._proto is not None:
            proto.doc_string = self._proto.doc_string
        return proto

    def header_proto(self) -> TensorProto:
        """name, dims, dtype, doc_string: everything but the data."""
        proto = TensorProto(name=self.name, data_type=self.dtype, dims=list(self.shape))
        if self._proto is not None:
            proto.doc_string = self._proto.doc_string
        return proto


def resolve_external_path(base_dir: Path, location: str, tensor: str) -> Path:
    """External data must stay inside the model's directory: a `location` that escapes it is refused."""
    from vidcc.errors import ModelError

    if not location:
        raise ModelError(f"initializer '{tensor}' has external data without a location")
    base = base_dir.resolve()
    path = (base / location).resolve()
    if os.path.isabs(location) or (path != base and base not in path.parents):
        raise ModelError(f"initializer '{tensor}': external data location '{location}' escapes the model directory")
    if not path.is_file():
        raise ModelError(f"initializer '{tensor}': external data file '{location}' not found next to the model")
    return path


def _map_external(external: tuple[Path, int, int], dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    from vidcc.errors import ModelError

    path, offset, length = external
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if count * np_dtype.itemsize != length or offset + length > path.stat().st_size:
        raise ModelError(f"external data in '{path.name}' at offset {offset} does not hold {shape} {np_dtype}")
    if length == 0:
        return np.zeros(shape, np_dtype)
    # mmap needs a page-aligned offset; map from the page start and slice.
    page = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), length + offset - page, offset=page, access=mmap.ACCESS_READ)
    return np.frombuffer(buf, dtype=np_dtype, count=count, offset=offset - page).reshape(shape)
