"""The kernels are our own loop nests: no library convolution, matrix product or torch.

Scans the source (AST) of every operator module that holds kernels and fails on a call or
attribute named like a library product (``np.dot``, ``np.matmul``, ``np.einsum``, ...), the
``@`` operator, or any mention of scipy or torch.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import importlib
import pkgutil

import dnnlens.ops

# Every operator module, so a kernel added to any family later is scanned too.
KERNEL_MODULES = [importlib.import_module(f"dnnlens.ops.{info.name}")
                  for info in pkgutil.iter_modules(dnnlens.ops.__path__)]
FORBIDDEN_NAMES = {"dot", "vdot", "inner", "matmul", "einsum", "tensordot", "convolve",
                   "correlate", "fftconvolve", "conv2d", "linear", "scipy", "torch",
                   "sliding_window_view", "as_strided"}


def library_uses(source: str) -> list[str]:
    """Every forbidden name, attribute, import or ``@`` in ``source``, with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.MatMult):
            found.append(f"line {line}: @")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            found.append(f"line {line}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"line {line}: {node.id}")
        elif isinstance(node, ast.Import):
            found += [f"line {line}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_NAMES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {node.module.split(".")[0], *(a.name for a in node.names)}
            if names & FORBIDDEN_NAMES:
                found.append(f"line {line}: from {node.module} import ...")
    return found


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__)
def test_kernel_module_uses_no_library_product(module):
    source = Path(inspect.getfile(module)).read_text()
    assert library_uses(source) == [], f"{module.__name__} calls a library kernel"


@pytest.mark.parametrize("snippet", [
    "out = np.dot(x, w)", "out = x @ w", "out @= w", "np.einsum('ij,jk', a, b)",
    "np.matmul(a, b)", "np.tensordot(a, b, 1)", "np.convolve(a, b)", "import torch",
    "from scipy.signal import convolve2d", "F.conv2d(x, w)", "import scipy.signal",
])
def test_scanner_catches_library_products(snippet):
    assert library_uses(snippet), snippet
