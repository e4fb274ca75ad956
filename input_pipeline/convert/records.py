"""The block record: rows column-wise in one serialized ``tf.train.Example``, encoded directly."""

from __future__ import annotations

import numpy as np

from input_pipeline import criteo


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(tag: int, length: int) -> bytes:
    """The tag and length of a length-delimited protobuf field (wire type 2)."""
    return bytes([(tag << 3) | 2]) + _varint(length)


def _bytes_feature(key: bytes, value: bytes) -> list[bytes]:
    """Pieces of one ``Features.feature`` map entry holding a ``BytesList`` of one value."""
    inner = _header(1, len(value))  # BytesList.value
    feature_len = len(inner) + len(value)
    feature = _header(1, feature_len)  # Feature.bytes_list
    key_field = _header(1, len(key)) + key  # entry key
    value_field = _header(2, len(feature) + feature_len)  # entry value
    entry_len = len(key_field) + len(value_field) + len(feature) + feature_len
    return [_header(1, entry_len), key_field, value_field, feature, inner, value]


def _int64_feature(key: bytes, value: int) -> list[bytes]:
    """Pieces of one ``Features.feature`` map entry holding an ``Int64List`` of one value."""
    packed = _varint(value)
    int64_list = _header(1, len(packed)) + packed  # Int64List.value (packed)
    feature = _header(3, len(int64_list)) + int64_list  # Feature.int64_list
    entry = _header(1, len(key)) + key + _header(2, len(feature)) + feature
    return [_header(1, len(entry)), entry]


def serialize_block(label: np.ndarray, dense: np.ndarray, ids: np.ndarray, id_dtype: str) -> bytes:
    """One block record: ``n`` rows column-wise in a serialized ``tf.train.Example``.

    The protobuf bytes are assembled directly, headers first, and joined once
    (Feature.bytes_list = 1, Feature.int64_list = 3): building the message objects,
    or nesting the fields one copy at a time, copied every column several times.
    """
    pieces = _int64_feature(b"num_rows", len(label))
    pieces += _bytes_feature(b"label", np.ascontiguousarray(label, np.uint8).tobytes())
    pieces += _bytes_feature(b"dense", np.ascontiguousarray(dense, "<f4").tobytes())
    pieces += _bytes_feature(b"ids", np.ascontiguousarray(ids, np_id_dtype(id_dtype)).tobytes())
    features_len = sum(len(p) for p in pieces)
    return b"".join([_header(1, features_len), *pieces])  # Example.features


def np_id_dtype(id_dtype: str) -> str:
    return {"int32": "<i4", "int64": "<i8"}[id_dtype]


def record_dtype(id_dtype: str) -> np.dtype:
    return np.dtype(
        [
            ("label", "u1"),
            ("dense", "<f4", (criteo.NUM_DENSE,)),
            ("ids", np_id_dtype(id_dtype), (criteo.NUM_SPARSE,)),
        ]
    )
