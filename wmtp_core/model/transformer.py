"""Meta's multi-token-prediction LLaMA (Gloeckle et al. 2024), top to bottom in the order data flows.

tokens -> tok_embeddings -> layers[:-1] (the trunk) -> h_trunk
h_trunk -> head k (k=1: layers[-1]; k>=2: extra_heads[k-2]) -> norm -> output -> logits of token t+k

Heads are numbered from 1, as in DESIGN.md: head k at position t predicts token t+k, so head 1 is the next-token
head.

Parameter names follow facebook/multi-token-prediction so its consolidated.pth loads with strict=True. Rotary
embeddings use Meta's interleaved complex pairs and are computed per call, so no RoPE tensor is ever stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmtp_core.model.args import ModelArgs

# Up to this many rows, inference on the CPU multiplies as (W @ x^T)^T; see `linear`.
SMALL_ROWS = 16


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x)`, computed as (W @ x^T)^T for a few rows (2..SMALL_ROWS) on the CPU outside autograd.

    Decoding multiplies a handful of rows by every weight matrix, so it is bound by reading the weights. For x @ W^T
    with 2-16 rows MKL takes a GEMM path that first packs W, about twice the time of the matrix-vector product of
    one row; W @ x^T streams W once and costs no more than one row (measured on 2 cores for a 576 x 1536 matrix:
    about 0.55 ms for one row either way, 1.0 ms for 4 rows as x @ W^T, 0.45 ms as W @ x^T). This is what lets a
    speculative verify pass over several tokens cost about what a greedy step costs. One row, training and the GPU
    take the usual path.
    """
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if 1 < rows <= SMALL_ROWS and x.device.type == "cpu" and not torch.is_grad_enabled():
        flat = x.reshape(rows, x.shape[-1])
        # The copy back to row-major costs rows x out_features: nothing beside reading W.
        return torch.mm(layer.weight, flat.t()).t().contiguous().view(*x.shape[:-1], layer.out_features)
    return layer(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # x * rsqrt(mean(x^2) + eps) computed in fp32, as Meta does; F.rms_norm is one kernel instead of five
        # elementwise passes. In fp32, folding the weight into it gives the same numbers and keeps one activation
        # fewer for backward; in bf16/fp16, Meta rounds before scaling by the weight, and so do we.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def rope_frequencies(head_dim: int, theta: float, start_pos: int, seq_len: int, device=None) -> Tensor:
    """Complex rotations e^{i * pos * theta^(-2j/d)} for positions start_pos..start_pos+seq_len-1: [T, d/2]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    positions = torch.arange(start_pos, start_pos + seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate consecutive pairs (x[2j], x[2j+1]) of every head of x [B, T, H, d] as complex numbers."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(xc * freqs_cis[None, :, None, :]).flatten(3)
    return rotated.type_as(x)


@dataclass
class KVCache:
    """Keys and values of every block (trunk blocks first, then head 1, 2, ...), each [B, n_kv_heads, S, d].

    Positional: a call with start_pos=p overwrites positions p..p+T-1 and attends to 0..p+T-1, so dropping
    rejected speculative tokens is just calling again with a smaller start_pos.

    `pad` [B, S] (bool, optional) marks positions that hold left padding: no query attends to them (a padding
    query attends to itself alone, so it stays finite). Prompts of different lengths then share a batch; RoPE
    scores depend on relative positions only, so a left-padded row attends as it would unpadded.
    """

    keys: list[Tensor]
    values: list[Tensor]
    pad: Tensor | None = None

    @property
    def max_seq_len(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        freqs_cis: Tensor,
        start_pos: int = 0,
        kv: tuple[Tensor, Tensor] | None = None,
        pad: Tensor | None = None,
    ) -> Tensor:
        bsz, seqlen, _ = x.shape
        q = apply_rotary_emb(linear(self.wq, x).view(bsz, seqlen, self.n_heads, self.head_dim), freqs_cis)
        k = apply_rotary_emb(linear(self.wk, x).view(bsz, seqlen, self.n_kv_heads, self.head_dim), freqs_cis)
        v = linear(self.wv, x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        mask, causal = None, seqlen > 1
        if kv is not None:
            end = start_pos + seqlen
            cache_k, cache_v = kv
            cache_k[:bsz, :, start_pos:end] = k
            cache_v[:bsz, :, start_pos:end] = v
            k, v = cache_k[:bsz, :, :end], cache_v[:bsz, :, :end]
            if pad is not None or (start_pos > 0 and seqlen > 1):
                # is_causal aligns the triangle top-left; with cached keys in front it must be shifted by start_pos.
                mask = torch.ones(seqlen, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
                causal = False
            if pad is not None:
                # Keys of left padding masked; the diagonal kept so a padding query has one key and stays finite.
                own = torch.arange(start_pos, end, device=x.device)[:, None] == torch.arange(end, device=x.device)
                mask = (mask & ~pad[:bsz, None, None, :end]) | own
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return linear(self.wo, out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(self.w2, F.silu(linear(self.w1, x)) * linear(self.w3, x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(
        self,
        x: Tensor,
        freqs_cis: Tensor,
        start_pos: int = 0,
        kv: tuple[Tensor, Tensor] | None = None,
        pad: Tensor | None = None,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, start_pos, kv, pad)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.vocab_size < 1:
            raise ValueError(
                f"ModelArgs.vocab_size={args.vocab_size}: resolve it (e.g. from the checkpoint) first"
            )
        self.args = args
        self.n_future = args.n_future_tokens
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # layers[:-1] is the trunk and layers[-1] head 1, exactly as Meta lays them out in consolidated.pth.
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers - self.n_future + 1))
        self.extra_heads = nn.ModuleList(TransformerBlock(args) for _ in range(self.n_future - 1))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    @property
    def n_trunk_layers(self) -> int:
        return len(self.layers) - 1

    def _freqs(self, start_pos: int, seqlen: int, device) -> Tensor:
        return rope_frequencies(self.args.head_dim, self.args.rope_theta, start_pos, seqlen, device)

    def _check_cache(self, cache: KVCache | None, batch: int, start_pos: int, seqlen: int) -> None:
        if cache is None:
            return
        if start_pos + seqlen > cache.max_seq_len:
            raise ValueError(
                f"start_pos={start_pos} + {seqlen} tokens exceeds the KV cache length {cache.max_seq_len}"
            )
        if batch > cache.batch_size:
            raise ValueError(f"batch of {batch} exceeds the KV cache batch size {cache.batch_size}")

    def trunk(self, tokens: Tensor, start_pos: int = 0, cache: KVCache | None = None) -> Tensor:
        """Shared trunk: token ids [B, T] -> h_trunk [B, T, dim] (not normed)."""
        bsz, seqlen = tokens.shape
        self._check_cache(cache, bsz, start_pos, seqlen)
        h = self.tok_embeddings(tokens)
        freqs_cis = self._freqs(start_pos, seqlen, tokens.device)
        for i, layer in enumerate(self.layers[:-1]):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            h = layer(h, freqs_cis, start_pos, kv, None if cache is None else cache.pad)
        return h

    def head(self, h_trunk: Tensor, k: int, start_pos: int = 0, cache: KVCache | None = None) -> Tensor:
        """Head k (1-based: head k at position t predicts token t+k): h_trunk [B, T, dim] -> [B, T, dim]."""
        if not 1 <= k <= self.n_future:
            raise IndexError(
                f"head k={k}: this model has heads 1..{self.n_future} (head k predicts token t+k)"
            )
        bsz, seqlen, _ = h_trunk.shape
        self._check_cache(cache, bsz, start_pos, seqlen)
        block = self.layers[-1] if k == 1 else self.extra_heads[k - 2]
        slot = self.n_trunk_layers + k - 1
        kv = None if cache is None else (cache.keys[slot], cache.values[slot])
        pad = None if cache is None else cache.pad
        return block(h_trunk, self._freqs(start_pos, seqlen, h_trunk.device), start_pos, kv, pad)

    def unembed(self, h: Tensor) -> Tensor:
        """Shared final norm and output projection: [..., dim] -> logits [..., vocab]."""
        return linear(self.output, self.norm(h))

    def forward(
        self, tokens: Tensor, all_heads: bool = False, start_pos: int = 0, cache: KVCache | None = None
    ) -> Tensor:
        """Logits [B, T, n_used, vocab], n_used = n_future if all_heads else 1 (head 1, the next-token head).
        Along dim 2, index k-1 holds head k.

        For one head take `.squeeze(2)` (a view); indexing `[:, :, 0]` makes backward copy the whole logits.
        """
        h_trunk = self.trunk(tokens, start_pos, cache)
        n_used = self.n_future if all_heads else 1
        if cache is not None:
            # Every head block writes its keys and values, so a later all_heads call finds them at every position.
            for k in range(n_used + 1, self.n_future + 1):
                self.head(h_trunk, k, start_pos, cache)
        if n_used == 1:
            return self.unembed(self.head(h_trunk, 1, start_pos, cache)).unsqueeze(2)
        latents = [self.head(h_trunk, k, start_pos, cache) for k in range(1, n_used + 1)]
        return self.unembed(torch.stack(latents, dim=2))

    def new_cache(
        self, batch_size: int, max_seq_len: int | None = None, device=None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty positional KV cache for every block (trunk and all heads)."""
        ref = self.tok_embeddings.weight
        shape = (batch_size, self.args.kv_heads, max_seq_len or self.args.max_seq_len, self.args.head_dim)
        n_blocks = len(self.layers) + len(self.extra_heads)
        make = lambda: torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)  # noqa: E731
        return KVCache(keys=[make() for _ in range(n_blocks)], values=[make() for _ in range(n_blocks)])

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, std), residual projections scaled by 1/sqrt(2 * n_layers), norms at one."""
        residual_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, 0.0, residual_std, generator=generator)
            else:
                nn.init.normal_(p, 0.0, std, generator=generator)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
