"""Runs an exported SavedModel through TensorFlow's C API, the loader TF Serving links.

Usage: ``python tests/capi_check.py EXPORT_DIR CASES_JSON RESULT_JSON``

``TF_LoadSessionFromSavedModel`` is the C++ ``LoadSavedModel`` (restore the
variables, run the init op) and ``TF_SessionRun`` feeds and fetches tensors by
name, as TF Serving's predictor does. The process never imports TensorFlow's
Python package: it loads ``libtensorflow_cc.so.2`` from the installed wheel with
``ctypes``. ``CASES_JSON``::

    [{"name": str, "feeds": [[tensor_name, path.npy], ...], "fetch": tensor_name}, ...]

Writes per case ``{"output": path.npy}`` (the fetched float32 array, saved next to
``RESULT_JSON``) or ``{"code": TF_Code, "message": str}``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys

import numpy as np

TF_STRING = 7
TSTRING_SIZE = 24  # sizeof(TF_TString)
DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
          np.dtype(np.int64): 9}  # TF_DataType


class Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def _library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("tensorflow")  # locates the wheel without importing it
    (root,) = spec.submodule_search_locations
    ctypes.CDLL(os.path.join(root, "libtensorflow_framework.so.2"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(os.path.join(root, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL)
    p = ctypes.c_void_p
    for name, res, args in [
        ("TF_NewGraph", p, []),
        ("TF_NewStatus", p, []),
        ("TF_NewSessionOptions", p, []),
        ("TF_GetCode", ctypes.c_int, [p]),
        ("TF_Message", ctypes.c_char_p, [p]),
        ("TF_LoadSessionFromSavedModel", p,
         [p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, p, p, p]),
        ("TF_GraphOperationByName", p, [p, ctypes.c_char_p]),
        ("TF_AllocateTensor", p, [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
                                  ctypes.c_size_t]),
        ("TF_TensorData", p, [p]),
        ("TF_TensorByteSize", ctypes.c_size_t, [p]),
        ("TF_NumDims", ctypes.c_int, [p]),
        ("TF_Dim", ctypes.c_int64, [p, ctypes.c_int]),
        ("TF_DeleteTensor", None, [p]),
        ("TF_StringInit", None, [p]),
        ("TF_StringCopy", None, [p, ctypes.c_char_p, ctypes.c_size_t]),
        ("TF_SessionRun", None, [p, p, ctypes.POINTER(Output), ctypes.POINTER(p), ctypes.c_int,
                                 ctypes.POINTER(Output), ctypes.POINTER(p), ctypes.c_int,
                                 p, ctypes.c_int, p, p]),
    ]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def _tensor(lib: ctypes.CDLL, value: np.ndarray) -> int:
    dims = (ctypes.c_int64 * value.ndim)(*value.shape)
    if value.dtype.kind == "S":
        tensor = lib.TF_AllocateTensor(TF_STRING, dims, value.ndim, value.size * TSTRING_SIZE)
        base = lib.TF_TensorData(tensor)
        for i, item in enumerate(value.reshape(-1).tolist()):
            lib.TF_StringInit(base + i * TSTRING_SIZE)
            lib.TF_StringCopy(base + i * TSTRING_SIZE, item, len(item))
        return tensor
    value = np.ascontiguousarray(value)
    tensor = lib.TF_AllocateTensor(DTYPES[value.dtype], dims, value.ndim, value.nbytes)
    ctypes.memmove(lib.TF_TensorData(tensor), value.ctypes.data, value.nbytes)
    return tensor


def _output(lib: ctypes.CDLL, graph: int, name: str) -> Output:
    op_name, _, index = name.partition(":")
    op = lib.TF_GraphOperationByName(graph, op_name.encode())
    if not op:
        raise KeyError(f"no operation {op_name!r} in the loaded graph")
    return Output(op, int(index or 0))


def _run(lib, session, graph, status, case) -> dict:
    feeds = [(_output(lib, graph, n), np.load(p, allow_pickle=False)) for n, p in case["feeds"]]
    inputs = (Output * len(feeds))(*[o for o, _ in feeds])
    values = (ctypes.c_void_p * len(feeds))(*[_tensor(lib, v) for _, v in feeds])
    fetch = (Output * 1)(_output(lib, graph, case["fetch"]))
    result = (ctypes.c_void_p * 1)()
    lib.TF_SessionRun(session, None, inputs, values, len(feeds), fetch, result, 1,
                      None, 0, None, status)
    for tensor in values:
        lib.TF_DeleteTensor(tensor)
    if lib.TF_GetCode(status) != 0:
        return {"code": lib.TF_GetCode(status), "message": lib.TF_Message(status).decode()}
    out = result[0]
    shape = [lib.TF_Dim(out, i) for i in range(lib.TF_NumDims(out))]
    buffer = ctypes.string_at(lib.TF_TensorData(out), lib.TF_TensorByteSize(out))
    lib.TF_DeleteTensor(out)
    return {"array": np.frombuffer(buffer, np.float32).reshape(shape).copy()}


def main(export_dir: str, cases_path: str, result_path: str) -> None:
    lib = _library()
    graph, status = lib.TF_NewGraph(), lib.TF_NewStatus()
    tags = (ctypes.c_char_p * 1)(b"serve")
    session = lib.TF_LoadSessionFromSavedModel(
        lib.TF_NewSessionOptions(), None, export_dir.encode(), tags, 1, graph, None, status)
    report: dict = {"load": {"code": lib.TF_GetCode(status),
                             "message": lib.TF_Message(status).decode()}, "cases": {}}
    if report["load"]["code"] == 0:
        with open(cases_path) as f:
            cases = json.load(f)
        for case in cases:
            entry = _run(lib, session, graph, status, case)
            if "array" in entry:
                path = os.path.join(os.path.dirname(result_path), f"capi.{case['name']}.npy")
                np.save(path, entry.pop("array"))
                entry["output"] = path
            report["cases"][case["name"]] = entry
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    with open(result_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
