"""A Qwen2 forward of static shape over the loaded model's own modules, for CUDA-graph replay.

transformers' forward builds masks and caches in Python on every call, and how it does so changes
between releases; a graph needs a pass with no host synchronisation and fixed tensor addresses. So,
as gpt-fast does, this module runs the same weights (the HF modules' parameters, untouched) through a
plain loop: the caller owns the KV tensors and the boolean attention mask, and says where each new key
is written. Checked against the transformers forward in tests/test_static_path.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .int8_weights import quantize

Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class KVCache:
    """Keys and values of every layer, [B, kv_heads, length, head_dim] each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].size(2)


MIN_CACHE = 2048


def cache_length(needed: int) -> int:
    """KV slots for `needed` tokens: at least 2048 (an editor's context and budget fit), else the next
    power of two, so a cache allocated once serves the following requests."""
    length = MIN_CACHE
    while length < needed:
        length *= 2
    return length


@dataclass(frozen=True)
class _Projections:
    """One layer's seven matrix products: the exact modules, or their int8 copies."""

    q: Linear
    k: Linear
    v: Linear
    o: Linear
    gate: Linear
    up: Linear
    down: Linear

    @classmethod
    def of(cls, layer, wrap: Callable[[torch.nn.Linear], Linear]) -> "_Projections":
        attn, mlp = layer.self_attn, layer.mlp
        return cls(*(wrap(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                         mlp.gate_proj, mlp.up_proj, mlp.down_proj)))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticQwen2:
    def __init__(self, model, int8: bool = False) -> None:
        """int8: also keep int8 copies of the linear weights, for passes called with int8=True (the CPU
        decode step: fim_lsp/engine/int8_weights.py)."""
        cfg = model.config
        base = model.model
        self.model = model
        self.embed, self.layers, self.norm, self.head = base.embed_tokens, base.layers, base.norm, model.lm_head
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.inv_freq = base.rotary_emb.inv_freq
        self.rope_scale = float(getattr(base.rotary_emb, "attention_scaling", 1.0))
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        # CPU: sdpa's flash kernel reads the grouped keys as they are (enable_gqa, torch >= 2.5), where
        # repeating them copies every layer's keys and values 7x per pass (the whole 2,048-slot cache on
        # the static path). CUDA: its fused kernels take no GQA with a mask, so the keys are repeated.
        self.fused_gqa = self.device.type == "cpu" and self.kv_heads != self.heads
        self.exact = [_Projections.of(layer, lambda m: m) for layer in self.layers]
        self.int8 = [_Projections.of(layer, quantize) for layer in self.layers] if int8 else None
        self.int8_head = quantize(self.head) if int8 else None

    def new_cache(self, batch: int, length: int) -> KVCache:
        shape = (batch, self.kv_heads, length, self.head_dim)
        make = lambda: torch.zeros(shape, dtype=self.dtype, device=self.device)  # noqa: E731
        return KVCache([make() for _ in self.layers], [make() for _ in self.layers])

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # as transformers computes it: in float32, scaled, then cast to the model's dtype
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        return cos.to(self.dtype)[:, None], sin.to(self.dtype)[:, None]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None = None, write_at: torch.Tensor | None = None,
                rows: torch.Tensor | None = None, kv_len: int | None = None,
                prefix: tuple[KVCache, torch.Tensor, int] | None = None, int8: bool = False) -> torch.Tensor:
        """Logits [B, R, V] at sequence rows `rows` ([R] for every batch row alike, [B, R] per row;
        all rows when None).

        ids, positions: [B, T]. mask: bool [B, 1, T, K], True = attend. The keys are, in order:
        - with `cache`: this pass's keys are first written at cache slots `write_at` ([T], or [B, T]
          per row), then the first `kv_len` slots (default: all) are attended, so the mask must let
          each query see its own slot; K = kv_len;
        - with `prefix` = (cache, batch rows [B], W): that cache's first W slots of the given rows,
          read and never written, then this pass's own keys; K = W + T;
        - else this pass's own keys; K = T.
        int8: the matrix products on the int8 copies (built with int8=True)."""
        b, t = ids.shape
        x = self.embed(ids)
        cos, sin = self._rope(positions)
        if write_at is not None and write_at.dim() == 2:  # per-row slots: cache[b, :, write_at[b, j]] = key j
            # index_put_, not scatter_: on CPU a bf16 scatter_ copies the whole cache tensor (twice) on
            # every call, 10-30 ms per layer at 2,048 slots, where this writes the new keys alone
            batch_rows = torch.arange(b, device=ids.device)[:, None]
        if int8 and self.int8 is None:
            raise ValueError("int8 pass on a StaticQwen2 built without int8 weights")
        projections, head = (self.int8, self.int8_head) if int8 else (self.exact, self.head)
        for i, (layer, p) in enumerate(zip(self.layers, projections)):
            h = layer.input_layernorm(x)
            q = p.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = p.k(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = p.v(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if cache is not None:
                if write_at.dim() == 2:
                    cache.keys[i][batch_rows, :, write_at] = k.transpose(1, 2)
                    cache.values[i][batch_rows, :, write_at] = v.transpose(1, 2)
                else:
                    cache.keys[i].index_copy_(2, write_at, k)
                    cache.values[i].index_copy_(2, write_at, v)
                k, v = cache.keys[i], cache.values[i]
                if kv_len is not None and kv_len < k.size(2):
                    k, v = k[:, :, :kv_len], v[:, :, :kv_len]
            elif prefix is not None:
                held, batch_rows, width = prefix
                k = torch.cat([held.keys[i][batch_rows, :, :width], k], dim=2)
                v = torch.cat([held.values[i][batch_rows, :, :width], v], dim=2)
            if self.fused_gqa:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            else:
                if self.kv_heads != self.heads:  # repeated, as transformers does with a mask
                    k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
                    v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + p.o(o.transpose(1, 2).reshape(b, t, -1))
            h = layer.post_attention_layernorm(x)
            x = x + p.down(layer.mlp.act_fn(p.gate(h)) * p.up(h))  # transformers' Qwen2MLP
        if rows is not None and rows.dim() == 2:
            x = x.gather(1, rows[:, :, None].expand(-1, -1, x.size(-1)))
        elif rows is not None:
            x = x.index_select(1, rows)
        return head(self.norm(x))
