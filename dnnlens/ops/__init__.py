"""Operators, one module per family; importing this package fills the registry.

Pipeline order: importers -> IR (:mod:`dnnlens.ir`) -> ops (here) -> engine / analysis -> report.
"""

from dnnlens.ops.base import REGISTRY, Op, Unknown, infer_shape, register
from dnnlens.ops.constant import Constant
from dnnlens.ops.conv import Conv
from dnnlens.ops.elementwise import Activation, Binary, Softmax
from dnnlens.ops.embedding import Embedding, Gather
from dnnlens.ops.linear import Linear
from dnnlens.ops.matmul import Attention, MatMul
from dnnlens.ops.norm import Norm, Reduce
from dnnlens.ops.pad import Pad, Roll
from dnnlens.ops.pool import AdaptivePool, Pool
from dnnlens.ops.recurrent import Recurrent, RecurrentState
from dnnlens.ops.resize import Resize
from dnnlens.ops.scan import CumSum
from dnnlens.ops.shape import Concat, Copy, Dropout, Expand, Permute, Reshape, Slice

__all__ = [
    "REGISTRY",
    "Op",
    "Unknown",
    "infer_shape",
    "register",
    "Conv",
    "Linear",
    "Pool",
    "AdaptivePool",
    "Activation",
    "Binary",
    "Softmax",
    "Reshape",
    "Permute",
    "Slice",
    "Expand",
    "Concat",
    "Copy",
    "Dropout",
    "MatMul",
    "Attention",
    "Norm",
    "Reduce",
    "Embedding",
    "Gather",
    "Pad",
    "Roll",
    "Resize",
    "CumSum",
    "Recurrent",
    "RecurrentState",
    "Constant",
]
