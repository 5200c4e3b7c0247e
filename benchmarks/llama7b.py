"""A LLaMA-7B-shaped transformer on the meta device, shared by the benchmarks that analyse
it (benchmarks/analysis.py: the forward; benchmarks/training_step.py: a training step).

Run as scripts, the benchmarks find this module beside them (``sys.path[0]``)."""

from __future__ import annotations


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
