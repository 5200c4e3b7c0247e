"""The kernels are our own loop nests: no library convolution, matrix product or torch.

Scans the source (AST) of every operator module and fails on a call or attribute named like a
library product (``np.dot``, ``np.matmul``, ``np.einsum``, ...), the ``@`` operator, or any
mention of scipy or torch, anywhere except in an operator's PyTorch oracle: a method named
``torch_oracle``, or a helper whose name starts with ``torch_`` (``torch_tensors``). Kernel
code may not even name such a helper, so torch cannot reach a kernel through one.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import dnnlens.ops

# Every operator module, so a kernel added to any family later is scanned too.
KERNEL_MODULES = [
    importlib.import_module(f"dnnlens.ops.{info.name}")
    for info in pkgutil.iter_modules(dnnlens.ops.__path__)
]
FORBIDDEN_NAMES = {
    "dot",
    "vdot",
    "inner",
    "matmul",
    "einsum",
    "tensordot",
    "convolve",
    "correlate",
    "fftconvolve",
    "conv2d",
    "linear",
    "scipy",
    "torch",
    "sliding_window_view",
    "as_strided",
}


def is_oracle(node: ast.AST) -> bool:
    """A function holding oracle code: ``torch_oracle`` or a ``torch_*`` helper."""
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
        node.name.startswith("torch_")
    )


def kernel_nodes(tree: ast.AST):
    """Every AST node outside oracle functions (their bodies are not walked)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not is_oracle(child))


def forbidden(name: str) -> bool:
    return name in FORBIDDEN_NAMES or name.startswith("torch")


def library_uses(source: str) -> list[str]:
    """Every forbidden name, attribute, import or ``@`` outside the oracles, with its line."""
    found = []
    for node in kernel_nodes(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.MatMult):
            found.append(f"line {line}: @")
        elif isinstance(node, ast.Attribute) and forbidden(node.attr):
            found.append(f"line {line}: .{node.attr}")
        elif isinstance(node, ast.Name) and forbidden(node.id):
            found.append(f"line {line}: {node.id}")
        elif isinstance(node, ast.Import):
            found += [
                f"line {line}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_NAMES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # importing an oracle helper by name is fine; using it outside an oracle is not
            names = {node.module.split(".")[0], *(a.name for a in node.names)}
            if names & FORBIDDEN_NAMES:
                found.append(f"line {line}: from {node.module} import ...")
    return found


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__)
def test_kernel_module_uses_no_library_product(module):
    source = Path(inspect.getfile(module)).read_text()
    assert library_uses(source) == [], f"{module.__name__} calls a library kernel"


@pytest.mark.parametrize(
    "snippet",
    [
        "out = np.dot(x, w)",
        "out = x @ w",
        "out @= w",
        "np.einsum('ij,jk', a, b)",
        "np.matmul(a, b)",
        "np.tensordot(a, b, 1)",
        "np.convolve(a, b)",
        "import torch",
        "from scipy.signal import convolve2d",
        "F.conv2d(x, w)",
        "import scipy.signal",
    ],
)
def test_scanner_catches_library_products(snippet):
    assert library_uses(snippet), snippet


PLANTED = """
class Op:
    def reference(self, inputs, weights):
        return {kernel}

    def torch_oracle(self, inputs, weights):
        import torch
        return torch.matmul(*torch_tensors(*inputs))


def loops(a, b, out):
    out[:] = {loop}
"""


@pytest.mark.parametrize(
    "kernel, loop",
    [
        ("np.dot(inputs[0], inputs[1])", "0"),  # a library product in a kernel method
        ("0", "np.dot(a, b)"),  # ... in a loop function
        ("torch_tensors(inputs[0])[0].numpy()", "0"),  # torch smuggled in through a helper
        ("torch.relu(inputs[0])", "0"),
    ],
)
def test_scanner_catches_a_library_product_planted_in_a_kernel(kernel, loop):
    assert library_uses(PLANTED.format(kernel=kernel, loop=loop))


def test_scanner_allows_torch_in_the_oracle_only():
    assert library_uses(PLANTED.format(kernel="inputs[0]", loop="a")) == []
