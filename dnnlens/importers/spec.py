"""Spec files: a network written as the course notebook's list of layer tuples, in TOML.

A spec names an input shape and a list of layers; each layer is a table with exactly one
*layer key* whose value is the notebook's tuple (``conv = [Kw, Kh, Cin, Cout]``,
``pool = [xw, yw, xs, ys]``, ``fc = [out, in]``) or ``true`` for layers without one
(``relu = true``, ``flatten = true``), plus optional settings (``stride``, ``padding``,
``name``, ``from``, ...). The full format is in docs/spec-files.md; the notebook's network is
examples/specs/analyzing-dnns.toml::

    input = [1, 1, 28, 28]
    layers = [
      { conv = [5, 5, 1, 4] }, { relu = true }, { pool = [2, 2, 2, 2] },
      ...
      { fc = [10, 256] },
    ]

Shapes propagate layer by layer through the operators' own shape rules
(:func:`dnnlens.ops.base.infer_shape`); the first layer that does not fit its input stops the
import with a :class:`~dnnlens.errors.SpecError` naming the file, the layer and both sizes.
Parameters get state-dict style names (``conv1.weight``, ``conv1.bias``), so a checkpoint of a
PyTorch module with the same layer names fits the graph. No weights are created.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from dnnlens.errors import ShapeError, SpecError
from dnnlens.ir import Graph, Node, Param, Shape
from dnnlens.ops import (
    Activation,
    AdaptivePool,
    Binary,
    Concat,
    Conv,
    Dropout,
    Linear,
    Norm,
    Op,
    Permute,
    Pool,
    Reshape,
    Softmax,
    infer_shape,
)
from dnnlens.ops.base import names_in

#: Settings every layer accepts besides its layer key.
COMMON_KEYS = frozenset({"name", "from"})

Raw = Mapping[str, Any]


@dataclass
class _State:
    """What the builder knows while walking the layer list."""

    path: str
    graph: Graph
    current: str  # the value the next layer reads by default
    counters: dict[str, int] = field(default_factory=dict)

    def shape(self, value: str) -> Shape:
        return self.graph.shape_of(value)


# --- small validators: each raises SpecError naming the layer ---------------------------


def _fail(where: str, message: str) -> SpecError:
    return SpecError(f"{where}: {message}")


def _positive_ints(
    where: str, key: str, value: Any, count: int | None = None, allow_zero: bool = False
) -> tuple[int, ...]:
    """A list of positive ints (``count`` of them when given); bool is not an int here."""
    items = value if isinstance(value, list) else None
    if items is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise _fail(where, f"{key} must be a list of integers, got {value!r}")
    if count is not None and len(items) != count:
        raise _fail(where, f"{key} needs {count} numbers, got {len(items)}: {value!r}")
    low = 0 if allow_zero else 1
    if any(v < low for v in items):
        what = "non-negative" if allow_zero else "positive"
        raise _fail(where, f"{key} sizes must be {what}, got {value!r}")
    return tuple(items)


def _pair(where: str, key: str, value: Any, allow_zero: bool = False) -> tuple[int, int]:
    """``2`` or ``[x, y]`` (width first, the notebook's order) -> ``(x, y)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    x, y = _positive_ints(where, key, value, 2, allow_zero)
    return x, y


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"{key} must be true or false, got {value!r}")
    return value


def _check_keys(where: str, raw: Raw, allowed: set[str] | frozenset[str]) -> None:
    extra = sorted(set(raw) - set(allowed) - COMMON_KEYS)
    if extra:
        raise _fail(
            where,
            f"unknown setting(s) {', '.join(extra)} "
            f"(allowed: {', '.join(sorted(set(allowed) | COMMON_KEYS))})",
        )


