"""What the analysis benchmarks share: a LLaMA-7B-shaped transformer on the meta device
(benchmarks/analysis.py analyses its forward, benchmarks/training_step.py a training step),
the child-process harness and the machine line of a results header.

Run as scripts, the benchmarks find this module beside them (``sys.path[0]``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys


def llm_7b() -> tuple:
    """A LLaMA-7B-shaped transformer on meta (32 blocks,
    d=4096, 32 heads, SwiGLU MLP 11008, vocabulary 32,000) and its 2,048 meta tokens."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    dim, layers, heads, hidden, vocab = 4096, 32, 32, 11008, 32000

    class RMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm, self.mlp_norm = RMSNorm(), RMSNorm()
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
            self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, False)
            self.down = nn.Linear(hidden, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            h = self.attn_norm(x)
            q, k, v = (
                p(h).view(b, t, heads, dim // heads).transpose(1, 2)
                for p in (self.q, self.k, self.v)
            )  # (B, heads, T, head_dim)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, dim))
            h = self.mlp_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class LLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = RMSNorm()
            self.head = nn.Linear(dim, vocab, bias=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    with torch.device("meta"):
        model = LLM()
    return model, torch.zeros(1, 2048, dtype=torch.long, device="meta")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(script: str, *argv: str) -> dict:
    """Run ``script`` again in a fresh Python process (so each measurement starts cold and its
    peak memory is its own) and return the JSON object its last line prints."""
    out = subprocess.run(
        [sys.executable, script, *argv], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The CPU model, core count, Python and torch versions, for a results header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
