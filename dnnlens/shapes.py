"""The shape type every layer of dnnlens speaks (a leaf module: it imports nothing of ours,
so the IR and the operators can both use it without importing each other).

Shapes always include the batch dimension, ``(N, C, H, W)`` for images, as PyTorch has them.
"""

from __future__ import annotations

Shape = tuple[int, ...]
