"""The one pass every importer's graph goes through, so that a model gives the same IR
whether it came from PyTorch, from its ONNX export or from a spec file.

Pipeline position: importers -> **canonical** (here) -> IR for analysis, engine, reports.

What it makes the same (each rewrite keeps the node's name, inputs, shapes and counts):

* axes are non-negative (``softmax(dim=-1)`` on ``(N, C)`` and ONNX ``axis=1`` are one
  node); reduction axes are sorted;
* a max pool's ``count_include_pad`` (meaningless for a max) is the operator's default;
* a mean (max) over every spatial axis with the dimensions kept -- ``x.mean((2, 3),
  keepdim=True)``, ONNX ``ReduceMean`` over H, W -- is the global average (max) pool it is,
  the node ``nn.AdaptiveAvgPool2d(1)`` and ONNX ``GlobalAveragePool`` give.

Rewrites only the engine wants (folding a batch norm into its conv, fusing) are not done
here: they are steps of the engine's plan (:mod:`dnnlens.engine`), and the analysis shows
the model as written.
"""

from __future__ import annotations

from dataclasses import replace

from dnnlens.ir import Graph, Node
from dnnlens.ops import AdaptivePool, Concat, Op, Pool, Reduce, Slice, Softmax

#: Reductions that are a global pooling when taken over every spatial axis, keeping them.
_GLOBAL_POOLS = {"mean": "avg", "amax": "max"}


def canonicalise(graph: Graph) -> Graph:
    """``graph`` with each node's operator in its canonical form (in place; returned)."""
    for node in graph:
        node.op = canonical_op(node)
    return graph


def canonical_op(node: Node) -> Op:
    """The canonical form of one node's operator."""
    op = node.op
    rank = len(node.input_shapes[0]) if node.input_shapes else 0
    if isinstance(op, Reduce) and rank:
        dims = tuple(sorted({d % rank for d in op.dims})) if op.dims else tuple(range(rank))
        pool = _GLOBAL_POOLS.get(op.function)
        if pool and op.keepdim and rank > 2 and dims == tuple(range(2, rank)):
            return AdaptivePool(mode=pool, output_size=(1,) * (rank - 2))
        return replace(op, dims=dims)
    if isinstance(op, Pool) and op.mode == "max":
        # max pooling ignores count_include_pad: the default, so equal pools compare equal
        return replace(op, count_include_pad=Pool().count_include_pad)
    if isinstance(op, Softmax) and rank and op.axis < 0:
        return replace(op, axis=op.axis % rank)
    if isinstance(op, Concat) and node.output_shape and op.axis < 0:
        return replace(op, axis=op.axis % len(node.output_shape))
    if isinstance(op, Slice) and rank and op.axis < 0:
        return replace(op, axis=op.axis % rank)
    return op