def _padding(
    where: str, value: Any, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding as ((top, bottom), (left, right)) for (H, W).

    Accepts ``"same"`` (the notebook's ``K//2`` on every side: output = input for odd
    kernels at stride 1), ``"valid"`` (none), an int, ``[pw, ph]`` (width first), or
    ``[left, right, top, bottom]``.
    """
    kw, kh = kernel
    dw, dh = dilation
    if value == "same":
        ph, pw = (dh * (kh - 1) + 1) // 2, (dw * (kw - 1) + 1) // 2
        return (ph, ph), (pw, pw)
    if value == "valid":
        return (0, 0), (0, 0)
    if isinstance(value, list) and len(value) == 4:
        left, right, top, bottom = _positive_ints(where, "padding", value, 4, allow_zero=True)
        return (top, bottom), (left, right)
    if isinstance(value, str):
        raise _fail(where, f'padding must be "same", "valid", a number or a list, got {value!r}')
    pw, ph = _pair(where, "padding", value, allow_zero=True)
    return (ph, ph), (pw, pw)


# --- layer builders: raw table -> (op, params by role, inputs) -------------------------

Built = tuple[Op, dict[str, Shape], list[str]]


def _conv(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(
        where, raw, {key, "stride", "padding", "groups", "dilation", "bias", "output_padding"}
    )
    kw, kh, cin, cout = _positive_ints(where, key, raw[key], 4)
    stride = _pair(where, "stride", raw.get("stride", 1))
    dilation = _pair(where, "dilation", raw.get("dilation", 1))
    groups = raw.get("groups", 1)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise _fail(where, f"groups must be a positive integer, got {groups!r}")
    if cin % groups or cout % groups:
        raise _fail(where, f"channels in={cin} out={cout} are not divisible by groups={groups}")
    transposed = key == "convtranspose"
    pads = _padding(
        where, raw.get("padding", "valid" if transposed else "same"), (kw, kh), dilation
    )
    out_pad = _pair(where, "output_padding", raw.get("output_padding", 0), allow_zero=True)
    if not transposed and "output_padding" in raw:
        raise _fail(where, "output_padding applies to convtranspose only")
    op = Conv(
        stride=(stride[1], stride[0]),
        padding=pads,
        dilation=(dilation[1], dilation[0]),
        groups=groups,
        transposed=transposed,
        output_padding=(out_pad[1], out_pad[0]),
    )
    # The notebook's Cin is the layer's input channels; check it before the weight rule does.
    if len(x) == 4 and x[1] != cin:
        raise _fail(
            where, f"{key} expects {cin} input channels but its input {tuple(x)} has {x[1]}"
        )
    weight = (cin, cout // groups, kh, kw) if transposed else (cout, cin // groups, kh, kw)
    params: dict[str, Shape] = {"weight": weight}
    if _flag(where, "bias", raw.get("bias", True)):
        params["bias"] = (cout,)
    return op, params, [st.current]


def _pool(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key, "mode", "padding", "ceil_mode", "count_include_pad"})
    xw, yw, xs, ys = _positive_ints(where, key, raw[key], 4)
    mode = {"maxpool": "max", "avgpool": "avg"}.get(key, raw.get("mode", "max"))
    if key != "pool" and "mode" in raw:
        raise _fail(where, f"{key} sets its mode already; use pool with mode = ... instead")
    if mode not in ("max", "avg"):
        raise _fail(where, f'pool mode must be "max" or "avg", got {mode!r}')
    pads = _padding(where, raw.get("padding", "valid"), (xw, yw), (1, 1))
    op = Pool(
        mode=mode,
        kernel=(yw, xw),
        stride=(ys, xs),
        padding=pads,
        ceil_mode=_flag(where, "ceil_mode", raw.get("ceil_mode", False)),
        count_include_pad=_flag(where, "count_include_pad", raw.get("count_include_pad", True)),
    )
    return op, {}, [st.current]


def _adaptive(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key, "mode"})
    if key == "globalpool":
        size: tuple[int, ...] = (1,) * max(len(x) - 2, 1)
        _flag(where, key, raw[key])
    else:
        w, h = _positive_ints(where, key, raw[key], 2)
        size = (h, w)
    mode = raw.get("mode", "avg")
    if mode not in ("max", "avg"):
        raise _fail(where, f'mode must be "max" or "avg", got {mode!r}')
    return AdaptivePool(mode=mode, output_size=size), {}, [st.current]


def _fc(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key, "bias"})
    out, inp = _positive_ints(where, key, raw[key], 2)
    if x[-1] != inp:
        raise _fail(
            where,
            f"fc expects {inp} inputs but its input {tuple(x)} has {x[-1]} "
            f"values per row (did you mean fc = [{out}, {x[-1]}]?)",
        )
    params: dict[str, Shape] = {"weight": (out, inp)}
    if _flag(where, "bias", raw.get("bias", True)):
        params["bias"] = (out,)
    return Linear(), params, [st.current]


def _activation(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key})
    if not _flag(where, key, raw[key]):
        raise _fail(where, f"{key} = false describes no layer; remove it")
    return Activation(function=key), {}, [st.current]


def _flatten(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key})
    _flag(where, key, raw[key])
    return Reshape.between(x, (x[0], prod(x[1:]))), {}, [st.current]


def _reshape(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key})
    value = raw[key]
    if not isinstance(value, list) or not all(
        isinstance(v, int) and (v > 0 or v == -1) for v in value
    ):
        raise _fail(
            where, f"reshape must list the sizes after the batch (-1 once allowed), got {value!r}"
        )
    target = (x[0], *value)
    op = Reshape(shape=target) if -1 in value else Reshape.between(x, target)
    return op, {}, [st.current]


def _permute(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key})
    dims = _positive_ints(where, key, raw[key], allow_zero=True)
    return Permute(dims=dims), {}, [st.current]


def _softmax(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key, "axis"})
    _flag(where, key, raw[key])
    axis = raw.get("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise _fail(where, f"axis must be an integer, got {axis!r}")
    return Softmax(axis=axis, log=key == "logsoftmax"), {}, [st.current]


def _dropout(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key})
    p = raw[key]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise _fail(where, f"dropout is its probability in [0, 1), got {p!r}")
    return Dropout(p=float(p)), {}, [st.current]


def _reference(where: str, st: _State, name: Any) -> str:
    """A named earlier layer (or graph input), for skips, ``from`` and concat."""
    if not isinstance(name, str):
        raise _fail(where, f"a layer reference must be a layer name, got {name!r}")
    known = [*st.graph.inputs, *(n.name for n in st.graph.nodes)]
    if name not in known:
        raise _fail(
            where,
            f"refers to {name!r}, which is not an earlier layer (earlier: {', '.join(known)})",
        )
    return name


def _binary(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    """``add = "conv1"``: the previous value plus the named earlier layer's output."""
    _check_keys(where, raw, {key})
    other = _reference(where, st, raw[key])
    return Binary(function=key), {}, [st.current, other]


def _concat(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    _check_keys(where, raw, {key, "axis"})
    names = raw[key]
    if not isinstance(names, list) or not names:
        raise _fail(where, f"concat lists the layers to join, got {names!r}")
    inputs = [_reference(where, st, n) for n in names]
    axis = raw.get("axis", 1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise _fail(where, f"axis must be an integer, got {axis!r}")
    return Concat(axis=axis), {}, inputs


def _norm(where: str, raw: Raw, st: _State, key: str, x: Shape) -> Built:
    """``batchnorm = true`` (over channels, with running statistics) or ``layernorm = true``
    (over the last dimension; ``layernorm = [sizes]`` for several trailing ones)."""
    _check_keys(where, raw, {key, "affine", "eps"})
    affine = _flag(where, "affine", raw.get("affine", True))
    eps = raw.get("eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise _fail(where, f"eps must be a positive number, got {eps!r}")
    name = raw.get("name", "")
    if key == "batchnorm":
        _flag(where, key, raw[key])
        if len(x) < 2:
            raise _fail(where, f"batchnorm needs an input (N, C, ...), got {tuple(x)}")
        shape: Shape = (x[1],)
        op: Op = Norm(
            function="batchnorm",
            eps=float(eps),
            stats=(f"{name}.running_mean", f"{name}.running_var") if name else (),
        )
    else:
        value = raw[key]
        shape = (x[-1],) if value is True else _positive_ints(where, key, value)
        op = Norm(function="layernorm", normalized_shape=tuple(shape), eps=float(eps))
    params = {"weight": shape, "bias": shape} if affine else {}
    return op, params, [st.current]


Builder = Callable[[str, Raw, _State, str, Shape], Built]

#: How each operator class is built from a layer table (the builder reads the layer key
#: itself; the variant a key means is in the operator's ``NAMES.spec``).
_SPEC_READERS: dict[type[Op], Callable[[Any], Builder]] = {
    Conv: lambda _: _conv,
    Pool: lambda _: _pool,
    AdaptivePool: lambda _: _adaptive,
    Linear: lambda _: _fc,
    Reshape: lambda how: _flatten if how == "flatten" else _reshape,
    Permute: lambda _: _permute,
    Softmax: lambda _: _softmax,
    Dropout: lambda _: _dropout,
    Concat: lambda _: _concat,
    Binary: lambda _: _binary,
    Activation: lambda _: _activation,
    Norm: lambda _: _norm,
}

#: Layer key -> builder, from the spec keys the operators claim (every activation the IR
#: knows is a layer key of its own).
BUILDERS: dict[str, Builder] = {
    key: _SPEC_READERS[cls](variant) for key, (cls, variant) in sorted(names_in("spec").items())
}

#: Short names for default layer names (conv1, pool1, fc1, ...).
_PREFIX = {"maxpool": "pool", "avgpool": "pool", "convtranspose": "deconv"}


def _layer_key(where: str, raw: Raw) -> str:
    keys = [k for k in raw if k in BUILDERS]
    if len(keys) != 1:
        unknown = sorted(set(raw) - COMMON_KEYS - OPTION_KEYS)
        if unknown and not keys:
            raise _fail(
                where,
                f"unknown layer type {unknown[0]!r} (known: {', '.join(sorted(BUILDERS))})",
            )
        found = ", ".join(keys) if keys else "none"
        raise _fail(where, f"a layer needs exactly one layer type key, found {found}")
    return keys[0]


OPTION_KEYS = frozenset(
    {
        "stride",
        "padding",
        "groups",
        "dilation",
        "bias",
        "output_padding",
        "mode",
        "ceil_mode",
        "count_include_pad",
        "axis",
        "affine",
        "eps",
    }
)


def _add_layer(index: int, raw: Any, st: _State) -> None:
    where = f"{st.path}: layer {index}"
    if not isinstance(raw, dict):
        raise _fail(where, f"a layer is a table like {{ conv = [5, 5, 1, 4] }}, got {raw!r}")
    key = _layer_key(where, raw)
    prefix = _PREFIX.get(key, key)
    st.counters[prefix] = st.counters.get(prefix, 0) + 1
    name = raw.get("name", f"{prefix}{st.counters[prefix]}")
    if not isinstance(name, str) or not name:
        raise _fail(where, f"name must be a non-empty string, got {name!r}")
    if name in st.graph.inputs or any(n.name == name for n in st.graph.nodes):
        raise _fail(where, f"layer name {name!r} is used twice")
    where = f"{st.path}: layer {index} {name!r} ({key})"
    if "from" in raw:
        st.current = _reference(where, st, raw["from"])
    x = st.shape(st.current)
    build = BUILDERS[key]
    op, param_shapes, inputs = build(where, {**raw, "name": name}, st, key, x)
    input_shapes = [st.shape(v) for v in inputs]
    try:
        out = infer_shape(name, op, input_shapes, param_shapes)
    except ShapeError as exc:
        raise _fail(f"{st.path}: layer {index}", str(exc)) from None
    params = {role: Param(f"{name}.{role}", shape) for role, shape in param_shapes.items()}
    st.graph.nodes.append(
        Node(
            name=name,
            op=op,
            inputs=inputs,
            input_shapes=input_shapes,
            output_shape=out,
            params=params,
            module=name,
            module_type=f"spec:{key}",
            source="spec",
        )
    )
    st.current = name


def _input_shape(path: str, doc: Raw) -> Shape:
    if "input" not in doc:
        raise SpecError(
            f"{path}: missing 'input', the input shape, e.g. input = [1, 1, 28, 28] "
            f"(batch, channels, height, width)"
        )
    return _positive_ints(f"{path}: input", "input", doc["input"])


def spec_from_dict(doc: Raw, path: str = "<spec>") -> Graph:
    """Build the graph of an already parsed spec (a dict as :mod:`tomllib` returns it)."""
    unknown = sorted(set(doc) - {"name", "input", "layers", "layer"})
    if unknown:
        raise SpecError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)} (allowed: name, input, layers)"
        )
    shape = _input_shape(path, doc)
    for key in ("layers", "layer"):
        if key in doc and not isinstance(doc[key], list):
            raise SpecError(f"{path}: {key!r} must be a list of layer tables, got {doc[key]!r}")
    layers = [*doc.get("layers", []), *doc.get("layer", [])]
    if "layers" in doc and "layer" in doc:
        raise SpecError(f"{path}: use either 'layers = [...]' or '[[layer]]' tables, not both")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{path}: no layers; add layers = [ {{ conv = [5, 5, 1, 4] }}, ... ]")
    name = doc.get("name", Path(path).stem)
    graph = Graph(nodes=[], inputs={"input": shape}, outputs=[], name=str(name))
    st = _State(path=path, graph=graph, current="input")
    for index, raw in enumerate(layers, start=1):
        _add_layer(index, raw, st)
    graph.outputs = [st.current]
    from dnnlens.canonical import canonicalise

    return canonicalise(graph)


def import_spec(path: str | Path, batch: int | None = None) -> Graph:
    """Read a TOML spec file into a :class:`~dnnlens.ir.Graph` (shapes checked, no weights).

    ``batch``, when given, replaces the batch size (the first number of ``input``).

    Raises :class:`~dnnlens.errors.SpecError` (one line, naming the file and the layer) for
    a missing or malformed file, an unknown layer type, a missing or negative size, or the
    first layer whose input does not fit it.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a valid TOML spec file: {exc}") from None
    if batch is not None and isinstance(doc.get("input"), list) and doc["input"]:
        doc["input"] = [batch, *doc["input"][1:]]
    return spec_from_dict(doc, str(path))
