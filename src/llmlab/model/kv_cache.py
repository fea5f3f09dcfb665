"""A static, preallocated key/value cache for one attention layer.

Shape legend: B batch, Hkv key/value heads, S cache length (max_seq_len of the cache), T new
tokens this call, hd head width.

The buffers never change shape, and positions are written with a tensor `input_pos`, so a decode
step has the same graph at every position: `torch.compile(fullgraph=True)` compiles it once and
CUDA graphs can replay it (gpt-fast's design). K/V are stored at n_kv_heads, not n_heads: that is
the memory GQA saves (Ainslie et al. 2023).
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        # Non-persistent: a cache is inference state, never saved with the weights.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, Hkv, T, hd) at positions input_pos (T,); return the full buffers (B, Hkv, S, hd)."""
        self.k.index_copy_(2, input_pos, k_new.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v_new.to(self.v.dtype))
        return self.k, self.v

    def mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """(T, S) bool: the query at input_pos[t] sees the slots at positions 0..input_pos[t]. Built
        per call (slot s holds position s), so no (S, S) mask sits in memory beside the cache."""
        slots = torch.arange(self.max_seq_len, device=input_pos.device)
        return slots[None, :] <= input_pos[:, None]

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]
