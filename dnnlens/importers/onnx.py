"""ONNX models into the IR, with their initializers as the engine's weights.

Pipeline: load and check the file -> fix the input shapes (``input_shape`` for dynamic
dimensions) -> ONNX shape inference -> fold the constant sub-graphs that only compute shapes
(``Constant``, ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``, ... on constants) -> translate
each remaining node into one IR node of :mod:`dnnlens.ops`. Importers only translate; every
count comes from the operators.

Parameters are the floating-point initializers, named by their initializer names (the
state-dict names when the model was exported from PyTorch by ``torch.onnx.export``). The
returned weights dict holds each parameter in the layout its IR operator expects: a
``MatMul`` by a ``(K, N)`` initializer becomes an ``fc`` whose weight is stored transposed as
``(N, K)``; Gemm's ``alpha``/``beta`` are folded into the weight and bias.

Each IR node's ``module`` is the PyTorch module path when the exporter kept it: from the
``pkg.torch.onnx.name_scopes`` metadata of the dynamo exporter (torch >= 2.9's default) or
from TorchScript-exporter node names such as ``/layer1/layer1.0/conv1/Conv``. ``source`` is
``onnx:<OpType> <node name>``; :mod:`dnnlens.netron` uses the node name to attach figures.

Errors (all :class:`~dnnlens.errors.ModelError`, one line): unreadable or truncated file,
a model the ONNX checker rejects, a node reading a value nothing provides, dynamic input
dimensions without ``input_shape``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from dnnlens.errors import ModelError, ShapeError
from dnnlens.ir import Graph, Node, Param, Shape, unique_name
from dnnlens.ops import (
    Activation,
    AdaptivePool,
    Attention,
    Binary,
    Concat,
    Conv,
    Dropout,
    Embedding,
    Expand,
    Gather,
    Linear,
    MatMul,
    Norm,
    Op,
    Pad,
    Permute,
    Pool,
    Reduce,
    Reshape,
    Slice,
    Softmax,
    Unknown,
    infer_shape,
)
from dnnlens.ops.base import names_in, variants
from dnnlens.ops.conv import same_padding

InputShapes = Shape | Sequence[int] | Mapping[str, Sequence[int]] | None

#: ONNX op types -> the IR's activation, binary and reduction functions (from the operators'
#: own ``NAMES``, :class:`dnnlens.ops.base.Names`).
UNARY: dict[str, str] = variants("onnx", Activation)
BINARY_OPS: dict[str, str] = variants("onnx", Binary)
REDUCE_OPS: dict[str, str] = variants("onnx", Reduce)

#: Ops evaluated at import time when all their inputs are constants (shape arithmetic).
FOLDABLE = frozenset(
    {
        "Constant",
        "Identity",
        "Cast",
        "CastLike",
        "Shape",
        "Size",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Reshape",
        "Slice",
        "ConstantOfShape",
        "Range",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Equal",
        "Where",
        "Transpose",
        "Flatten",
        "Sqrt",
        "Neg",
        "ReduceProd",
        "Max",
        "Min",
        "Floor",
        "Ceil",
        "Not",
        "Less",
        "Greater",
        "Abs",
        "Expand",
        "Tile",
        "Mod",
        "And",
        "Or",
        "Split",
        "DequantizeLinear",
        "ScatterND",
        "Pow",
    }
)
#: Foldable ops that keep a parameter's values (so its name) when they read one.
PASS_THROUGH = frozenset({"Identity", "Cast", "CastLike"})

FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class Const:
    """A value known at import time. ``origin`` names the initializer it is (or is the 2-d
    transpose of, ``transposed``) so parameters keep their state-dict names."""

    array: np.ndarray
    origin: str | None = None
    transposed: bool = False


@dataclass
class _Ctx:
    """Import state: constants, value shapes, the IR being built."""

    path: str
    opset: int
    consts: dict[str, Const]
    shapes: dict[str, Shape]
    graph: Graph
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)  # ONNX value -> IR value
    taken: set[str] = field(default_factory=set)
    dtypes: dict[str, Any] = field(default_factory=dict)  # value -> numpy dtype
    fused: set[int] = field(default_factory=set)  # ONNX nodes absorbed by an earlier one
    # SplitToSequence outputs: value -> (input, axis, [(start, stop)], keep_dim)
    sequences: dict[str, tuple[str, int, list[tuple[int, int]], bool]] = field(
        default_factory=dict
    )
    values: dict[str, str] = field(default_factory=dict)  # IR node -> the ONNX value it is

    def is_param(self, value: str) -> bool:
        const = self.consts.get(value)
        return const is not None and const.origin is not None


# --- loading, checking, shapes ----------------------------------------------------------


def _load(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path} is not a readable ONNX model (truncated or corrupt?): {first}"
        ) from None
    if not model.graph.node:
        raise ModelError(f"{path} holds no ONNX graph nodes (truncated or not an ONNX model?)")
    _check_names(model, path)
    return model


def _check_names(model, path: Path) -> None:
    """ONNX's proto2 strings are not UTF-8-checked when parsed: a corrupt name comes back as
    bytes and would break every later string operation, so refuse it here, once."""
    graph = model.graph
    names = [value.name for value in (*graph.input, *graph.output, *graph.initializer)]
    for node in graph.node:
        names += [
            node.name,
            node.op_type,
            node.domain,
            *node.input,
            *node.output,
            *(attribute.name for attribute in node.attribute),
        ]
    if not all(isinstance(name, str) for name in names):
        raise ModelError(f"{path} holds names that are not valid UTF-8 text (corrupt?)")


def _check_dangling(model, path: Path) -> None:
    """Every node input must be a graph input, an initializer or an earlier node's output."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    known.add("")  # an omitted optional input
    for node in model.graph.node:
        for value in node.input:
            if value not in known:
                raise ModelError(
                    f"{path}: node {node.name or node.op_type!r} ({node.op_type}) reads "
                    f"{value!r}, which no graph input, initializer or earlier node provides"
                )
        known.update(node.output)
    for out in model.graph.output:
        if out.name not in known:
            raise ModelError(f"{path}: graph output {out.name!r} is produced by no node")


def _check(model, path: Path) -> None:
    import onnx

    _check_dangling(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path} fails the ONNX checker: {first}") from None
    except UnicodeDecodeError:  # a corrupt string the checker decodes (doc strings, ...)
        raise ModelError(f"{path} holds text that is not valid UTF-8 (corrupt?)") from None


