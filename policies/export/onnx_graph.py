"""Small helpers for writing ONNX graphs by hand with `onnx.helper`.

ONNX Runtime 1.31 rejects IR version 14, which onnx 1.23 writes by default, so
every model here is saved with IR version 13 (or the newest an older onnx package
knows, e.g. the parity venv's) and opset 17.
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = min(13, onnx.IR_VERSION)
OPSET = 17


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def save(graph: onnx.GraphProto, path: str, metadata: dict | None = None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="reflex")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    # Write then rename, so a test that loads the file meanwhile never sees half of it.
    partial = f"{path}.partial"
    onnx.save(model, partial)
    os.replace(partial, path)
    return model
