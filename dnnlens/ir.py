"""The one intermediate representation (IR) every importer writes and everything else reads.

A :class:`Graph` is a list of :class:`Node` in execution order. Each node holds an operator
(``node.op``: a frozen dataclass from :mod:`dnnlens.ops` carrying the operator's attributes,
shape rule, cost formulas and kernels), the names of the values it consumes, their shapes, its
output shape and the parameters it uses (by their state-dict names, so weights can be attached
from any checkpoint later).

Shapes always include the batch dimension, ``(N, C, H, W)`` for images, exactly as traced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

from dnnlens.shapes import Shape

if TYPE_CHECKING:
    from dnnlens.ops.base import Op

__all__ = ["Graph", "Node", "Param", "Shape", "unique_name"]


@dataclass(frozen=True)
class Param:
    """A parameter tensor used by a node, identified by its state-dict name (``conv1.weight``).

    Two nodes that share a parameter (tied or re-used modules) hold the same ``name``; totals
    count it once, per-call costs count it at every use.
    """

    name: str
    shape: Shape
    #: Arithmetic the model's forward did on the parameter before this node read it, in
    #: order (Swin V2's ``"clamp, exp"`` of ``logit_scale``, ``"zero_"`` of a bias copy):
    #: counted as the parameter, but not its stored values, so the engine refuses it.
    computed: str = ""

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass
class Node:
    """One operator application.

    ``name`` is unique in the graph (a module called twice gets ``fc`` then ``fc#2``);
    ``module`` is the qualified name of the ``nn.Module`` (or ONNX/spec scope) it belongs to,
    used for grouping by depth. ``inputs`` name graph inputs or earlier nodes.
    ``params`` maps a role (``weight``, ``bias``, ...) to the parameter; the role ``bias``
    is counted as a bias, every other role as weights.
    """

    name: str
    op: Op
    inputs: list[str]
    input_shapes: list[Shape]
    output_shape: Shape
    params: dict[str, Param] = field(default_factory=dict)
    module: str = ""
    module_type: str = ""
    source: str = ""  # what the importer saw: "nn.Conv2d", "aten.addmm", "onnx:Conv", "spec"

    @property
    def kind(self) -> str:
        return self.op.kind


@dataclass
class Graph:
    """A network in execution order.

    ``inputs`` maps each graph input name to its shape; ``outputs`` names the nodes whose values
    the network returns. ``declared_params`` lists every parameter the model has, used by a
    node or not, each once by name (empty when the source does not say, e.g. a spec file).
    """

    nodes: list[Node]
    inputs: dict[str, Shape]
    outputs: list[str]
    name: str = "network"
    declared_params: dict[str, Param] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def shape_of(self, value: str) -> Shape:
        """Shape of a graph input or of a node's output."""
        if value in self.inputs:
            return self.inputs[value]
        return self.node(value).output_shape

    def params(self) -> dict[str, Param]:
        """Every distinct parameter, by state-dict name, in order of first use."""
        seen: dict[str, Param] = {}
        for node in self.nodes:
            for param in node.params.values():
                seen.setdefault(param.name, param)
        return seen

    def consumers(self) -> dict[str, list[str]]:
        """For each value (graph input or node), the nodes that read it, in execution order."""
        users: dict[str, list[str]] = {name: [] for name in self.inputs}
        for node in self.nodes:
            users.setdefault(node.name, [])
            for value in node.inputs:
                users.setdefault(value, []).append(node.name)
        return users


def unique_name(base: str, taken: set[str]) -> str:
    """``base`` if free, else ``base#2``, ``base#3``, ... (a module called several times)."""
    if base not in taken:
        return base
    count = 2
    while f"{base}#{count}" in taken:
        count += 1
    return f"{base}#{count}"