def _dims(value_info) -> list[int | str]:
    """Static sizes as ints, dynamic ones as their name (or '?')."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _fix_inputs(model, path: Path, input_shape: InputShapes) -> dict[str, Shape]:
    """The graph inputs' shapes, dynamic dimensions filled from ``input_shape``."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if isinstance(input_shape, Mapping):
        given = {k: tuple(int(d) for d in v) for k, v in input_shape.items()}
        unknown = set(given) - {i.name for i in inputs}
        if unknown:
            raise ModelError(
                f"{path}: no graph input named {min(unknown)!r} "
                f"(inputs: {', '.join(i.name for i in inputs)})"
            )
    elif input_shape is not None:
        if len(inputs) != 1:
            raise ModelError(f"{path} has {len(inputs)} inputs; give each shape by name")
        given = {inputs[0].name: tuple(int(d) for d in input_shape)}
    else:
        given = {}
    shapes: dict[str, Shape] = {}
    for value in inputs:
        dims = _dims(value)
        want = given.get(value.name)
        if want is None:
            if not all(isinstance(d, int) and d > 0 for d in dims):
                shown = ", ".join(str(d) for d in dims)
                example = ",".join(str(d) if isinstance(d, int) and d > 0 else "1" for d in dims)
                raise ModelError(
                    f"{path}: input {value.name!r} has dynamic dimensions "
                    f"({shown}); give its shape with --input, e.g. "
                    f"--input {example}"
                )
            want = tuple(int(d) for d in dims)
        elif len(want) != len(dims) or any(
            isinstance(d, int) and d > 0 and d != w for d, w in zip(dims, want)
        ):
            raise ModelError(
                f"{path}: input {value.name!r} is ({', '.join(map(str, dims))}); "
                f"the given shape {want} does not fit it"
            )
        if any(d < 1 for d in want):
            raise ModelError(f"{path}: input shape {want} has a non-positive size")
        tensor_shape = value.type.tensor_type.shape
        for dim, size in zip(tensor_shape.dim, want):
            dim.Clear()
            dim.dim_value = size
        shapes[value.name] = want
    return shapes


