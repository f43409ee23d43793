"""Read safetensors files tensor by tensor with NumPy (no torch), one read per tensor.

The format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw bytes. Reading it directly gives bfloat16 support (ml_dtypes) and
precise errors for truncated or malformed files.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxvalues.errors import CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(k)`, `get(k) -> np.ndarray`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (only {size} bytes)")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8 or n > 100_000_000:
                    raise CheckpointError(f"{self.path}: truncated or not a safetensors file (header length {n}, file size {size})")
                header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._data_start = 8 + n
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self._data_start + end > size:
            missing = [k for k, v in header.items() if self._data_start + v["data_offsets"][1] > size]
            raise CheckpointError(
                f"{self.path}: truncated: {size} bytes but the header needs {self._data_start + end}; "
                f"{len(missing)} tensor(s) incomplete, e.g. {missing[0]!r}"
            )

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._header[key]["shape"])

    def dtype(self, key: str):
        return _DTYPES[self._header[key]["dtype"]]

    def get(self, key: str) -> np.ndarray:
        info = self._header[key]
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        # A plain read, not a memory map: mapped pages count in the resident set until the map
        # is released, which doubled the peak RSS of loading (weights mapped + weights copied).
        buf = np.fromfile(self.path, dtype=np.uint8, count=b - a, offset=self._data_start + a)
        dt = np.dtype(_DTYPES[info["dtype"]])
        expected = int(np.prod(info["shape"], dtype=np.int64)) * dt.itemsize
        if buf.size != expected:
            raise CheckpointError(f"{self.path}: tensor {key!r} has {buf.size} bytes, expected {expected} for shape {info['shape']}")
        return buf.view(dt).reshape(info["shape"])


def _allowed_roots(d: Path) -> list[Path]:
    """Where a shard may resolve: the model directory, and for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<rev>/``, whose files are symlinks to ``../../blobs/``) that
    repository's ``blobs`` folder."""
    real = d.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        roots.append(real.parent.parent / "blobs")
    return roots


def _confine(index: Path, key: str, fname, d: Path, roots: list[Path]) -> None:
    """Refuse an index entry naming a file outside the model directory (`..`, absolute, symlink out)."""
    where = f"{index}: weight_map entry {key!r} -> {fname!r}"
    if not isinstance(fname, str) or not fname:
        raise CheckpointError(f"{where}: expected a shard file name (a string)")
    p = Path(fname)
    if p.is_absolute() or fname.startswith(("/", "\\")) or (len(fname) > 1 and fname[1] == ":"):
        raise CheckpointError(f"{where}: absolute path; shard names must be relative to {d}")
    if ".." in p.parts or "\\" in fname or "\x00" in fname:
        raise CheckpointError(f"{where}: shard names may not contain '..', backslashes or NUL; "
                              f"expected a file inside {d}")
    target = (d / p).resolve()
    if not any(target == r or target.is_relative_to(r) for r in roots):
        raise CheckpointError(f"{where}: resolves to {target}, outside the model directory {d} "
                              f"(a symlink pointing elsewhere?); shards must lie inside it")


class SafetensorsCheckpoint:
    """A model directory's tensors: one `model.safetensors` or a sharded index."""

    def __init__(self, directory: str | Path):
        d = Path(directory)
        index = d / "model.safetensors.index.json"
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: not a valid safetensors index (weight_map is not an object)")
            roots = _allowed_roots(d)
            for key, fname in weight_map.items():
                if not isinstance(fname, str) or fname not in self._files:
                    _confine(index, key, fname, d, roots)
                    if not (d / fname).exists():
                        raise CheckpointError(f"{index}: shard {fname!r} (holding {key!r}) is missing from {d}")
                    self._files[fname] = SafetensorsFile(d / fname)
                if key not in self._files[fname]._header:
                    raise CheckpointError(f"{index}: {key!r} is mapped to {fname!r} but that shard does not contain it")
                self._where[key] = fname
        else:
            files = sorted(d.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{d}: no model.safetensors or model.safetensors.index.json found")
            for f in files:
                sf = SafetensorsFile(f)
                self._files[f.name] = sf
                for k in sf.keys():
                    if k in self._where:
                        raise CheckpointError(f"{d}: tensor {k!r} appears in both {self._where[k]} and {f.name}")
                    self._where[k] = f.name

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str):
        return self._files[self._where[key]].shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._files[self._where[key]].get(key)

    def source(self, key: str) -> str:
        return str(self._files[self._where[key]].path)


def save_safetensors(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file (atomic: temp name then rename); the hex sha256 of the bytes written."""
    import hashlib

    rev = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset = {}, 0
    arrays = {}
    for k, v in tensors.items():
        v = np.ascontiguousarray(v)
        arrays[k] = v
        header[k] = {"dtype": rev[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for chunk in (struct.pack("<Q", len(blob)), blob):
            f.write(chunk)
            h.update(chunk)
        for v in arrays.values():
            raw = memoryview(v.reshape(-1).view(np.uint8)) if v.size else b""
            f.write(raw)
            h.update(raw)
    tmp.replace(path)
    return h.hexdigest()
