"""Prototype: MiniLM/BERT encode without padding (for measuring the gain; not the product code).

Texts are tokenised once, sorted by token count and packed into chunks of about `max_tokens` real tokens.
The Linear layers, LayerNorm and GELU run on the concatenated real tokens ([N, h], no padding rows); attention
runs per group of equal-length sequences (no mask needed); mean pooling is a per-group mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class PackedBert:
    """The weights of a Hugging Face BertModel rearranged for packed (unpadded) inference."""

    def __init__(self, bert: Any):
        cfg = bert.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.eps = float(cfg.layer_norm_eps)
        emb = bert.embeddings
        self.word = emb.word_embeddings.weight
        self.pos = emb.position_embeddings.weight
        self.type0 = emb.token_type_embeddings.weight[0]
        self.emb_ln = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        self.layers = []
        for layer in bert.encoder.layer:
            att = layer.attention.self
            # Q, K and V in one GEMM: each output column is the same dot product as before.
            wqkv = torch.cat([att.query.weight, att.key.weight, att.value.weight]).contiguous()
            bqkv = torch.cat([att.query.bias, att.key.bias, att.value.bias]).contiguous()
            out = layer.attention.output
            self.layers.append(
                {
                    "wqkv": wqkv,
                    "bqkv": bqkv,
                    "scale": float(att.scaling),
                    "wo": out.dense.weight,
                    "bo": out.dense.bias,
                    "ln1": (out.LayerNorm.weight, out.LayerNorm.bias),
                    "wi": layer.intermediate.dense.weight,
                    "bi": layer.intermediate.dense.bias,
                    "wo2": layer.output.dense.weight,
                    "bo2": layer.output.dense.bias,
                    "ln2": (layer.output.LayerNorm.weight, layer.output.LayerNorm.bias),
                }
            )

    @torch.inference_mode()
    def mean_pooled(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean-pooled last hidden states of `seqs` (token id lists, sorted so equal lengths are adjacent)."""
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        ids = torch.from_numpy(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]))
        pos = torch.from_numpy(np.concatenate([np.arange(n) for n in lens]))
        groups = equal_length_groups(lens)
        h, heads = self.hidden, self.heads
        d = h // heads
        x = F.embedding(ids, self.word) + F.embedding(pos, self.pos) + self.type0
        x = F.layer_norm(x, (h,), *self.emb_ln, self.eps)
        for p in self.layers:
            qkv = F.linear(x, p["wqkv"], p["bqkv"])
            ctx = torch.empty_like(x)
            for t0, b, n in groups:
                g = qkv[t0 : t0 + b * n].view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
                o = F.scaled_dot_product_attention(g[0], g[1], g[2], scale=p["scale"])
                ctx[t0 : t0 + b * n] = o.transpose(1, 2).reshape(b * n, h)
            x = F.layer_norm(F.linear(ctx, p["wo"], p["bo"]) + x, (h,), *p["ln1"], self.eps)
            inner = F.gelu(F.linear(x, p["wi"], p["bi"]))
            x = F.layer_norm(F.linear(inner, p["wo2"], p["bo2"]) + x, (h,), *p["ln2"], self.eps)
        return torch.cat([x[t0 : t0 + b * n].view(b, n, h).mean(dim=1) for t0, b, n in groups])


def equal_length_groups(lens: np.ndarray) -> list[tuple[int, int, int]]:
    """(first token offset, sequences, length) for each run of equal lengths in `lens`."""
    out, t0, i = [], 0, 0
    while i < len(lens):
        j = i
        while j < len(lens) and lens[j] == lens[i]:
            j += 1
        out.append((t0, j - i, int(lens[i])))
        t0 += (j - i) * int(lens[i])
        i = j
    return out


def token_chunks(order: Sequence[int], lens: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut `order` into chunks of at most `max_tokens` real tokens (a longer text gets a chunk of its own)."""
    chunks, cur, total = [], [], 0
    for i in order:
        if cur and total + lens[i] > max_tokens:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += lens[i]
    if cur:
        chunks.append(cur)
    return chunks


class VarlenEncoder:
    """encode(texts) for a Transformer(BERT) -> mean Pooling -> [Normalize] EmbeddingModel, unpadded."""

    def __init__(self, model: Any, max_tokens: int = 8192):
        first = model[0]
        from tokenizers import Tokenizer

        # A private copy: the transformers wrapper re-applies its own padding settings to the shared one.
        self.tokenizer = Tokenizer.from_str(first.tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=first.max_seq_length)
        names = [type(m).__name__ for m in model]
        pooling = model[1]
        if names[:2] != ["Transformer", "Pooling"] or getattr(pooling, "pooling_mode", "mean") not in (
            "mean",
            None,
        ):
            raise ValueError(f"VarlenEncoder handles Transformer -> mean Pooling [-> Normalize], got {names}")
        self.normalize = "Normalize" in names
        self.bert = PackedBert(first.auto_model)
        self.max_tokens = max_tokens
        self.stats = {"texts": 0, "tokens": 0, "padded_tokens": 0}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for `texts`, in input order."""
        seqs = [e.ids for e in self.tokenizer.encode_batch(texts)]
        lens = [len(s) for s in seqs]
        order = sorted(range(len(seqs)), key=lambda i: -lens[i])
        out = torch.empty(len(texts), self.bert.hidden)
        for chunk in token_chunks(order, lens, self.max_tokens):
            emb = self.bert.mean_pooled([seqs[i] for i in chunk])
            out[torch.tensor(chunk)] = emb
            n = sum(lens[i] for i in chunk)
            self.stats["texts"] += len(chunk)
            self.stats["tokens"] += n
            self.stats["padded_tokens"] += n
        if self.normalize:
            out = F.normalize(out, p=2, dim=1)
        return out.numpy()