def onnx_input_dims(path: str | Path) -> list[int | str]:
    """The dimensions of a one-input ONNX model's input (names for dynamic ones)."""
    model = _load(Path(path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; give each shape by name")
    return _dims(inputs[0])


def _infer_shapes(model, path: Path):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: ONNX shape inference fails: {first}") from None


def _dtypes(model) -> dict[str, Any]:
    from onnx.helper import tensor_dtype_to_np_dtype

    out = {}
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
        if elem:
            try:
                out[info.name] = tensor_dtype_to_np_dtype(elem)
            except (KeyError, ValueError):
                pass
    return out


def _static_shapes(model) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    graph = model.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(info)
        if (
            info.type.HasField("tensor_type")
            and all(isinstance(d, int) for d in dims)
            and info.type.tensor_type.HasField("shape")
        ):
            shapes[info.name] = tuple(int(d) for d in dims)
    return shapes


# --- constants ---------------------------------------------------------------------------


def _initializers(model, path: str | Path = "the ONNX model") -> dict[str, Const]:
    from onnx import numpy_helper

    consts = {}
    for init in model.graph.initializer:
        try:
            array = numpy_helper.to_array(init)  # external data was loaded by onnx.load
        except (KeyError, ValueError, TypeError) as exc:  # unknown dtype, size != dims, ...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{path}: initializer {init.name!r} is corrupt ({reason})") from None
        is_param = init.data_type in FLOAT_TYPES and array.size > 1
        consts[init.name] = Const(array, origin=init.name if is_param else None)
    return consts


def _evaluate(node, inputs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one node with ONNX's reference implementation (shape arithmetic only)."""
    from onnx.reference import ReferenceEvaluator

    feeds = {name: array for name, array in zip(node.input, inputs) if name}
    results = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    return [np.asarray(r) for r in results]


def _try_fold(node, ctx: _Ctx) -> bool:
    """Fold ``node`` into constants when it only computes on constants; True if folded."""
    op = node.op_type
    if op == "Constant":
        from onnx import numpy_helper

        attr = {a.name: a for a in node.attribute}
        if "value" in attr:
            array = numpy_helper.to_array(attr["value"].t)
        else:
            array = np.asarray(_attr_value(next(iter(attr.values()))))
        ctx.consts[node.output[0]] = Const(np.asarray(array))
        return True
    if op in ("Shape", "Size") and node.input[0] in ctx.shapes and node.input[0] not in ctx.consts:
        shape = np.array(ctx.shapes[node.input[0]], dtype=np.int64)
        attrs = _attrs(node)
        if op == "Size":
            ctx.consts[node.output[0]] = Const(np.array(prod(shape), dtype=np.int64))
        else:
            start, end = attrs.get("start", 0), attrs.get("end", None)
            ctx.consts[node.output[0]] = Const(shape[start:end])
        return True
    if op == "CastLike" and node.input[0] in ctx.consts and node.input[1] not in ctx.consts:
        # Only the dtype of the second input matters: a constant cast, not a layer.
        const = ctx.consts[node.input[0]]
        dtype = ctx.dtypes.get(node.input[1], const.array.dtype)
        ctx.consts[node.output[0]] = Const(
            const.array.astype(dtype), const.origin, const.transposed
        )
        return True
    if op not in FOLDABLE:
        return False
    names = [n for n in node.input if n]
    if not all(n in ctx.consts for n in names):
        return False
    params = [n for n in names if ctx.is_param(n)]
    transpose_2d = op == "Transpose" and len(params) == 1 and ctx.consts[params[0]].array.ndim == 2
    # A view of a parameter is that parameter (the dynamo exporter folds swin's relative
    # position bias lookup into an initializer, then reshapes it), as in the torch importer.
    views = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose")
    view = op in views and params == [node.input[0]]
    # Shapes of parameters, and ScatterND of constants (swin's shifted-window masks, whose
    # float updates the exporter stores as initializers that look like parameters), are
    # constants, not parameters.
    constant = op in ("Shape", "Size", "ScatterND")
    if params and op not in PASS_THROUGH and not constant and not transpose_2d:
        if not view:
            return False  # an op on a parameter is a layer of its own (Expand of a class token)
    arrays = [ctx.consts[n].array if n else None for n in node.input]
    try:
        outputs = _evaluate(node, [a for a in arrays if a is not None], ctx.opset)
    except Exception as exc:  # noqa: BLE001 - onnx's evaluator raises anything on bad values
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{ctx.path}: the {op} node {node.name or op!r} cannot be computed from its "
            f"constant inputs: {reason}"
        ) from None
    for name, array in zip(node.output, outputs):
        ctx.consts[name] = Const(array)
    if params and not constant:
        source = ctx.consts[params[0]]
        ctx.consts[node.output[0]].origin = _merged_parameter(node) or source.origin
        ctx.consts[node.output[0]].transposed = source.transposed ^ transpose_2d
    return True


def _merged_parameter(node) -> str | None:
    """The name of a parameter the TorchScript exporter merged into an equal one, or None.

    In eval mode that exporter keeps one initializer per distinct *value*: a parameter equal
    to an earlier one (the zero biases and unit norm weights of a freshly initialised model)
    is written as a top-level ``Identity`` of the kept initializer whose output keeps the
    dropped parameter's state-dict name (``features.12.expand3x3.bias =
    Identity(features.10.expand1x1.bias)``), or its own generated name for a weight it made
    (the equal zero biases of convolutions it folded batch norms into: ``onnx::Conv_251 =
    Identity(onnx::Conv_239)``). It is a parameter of its own in the model; weights *tied* in
    PyTorch (one tensor) are instead read directly, with no Identity. Identities inside a
    module (``/layer1/Identity``, output ``/layer1/Identity_output_0``) are not merges.
    """
    out = node.output[0]
    if node.op_type != "Identity" or "/" in node.name or _name_scopes(node) is not None:
        return None
    if out.startswith("/") or out == node.input[0]:
        return None
    return out


def _attr_value(attr) -> Any:
    import onnx

    return onnx.helper.get_attribute_value(attr)


def _decimal(value: float) -> float:
    """A float32 attribute as the decimal it was written as (1e-5, not 9.99999975e-06), so
    that an eps or a slope reads the same as in the PyTorch model it was exported from."""
    return float(str(np.float32(value)))


def _attrs(node) -> dict[str, Any]:
    out = {}
    for attr in node.attribute:
        value = _attr_value(attr)
        if isinstance(value, float):
            value = _decimal(value)
        elif isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            value = [_decimal(v) for v in value]
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


# --- module paths ------------------------------------------------------------------------


def _name_scopes(node) -> list[str] | None:
    """The dynamo exporter's module scopes of a node (outermost first, the fx node last), or
    None when the node has none or they do not parse."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                return None
    return None


def module_path(node) -> str:
    """The PyTorch module a node came from, when the exporter recorded it ('' if not)."""
    scopes = _name_scopes(node)
    if scopes is not None:
        return scopes[-2] if len(scopes) >= 2 else ""  # the last entry is the fx node
    name = node.name
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p][:-1]  # drop the op (".../Conv")
        path = ""
        for part in parts:
            path = part if (not path or part.startswith(path + ".")) else f"{path}.{part}"
        return path
    return ""


def _local_name(node) -> str:
    """A name for a node outside any module: the exporter's fx node name ("view", "cat"),
    else the ONNX node name without its "node_" prefix or path, else the op type."""
    scopes = _name_scopes(node)
    if scopes:
        return scopes[-1]
    name = node.name.rsplit("/", 1)[-1] if node.name else ""
    name = name.removeprefix("node_")
    return name or node.op_type.lower()


def _module_type(node) -> str:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.class_hierarchy":
            try:
                classes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return classes[-2] if len(classes) >= 2 else ""
    return ""


# --- translation helpers -------------------------------------------------------------------


def _param(
    ctx: _Ctx, value: str, layout: np.ndarray | None = None, want_transposed: bool = False
) -> Param:
    """The Param for constant ``value``; its array goes into the weights dict.

    ``want_transposed``: the operator needs the transpose of the value (a MatMul weight
    ``(K, N)`` as an fc weight ``(N, K)``). ``layout``: the array to store instead (Gemm's
    ``alpha`` folded in). The name is the initializer's, unless that name already holds a
    different array (one initializer used in two layouts), then ``<name>:<value>``.
    """
    const = ctx.consts[value]
    if layout is not None:
        array = layout
    elif want_transposed:
        array = const.array.T
    else:
        array = const.array
    name = const.origin or value
    existing = ctx.weights.get(name)
    if existing is not None and (
        existing.shape != array.shape or not np.array_equal(existing, array)
    ):
        name = unique_name(f"{name}:{value}", set(ctx.weights))
    ctx.weights[name] = np.asarray(array, order="C")  # (ascontiguousarray makes 0-d 1-d)
    return Param(name, tuple(int(d) for d in array.shape))


def _ir(ctx: _Ctx, value: str) -> str:
    """The IR value (graph input or node name) an ONNX value maps to."""
    if value in ctx.alias:
        return ctx.alias[value]
    raise ModelError(
        f"{ctx.path}: value {value!r} is used before it is computed "
        f"(or only by an operator dnnlens folded away)"
    )


def _activations(ctx: _Ctx, node) -> list[str]:
    """The node's inputs that are activations (not constants)."""
    return [v for v in node.input if v and v not in ctx.consts]


def _emit(
    ctx: _Ctx,
    node,
    op: Op,
    inputs: list[str],
    params: dict[str, Param],
    output: str | None = None,
    suffix: str = "",
) -> str:
    """Add one IR node for ONNX ``node``; returns its IR name."""
    module = module_path(node)
    base = module or _local_name(node)
    name = unique_name(base + suffix, ctx.taken)
    ctx.taken.add(name)
    ir_inputs = [_ir(ctx, v) for v in inputs]
    input_shapes = [ctx.graph.shape_of(v) for v in ir_inputs]
    shapes = {role: p.shape for role, p in params.items()}
    out_value = output if output is not None else node.output[0]
    observed = ctx.shapes.get(out_value)
    try:
        out = infer_shape(name, op, input_shapes, shapes)
    except ShapeError as exc:
        raise ModelError(f"{ctx.path}: node {node.name or node.op_type!r}: {exc}") from None
    if observed is not None and tuple(observed) != tuple(out):
        raise ModelError(
            f"{ctx.path}: node {node.name or node.op_type!r} ({node.op_type}): "
            f"dnnlens computes shape {out}, ONNX shape inference {observed}"
        )
    ctx.graph.nodes.append(
        Node(
            name=name,
            op=op,
            inputs=ir_inputs,
            input_shapes=input_shapes,
            output_shape=out,
            params=params,
            module=module,
            module_type=_module_type(node),
            source=f"onnx:{node.op_type} {node.name}".rstrip(),
        )
    )
    ctx.alias[out_value] = name
    ctx.values[name] = out_value
    # Where ONNX's inference gave up (a Pad by folded amounts), later Shape ops fold on ours.
    ctx.shapes.setdefault(out_value, tuple(out))
    return name


def _unknown(ctx: _Ctx, node, reason: str = "") -> None:
    """An op dnnlens has no rule for (or cannot express: ``reason`` says why): kept with its
    shapes, flagged as unknown."""
    for index, out in enumerate(o for o in node.output if o):
        shape = ctx.shapes.get(out)
        if shape is None:
            raise ModelError(
                f"{ctx.path}: cannot infer the shape of {out!r}, output of the "
                f"{node.op_type} node {node.name!r} dnnlens does not know"
            )
        params = {
            f"input{i}": _param(ctx, v) for i, v in enumerate(node.input) if v and ctx.is_param(v)
        }
        target = f"onnx:{node.op_type}" + (f" with {reason}" if reason else "")
        _emit(
            ctx,
            node,
            Unknown(target=target, observed_shape=shape),
            _activations(ctx, node),
            params,
            output=out,
            suffix="" if index == 0 else f".{index}",
        )


def _spatial_pads(
    attrs: dict, x: Shape, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """ONNX ``pads`` (all begins, then all ends) or ``auto_pad`` as (begin, end) pairs."""
    d = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return same_padding(
            tuple(x[2:]),
            tuple(kernel),
            tuple(strides),
            tuple(dilations),
            extra_at_end=auto == "SAME_UPPER",
        )
    if auto == "VALID":
        return tuple((0, 0) for _ in range(d))
    pads = list(attrs.get("pads", [0] * (2 * d)))
    return tuple((int(pads[i]), int(pads[i + d])) for i in range(d))


# --- the translators, one per ONNX op family ------------------------------------------------


def _conv(ctx: _Ctx, node) -> None:
    x_name, w_name = node.input[0], node.input[1]
    if w_name not in ctx.consts or x_name in ctx.consts:
        return _unknown(ctx, node)
    attrs = _attrs(node)
    w = ctx.consts[w_name].array
    d = w.ndim - 2
    kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
    strides = tuple(attrs.get("strides", [1] * d))
    dilations = tuple(attrs.get("dilations", [1] * d))
    x = ctx.graph.shape_of(_ir(ctx, x_name))
    transposed = node.op_type == "ConvTranspose"
    params = {"weight": _param(ctx, w_name)}
    if len(node.input) > 2 and node.input[2]:
        b = node.input[2]
        # A zero bias made up by the exporter (not an initializer) is no parameter.
        if ctx.is_param(b) or np.any(ctx.consts[b].array):
            params["bias"] = _param(ctx, b)
    out_pad = tuple(attrs.get("output_padding", [0] * d))
    if transposed and "output_shape" in attrs:
        pads = []
        for i, (size, k, s, dil) in enumerate(zip(x[2:], kernel, strides, dilations)):
            total = s * (size - 1) + out_pad[i] + (k - 1) * dil + 1 - attrs["output_shape"][i]
            half = total // 2
            upper = attrs.get("auto_pad", "NOTSET") == "SAME_UPPER"
            pads.append((half, total - half) if upper else (total - half, half))
        padding = tuple(pads)
    elif transposed and attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return _unknown(ctx, node)
    else:
        padding = _spatial_pads(attrs, x, kernel, strides, dilations)
    op = Conv(
        stride=strides,
        padding=padding,
        dilation=dilations,
        groups=int(attrs.get("group", 1)),
        transposed=transposed,
        output_padding=out_pad,
    )
    _emit(ctx, node, op, [x_name], params)


def _next_bias_add(ctx: _Ctx, node, model_nodes: dict[str, list], features: int):
    """The ``Add`` that adds a bias of ``features`` values to ``node``'s output, if it is
    the output's only use (the TorchScript/dynamo pattern for an fc on 3-d inputs)."""
    out = node.output[0]
    users = model_nodes.get(out, [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    const = ctx.consts.get(other)
    if (
        const is None
        or const.origin is None
        or const.array.size != features
        or const.array.ndim != 1
    ):
        return None
    return add, other


def _linear(
    ctx: _Ctx, node, x_name: str, weight: Param, bias: Param | None, users: dict[str, list]
) -> None:
    params = {"weight": weight}
    output = node.output[0]
    if bias is not None:
        params["bias"] = bias
    else:
        fused = _next_bias_add(ctx, node, users, weight.shape[0])
        if fused is not None:
            add, b = fused
            params["bias"] = _param(ctx, b)
            ctx.fused.add(id(add))
            output = add.output[0]
    _emit(ctx, node, Linear(), [x_name], params, output=output)
    ctx.alias[node.output[0]] = ctx.alias[output]


def _gemm(ctx: _Ctx, node, users: dict[str, list]) -> None:
    attrs = _attrs(node)
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if b not in ctx.consts or a in ctx.consts or attrs.get("transA", 0):
        return _matmul_general(ctx, node)
    trans_b = bool(attrs.get("transB", 0))
    const = ctx.consts[b]
    if alpha != 1.0:
        w = (const.array if trans_b else const.array.T) * alpha
        weight = _param(ctx, b, layout=np.ascontiguousarray(w))
    else:
        weight = _param(ctx, b, want_transposed=not trans_b)
    bias = None
    if c is not None:
        array = ctx.consts[c].array if c in ctx.consts else None
        if array is None or array.size not in (1, weight.shape[0]):
            return _unknown(ctx, node)
        full = np.broadcast_to(array.reshape(-1), (weight.shape[0],)) * beta
        if ctx.is_param(c) or np.any(full):
            bias = (
                _param(ctx, c, layout=np.ascontiguousarray(full))
                if (beta != 1.0 or array.size == 1 or array.ndim != 1)
                else _param(ctx, c)
            )
    _linear(ctx, node, a, weight, bias, users)


def _matmul_general(ctx: _Ctx, node) -> None:
    """A product of two activations (attention scores) or of a constant and an activation."""
    acts = _activations(ctx, node)
    if node.op_type == "Gemm":
        return _unknown(ctx, node)
    if len(acts) == 2:
        _emit(ctx, node, MatMul(), acts, {})
        return
    if len(acts) == 1 and node.input[0] in ctx.consts:
        _emit(ctx, node, MatMul(weight_operand=0), acts, {"weight": _param(ctx, node.input[0])})
        return
    _unknown(ctx, node)


def _matmul(ctx: _Ctx, node, users: dict[str, list]) -> None:
    a, b = node.input[0], node.input[1]
    const = ctx.consts.get(b)
    if (
        a not in ctx.consts
        and const is not None
        and const.array.ndim == 2
        and const.origin is not None
    ):
        weight = _param(ctx, b, want_transposed=True)  # x @ W(K, N) is fc with (N, K)
        return _linear(ctx, node, a, weight, None, users)
    _matmul_general(ctx, node)


def _batchnorm(ctx: _Ctx, node) -> None:
    x, scale, bias, mean, var = node.input[:5]
    if not all(v in ctx.consts for v in (scale, bias, mean, var)):
        return _unknown(ctx, node)
    for stat in (mean, var):
        ctx.weights[stat] = ctx.consts[stat].array
    op = Norm(
        function="batchnorm", eps=float(_attrs(node).get("epsilon", 1e-5)), stats=(mean, var)
    )
    _emit(ctx, node, op, [x], {"weight": _param(ctx, scale), "bias": _param(ctx, bias)})


def _layernorm(ctx: _Ctx, node) -> None:
    attrs = _attrs(node)
    x = node.input[0]
    shape = ctx.graph.shape_of(_ir(ctx, x))
    axis = int(attrs.get("axis", -1)) % len(shape)
    params = {}
    if len(node.input) > 1 and node.input[1] in ctx.consts:
        params["weight"] = _param(ctx, node.input[1])
    if len(node.input) > 2 and node.input[2] and node.input[2] in ctx.consts:
        params["bias"] = _param(ctx, node.input[2])
    op = Norm(
        function="layernorm",
        normalized_shape=tuple(shape[axis:]),
        eps=float(attrs.get("epsilon", 1e-5)),
    )
    _emit(ctx, node, op, [x], params)


#: ONNX's defaults of the activation attributes dnnlens keeps.
ONNX_ACTIVATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "HardSigmoid": {"alpha": 0.2, "beta": 0.5},
    "LeakyRelu": {"alpha": 0.01},
    "Elu": {"alpha": 1.0},
    "Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    "Gelu": {"approximate": "none"},
}
#: What each activation computes when the operator has no field for an attribute (PyTorch's
#: definitions): a node whose attribute differs is refused rather than run with the wrong one.
IMPLIED_ACTIVATION_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "hardsigmoid": {"alpha": 1 / 6, "beta": 0.5},
    "leaky_relu": {"alpha": 0.01},
    "elu": {"alpha": 1.0},
    "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
    "gelu": {"approximate": "none"},
    "clamp": {"min": None, "max": None},
}


def _same_attribute(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))  # float32 attributes
    return a == b


def activation_op(function: str, attributes: Mapping[str, Any]) -> Activation | str:
    """``Activation(function, **attributes)`` keeping every attribute the operator has a
    field for; else the reason it cannot be expressed (an attribute the operator has no
    field for and whose value differs from what its kernel computes)."""
    from dataclasses import fields

    names = {f.name for f in fields(Activation)}
    implied = IMPLIED_ACTIVATION_ATTRIBUTES.get(function, {})
    kept = {}
    for key, value in attributes.items():
        if key in names:
            kept[key] = value
        elif not _same_attribute(value, implied.get(key, value)):
            return f"{key}={value!r}, which dnnlens does not keep yet"
    return Activation(function=function, **kept)


def _unary(ctx: _Ctx, node) -> None:
    function = UNARY[node.op_type]
    attrs = {**ONNX_ACTIVATION_DEFAULTS.get(node.op_type, {}), **_attrs(node)}
    if node.op_type == "Clip":
        bounds = [
            ctx.consts[v].array.item() if v in ctx.consts else None for v in node.input[1:3]
        ] + [None, None]
        if any(v and v not in ctx.consts for v in node.input[1:3]):
            return _unknown(ctx, node, "bounds computed at run time")
        low, high = attrs.pop("min", bounds[0]), attrs.pop("max", bounds[1])
        if low == 0 and high == 6:
            function = "relu6"
        elif low == 0 and high is None:
            function = "relu"
        else:
            attrs.update(min=low, max=high)
    op = activation_op(function, attrs if function not in ("relu", "relu6") else {})
    if isinstance(op, str):
        return _unknown(ctx, node, op)
    _emit(ctx, node, op, [node.input[0]], {})


#: Binary operators whose operands cannot be swapped.
ORDERED = frozenset({"sub", "div", "pow", "where"})
INTEGER_KINDS = "iub"


def _binary(ctx: _Ctx, node) -> None:
    """Element-wise arithmetic: the activation operands are inputs; every constant operand
    (a learned tensor, or a scalar such as the 0.5 of ``x * 0.5``, of any dtype) a parameter
    in operand order, learned ones as ``weight``, the rest as ``constant``."""
    acts = _activations(ctx, node)
    if not acts:
        return _unknown(ctx, node)
    function = BINARY_OPS[node.op_type]
    operands = [v for v in node.input if v]
    if function in ORDERED and any(v in ctx.consts for v in operands[: operands.index(acts[-1])]):
        return _unknown(ctx, node, "a constant before an activation operand")
    dtype = ctx.dtypes.get(node.output[0])
    if dtype is not None and np.dtype(dtype).kind in INTEGER_KINDS:
        if function == "div":
            return _unknown(ctx, node, "integer division, which has no integer kernel yet")
        kinds = {
            np.dtype(
                ctx.consts[v].array.dtype if v in ctx.consts else ctx.dtypes.get(v, dtype)
            ).kind
            for v in operands
        }
        if kinds - set(INTEGER_KINDS):  # Pow(int, float) is an int in ONNX, a float in NumPy
            return _unknown(
                ctx, node, f"an integer result from operands of kinds {''.join(sorted(kinds))}"
            )
    params: dict[str, Param] = {}
    for value in operands:
        if value not in ctx.consts:
            continue
        role = "weight" if ctx.is_param(value) else "constant"
        count = sum(1 for r in params if r.startswith(role))
        params[role if not count else f"{role}{count + 1}"] = _param(ctx, value)
    _emit(ctx, node, Binary(function=function), acts, params)


def _pool(ctx: _Ctx, node) -> None:
    attrs = _attrs(node)
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    kernel = tuple(attrs["kernel_shape"])
    d = len(kernel)
    strides = tuple(attrs.get("strides", [1] * d))
    dilations = tuple(attrs.get("dilations", [1] * d))
    op = Pool(
        mode="max" if node.op_type == "MaxPool" else "avg",
        kernel=kernel,
        stride=strides,
        padding=_spatial_pads(attrs, x, kernel, strides, dilations),
        dilation=dilations,
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
        count_include_pad=bool(attrs.get("count_include_pad", 0)),
    )
    _emit(ctx, node, op, [node.input[0]], {})


def _global_pool(ctx: _Ctx, node) -> None:
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    mode = "max" if node.op_type == "GlobalMaxPool" else "avg"
    _emit(ctx, node, AdaptivePool(mode=mode, output_size=(1,) * (len(x) - 2)), [node.input[0]], {})


def _reduce(ctx: _Ctx, node) -> None:
    attrs = _attrs(node)
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in ctx.consts:
            return _unknown(ctx, node)
        axes = [int(a) for a in ctx.consts[node.input[1]].array.reshape(-1)]
    else:
        axes = list(attrs.get("axes", []))
    keep = bool(attrs.get("keepdims", 1))
    dims = tuple(sorted(a % len(x) for a in axes)) if axes else ()
    function = REDUCE_OPS[node.op_type]
    # (a mean over H, W keeping them is a global pool: dnnlens.canonical makes it one)
    _emit(ctx, node, Reduce(function=function, dims=dims, keepdim=keep), [node.input[0]], {})


def _reshape_like(ctx: _Ctx, node) -> None:
    """Flatten, Reshape, Squeeze, Unsqueeze: a view to the inferred output shape."""
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    if node.op_type == "Flatten":
        axis = int(_attrs(node).get("axis", 1))
        axis = axis + len(x) if axis < 0 else axis  # -1 on (N, C, H, W): (N*C*H, W)
        target: Shape = (prod(x[:axis]), prod(x[axis:]))
    else:
        target = ctx.shapes.get(node.output[0]) or _view_shape(ctx, node, x)  # type: ignore
        if target is None:
            return _unknown(ctx, node)
        ctx.shapes[node.output[0]] = tuple(target)
    _emit(ctx, node, Reshape.between(x, tuple(target)), [node.input[0]], {})


def _view_shape(ctx: _Ctx, node, x: Shape) -> Shape | None:
    """The output shape of a Reshape/Squeeze/Unsqueeze whose shape or axes we folded to a
    constant where ONNX's shape inference gave up; None if they are not constant."""
    attrs = _attrs(node)
    second = node.input[1] if len(node.input) > 1 and node.input[1] else None
    if second is not None and second not in ctx.consts:
        return None
    values = (
        [int(v) for v in ctx.consts[second].array.reshape(-1)]
        if second
        else [int(v) for v in attrs.get("axes", [])]
    )
    if node.op_type == "Reshape":
        if second is None:
            return None
        keep_zero = bool(attrs.get("allowzero", 0))
        shape = [x[i] if d == 0 and not keep_zero else d for i, d in enumerate(values)]
        if shape.count(-1) == 1:
            known = prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = prod(x) // known if known else 0
        return tuple(shape)
    if node.op_type == "Unsqueeze":
        rank = len(x) + len(values)
        axes = sorted(a % rank for a in values)
        shape = list(x)
        for axis in axes:
            shape.insert(axis, 1)
        return tuple(shape)
    squeezed = {a % len(x) for a in values} if values else {i for i, d in enumerate(x) if d == 1}
    return tuple(d for i, d in enumerate(x) if i not in squeezed)  # Squeeze


def _transpose(ctx: _Ctx, node) -> None:
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    perm = tuple(_attrs(node).get("perm", range(len(x) - 1, -1, -1)))
    _emit(ctx, node, Permute(dims=tuple(int(p) for p in perm)), [node.input[0]], {})


def _concat(ctx: _Ctx, node) -> None:
    params: dict[str, Param] = {}
    for i, value in enumerate(node.input):
        if value in ctx.consts:
            if not ctx.is_param(value):
                return _unknown(ctx, node)
            params["weight" if not params else f"weight{i}"] = _param(ctx, value)
    _emit(
        ctx, node, Concat(axis=int(_attrs(node).get("axis", 1))), _activations(ctx, node), params
    )


def _softmax(ctx: _Ctx, node) -> None:
    axis = int(_attrs(node).get("axis", -1 if ctx.opset >= 13 else 1))
    _emit(ctx, node, Softmax(axis=axis, log=node.op_type == "LogSoftmax"), [node.input[0]], {})


def _gather(ctx: _Ctx, node) -> None:
    data, indices = node.input[0], node.input[1]
    axis = int(_attrs(node).get("axis", 0))
    if ctx.is_param(data) and indices not in ctx.consts and axis == 0:
        _emit(ctx, node, Embedding(), [indices], {"weight": _param(ctx, data)})
        return
    if data not in ctx.consts and indices in ctx.consts and ctx.consts[indices].array.size == 1:
        index = int(ctx.consts[indices].array.reshape(-1)[0])
        x = ctx.graph.shape_of(_ir(ctx, data))
        index %= x[axis % len(x)]
        keep = ctx.consts[indices].array.ndim > 0
        _emit(ctx, node, Slice(axis=axis, start=index, stop=index + 1, keep_dim=keep), [data], {})
        return
    if data not in ctx.consts and indices in ctx.consts:
        # A constant index list (the dynamo exporter writes ``as_strided`` as a Reshape to
        # 1-d and a Gather of every position): the indices are kept in the operator.
        array = ctx.consts[indices].array
        if array.dtype.kind not in "iu":
            return _unknown(ctx, node, f"indices of dtype {array.dtype}")
        values = tuple(int(v) for v in array.reshape(-1))
        op = Gather(axis=axis, index_values=values, index_shape=tuple(array.shape))
        _emit(ctx, node, op, [data], {})
        return
    if data not in ctx.consts and indices not in ctx.consts:
        _emit(ctx, node, Gather(axis=axis), [data, indices], {})
        return
    _unknown(ctx, node)


def _slice_attributes(node) -> tuple[list, list, list, list]:
    """``(starts, ends, axes, steps)`` from a Slice's attributes (up to opset 9: step 1)."""
    attrs = _attrs(node)
    starts, ends = list(attrs.get("starts", [])), list(attrs.get("ends", []))
    axes = list(attrs.get("axes", range(len(starts))))
    return starts, ends, axes, [1] * len(starts)


def _slice_arguments(ctx: _Ctx, node) -> tuple[list, list, list, list] | None:
    """``(starts, ends, axes, steps)``: attributes up to opset 9, constant inputs from 10;
    None when one of them is computed at run time."""
    if ctx.opset < 10 or len(node.input) == 1:
        return _slice_attributes(node)
    values: list[list[int] | None] = []
    for value in node.input[1:5]:
        if not value:
            values.append(None)
        elif value in ctx.consts:
            values.append([int(v) for v in ctx.consts[value].array.reshape(-1)])
        else:
            return None
    values += [None] * (4 - len(values))
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    return (
        starts,
        ends,
        list(axes if axes is not None else range(len(starts))),
        list(steps if steps is not None else [1] * len(starts)),
    )


def _slice(ctx: _Ctx, node) -> None:
    """One IR slice per sliced axis, chained."""
    arguments = _slice_arguments(ctx, node)
    if arguments is None:
        return _unknown(ctx, node, "bounds computed at run time")
    starts, ends, axes, steps = arguments
    big = 2**62  # ONNX writes "to the end" as INT64_MAX (or INT64_MIN going backwards)
    source = node.input[0]
    rank = len(ctx.graph.shape_of(_ir(ctx, source)))
    for index, (start, stop, axis, step) in enumerate(zip(starts, ends, axes, steps)):
        last = index == len(starts) - 1
        output = node.output[0] if last else f"{node.output[0]}#slice{index}"
        op = Slice(
            axis=int(axis) % rank,
            start=int(start),
            stop=max(min(int(stop), big), -big),
            step=int(step),
        )
        _emit(ctx, node, op, [source], {}, output=output, suffix="" if index == 0 else f".{index}")
        source = output
    if not starts:
        _identity(ctx, node)


def _split(ctx: _Ctx, node) -> None:
    """Split into views: one slice per output."""
    attrs = _attrs(node)
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    axis = int(attrs.get("axis", 0)) % len(x)
    sizes = []
    for out in node.output:
        shape = ctx.shapes.get(out)
        if shape is None:
            return _unknown(ctx, node)
        sizes.append(shape[axis])
    start = 0
    for index, (out, size) in enumerate(zip(node.output, sizes)):
        _emit(
            ctx,
            node,
            Slice(axis=axis, start=start, stop=start + size),
            [node.input[0]],
            {},
            output=out,
            suffix="" if index == 0 else f".{index}",
        )
        start += size


def _split_to_sequence(ctx: _Ctx, node) -> None:
    """``x.chunk(2, dim=1)`` as the dynamo exporter writes it; SequenceAt takes the views."""
    attrs = _attrs(node)
    x = ctx.graph.shape_of(_ir(ctx, node.input[0]))
    axis = int(attrs.get("axis", 0)) % len(x)
    keep = bool(attrs.get("keepdims", 1))
    split = node.input[1] if len(node.input) > 1 and node.input[1] else None
    if split is not None:
        if split not in ctx.consts:
            return _unknown(ctx, node)
        sizes = [int(v) for v in ctx.consts[split].array.reshape(-1)]
        if ctx.consts[split].array.ndim == 0:
            chunk = sizes[0]
            sizes = [min(chunk, x[axis] - i) for i in range(0, x[axis], chunk)]
        keep = True
    else:
        sizes = [1] * x[axis]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    ctx.sequences[node.output[0]] = (node.input[0], axis, bounds, keep)


def _sequence_at(ctx: _Ctx, node) -> None:
    seq, index = node.input[0], node.input[1]
    if seq not in ctx.sequences or index not in ctx.consts:
        return _unknown(ctx, node)
    source, axis, bounds, keep = ctx.sequences[seq]
    start, stop = bounds[int(ctx.consts[index].array.reshape(-1)[0])]
    _emit(ctx, node, Slice(axis=axis, start=start, stop=stop, keep_dim=keep), [source], {})


def _expand(ctx: _Ctx, node) -> None:
    x = node.input[0]
    target = ctx.shapes.get(node.output[0])
    if target is None and len(node.input) > 1 and node.input[1] in ctx.consts:
        # ONNX's inference gave up (a shape computed from Shape ops, folded by us since):
        # Expand broadcasts the input's shape and the given one, NumPy's way.
        given = tuple(int(v) for v in ctx.consts[node.input[1]].array.reshape(-1))
        source = ctx.consts[x].array.shape if x in ctx.consts else ctx.graph.shape_of(_ir(ctx, x))
        try:
            target = tuple(np.broadcast_shapes(tuple(source), given))
        except ValueError:
            raise ModelError(
                f"{ctx.path}: Expand node {node.name!r} cannot expand {tuple(source)} to {given}"
            ) from None
        ctx.shapes[node.output[0]] = target
    if target is None:
        return _unknown(ctx, node)
    if ctx.is_param(x):  # a class token broadcast over the batch
        _emit(ctx, node, Expand(shape=tuple(target)), [], {"weight": _param(ctx, x)})
        return
    if x in ctx.consts:
        return _unknown(ctx, node)
    _emit(ctx, node, Expand(shape=tuple(target)), [x], {})


#: ONNX Pad modes -> dnnlens's (PyTorch's names).
PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_arguments(ctx: _Ctx, node) -> tuple[list[int], float, list[int] | None] | None:
    """``(pads, value, axes)``: attributes up to opset 10, constant inputs from 11; None when
    one of them is computed at run time."""
    attrs = _attrs(node)
    if ctx.opset < 11:
        return [int(p) for p in attrs.get("pads", [])], float(attrs.get("value", 0.0)), None
    values: list[np.ndarray | None] = []
    for value in node.input[1:4] if len(node.input) > 1 else []:
        if value and value not in ctx.consts:
            return None
        values.append(ctx.consts[value].array if value else None)
    pads, fill, axes = (values + [None, None, None])[:3]
    if pads is None:
        return None
    return (
        [int(p) for p in pads.reshape(-1)],
        float(fill.reshape(-1)[0]) if fill is not None and fill.size else 0.0,
        [int(a) for a in axes.reshape(-1)] if axes is not None else None,
    )


def _pad(ctx: _Ctx, node) -> None:
    """ONNX ``pads`` (all begins, then all ends, for ``axes`` or every axis) as one (begin,
    end) pair per dimension."""
    mode = PAD_MODES.get(str(_attrs(node).get("mode", "constant")))
    arguments = _pad_arguments(ctx, node)
    if mode is None or arguments is None:
        return _unknown(ctx, node, "pads computed at run time" if mode else "an unknown mode")
    pads, fill, axes = arguments
    rank = len(ctx.graph.shape_of(_ir(ctx, node.input[0])))
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if len(pads) != 2 * len(axes):
        raise ModelError(
            f"{ctx.path}: Pad node {node.name!r} has {len(pads)} pads for {len(axes)} axes"
        )
    pairs = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        pairs[axis] = (pads[i], pads[i + len(axes)])
    _emit(ctx, node, Pad(pads=tuple(pairs), mode=mode, value=fill), [node.input[0]], {})


def _dropout(ctx: _Ctx, node) -> None:
    training = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if training is not None and (
        training not in ctx.consts or bool(ctx.consts[training].array.reshape(-1)[0])
    ):
        return _unknown(ctx, node, "training_mode on (random masks)")
    ratio = _attrs(node).get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1] in ctx.consts:
        ratio = float(ctx.consts[node.input[1]].array)
    _emit(ctx, node, Dropout(p=float(ratio)), [node.input[0]], {})


def _attention(ctx: _Ctx, node) -> None:
    acts = [v for v in node.input[:4] if v]
    _emit(ctx, node, Attention(has_mask=len(acts) > 3), acts, {})


def _identity(ctx: _Ctx, node) -> None:
    ctx.alias[node.output[0]] = _ir(ctx, node.input[0])


#: How each operator class is read from an ONNX node, given the variant its op type means
#: (:class:`dnnlens.ops.base.Names`: ``Slice.NAMES.onnx["Split"]`` is ``"split"``).
_ONNX_READERS: dict[type[Op], Callable[[Any], Callable[..., None]]] = {
    Conv: lambda _: _conv,
    Linear: lambda _: _gemm,
    MatMul: lambda _: _matmul,
    Norm: lambda function: _batchnorm if function == "batchnorm" else _layernorm,
    Activation: lambda _: _unary,
    Binary: lambda _: _binary,
    Pool: lambda _: _pool,
    AdaptivePool: lambda _: _global_pool,
    Reduce: lambda _: _reduce,
    Reshape: lambda _: _reshape_like,
    Permute: lambda _: _transpose,
    Concat: lambda _: _concat,
    Softmax: lambda _: _softmax,
    Gather: lambda _: _gather,
    Pad: lambda _: _pad,
    Slice: lambda how: {
        "slice": _slice,
        "split": _split,
        "split_to_sequence": _split_to_sequence,
        "sequence_at": _sequence_at,
    }[how],
    Expand: lambda _: _expand,
    Dropout: lambda _: _dropout,
    Attention: lambda _: _attention,
}

#: ONNX op types that make no IR node of their own (the output is another name for a value).
STRUCTURAL: dict[str, Callable[..., None]] = {"Identity": _identity}

#: ONNX op type -> the rule that writes its IR node, from the op types the operators claim;
#: anything else becomes ``unknown``.
RULES: dict[str, Callable[..., None]] = {
    **STRUCTURAL,
    **{name: _ONNX_READERS[cls](variant) for name, (cls, variant) in names_in("onnx").items()},
}


#: Rules that also look at who reads the node's output (Gemm/MatMul fuse a following bias Add).
_READ_USERS = (_gemm, _matmul)


def _translate(ctx: _Ctx, node, users: dict[str, list]) -> None:
    rule = RULES.get(node.op_type, _unknown)
    if rule in _READ_USERS:
        rule(ctx, node, users)
    else:
        rule(ctx, node)


def import_onnx(
    path: str | Path, input_shape: InputShapes = None
) -> tuple[Graph, dict[str, np.ndarray]]:
    """Read an ONNX file into ``(graph, weights)``.

    ``input_shape``: the input's shape (batch included) when the file leaves dimensions
    dynamic, or a dict of shapes by input name for several inputs. The weights dict maps each
    ``Param.name`` (and batch-norm statistics by name) to its array, in the layout the IR
    operator expects, ready for :func:`dnnlens.engine.run`. The graph is canonical
    (:func:`dnnlens.canonical.canonicalise`).
    """
    graph, weights, _ = import_onnx_with_values(path, input_shape)
    return graph, weights


def import_onnx_with_values(
    path: str | Path, input_shape: InputShapes = None
) -> tuple[Graph, dict[str, np.ndarray], dict[str, str]]:
    """:func:`import_onnx`, plus the ONNX value each IR node computes (by node name), so that
    onnxruntime's intermediate values can be compared with ours layer by layer."""
    from dnnlens.canonical import canonicalise

    path = Path(path)
    model = _load(path)
    _check(model, path)
    inputs = _fix_inputs(model, path, input_shape)
    model = _infer_shapes(model, path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    graph = Graph(nodes=[], inputs=dict(inputs), outputs=[], name=path.stem)
    ctx = _Ctx(
        path=str(path),
        opset=opset,
        consts=_initializers(model, path),
        shapes=_static_shapes(model),
        graph=graph,
        dtypes=_dtypes(model),
    )
    ctx.alias.update({name: name for name in inputs})
    ctx.taken.update(inputs)
    users: dict[str, list] = {}
    for node in model.graph.node:
        for value in node.input:
            users.setdefault(value, []).append(node)
    for node in model.graph.node:
        if id(node) in ctx.fused or _try_fold(node, ctx):
            continue
        _translate(ctx, node, users)
    for out in model.graph.output:
        if out.name in ctx.alias:
            graph.outputs.append(ctx.alias[out.name])
        elif out.name in ctx.consts:
            continue  # a constant output: nothing to compute
        else:
            raise ModelError(f"{path}: graph output {out.name!r} is not computed by any node")
    return canonicalise(graph), ctx.weights, ctx.values
