"""Shared parts of the packed forwards: where each row's real tokens sit, and attention on runs of equal-length rows."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# (length) -> what one run's scores need beyond q.k: an additive float bias or a boolean mask, (.., n, n).
ScoreMask = Callable[[int], torch.Tensor | None]


@dataclass
class Layout:
    """The real tokens of a padded (batch, seq) batch, row after row: their flat index, positions and runs."""

    batch: int
    seq: int
    index: torch.Tensor  # flat (batch * seq) index of each real token, row-major
    positions: torch.Tensor  # each token's position in its own row, from 0
    runs: list[tuple[int, int, int]]  # (first token, rows, length) per run of equal-length rows
    contiguous: bool  # every row's real tokens are one block (left or right padding, no holes)
    _masks: dict[tuple[str, int], torch.Tensor | None] = field(default_factory=dict)

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> Layout:
        """The layout of `attention_mask` (batch, seq); 1 marks a real token."""
        mask = attention_mask.bool()
        batch, seq = mask.shape
        lengths = mask.sum(dim=1)
        counts = mask.long().cumsum(dim=1)
        # A row is one block when its last real token sits `length - 1` columns after its first.
        first = torch.where(mask.any(dim=1), mask.long().argmax(dim=1), 0)
        last = torch.where(mask.any(dim=1), seq - 1 - mask.long().flip(1).argmax(dim=1), -1)
        contiguous = bool(((last - first + 1).clamp(min=0) == lengths).all())
        return cls(
            batch=batch,
            seq=seq,
            index=mask.reshape(-1).nonzero().squeeze(1),
            positions=(counts - 1)[mask],
            runs=length_runs(lengths.tolist()),
            contiguous=contiguous,
        )

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, ...) -> (tokens, ...): the real tokens only."""
        return x.reshape(self.batch * self.seq, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, hidden) -> (batch, seq, hidden) with zeros on padding (every pooling masks it)."""
        out = x.new_zeros(self.batch * self.seq, x.shape[-1])
        out.index_copy_(0, self.index, x)
        return out.view(self.batch, self.seq, x.shape[-1])

    def mask(self, kind: str, n: int, make: ScoreMask) -> torch.Tensor | None:
        """`make(n)`, made once per batch for each (kind, length): every layer of that kind reuses it."""
        key = (kind, n)
        if key not in self._masks:
            self._masks[key] = make(n)
        return self._masks[key]


def length_runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(first token, rows, length) of each run of consecutive equal-length rows in a packed batch."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for n in lengths:
        if runs and runs[-1][2] == n:
            first, rows, _ = runs[-1]
            runs[-1] = (first, rows + 1, n)
        else:
            runs.append((start, 1, n))
        start += n
    return [r for r in runs if r[2] > 0]


# At bf16/fp16 on a CPU whose oneDNN runs that dtype natively, a row with at most ROW_SCORES scores (heads x n x
# n) attends through two batched GEMMs (the scale folded into the first) around a softmax computed in fp32, in
# chunks of rows of about SCORE_BUDGET scores (2 MiB at bf16), instead of SDPA's flash kernel, which pays a fixed
# cost per (row, head, block) on small heads: 1.2x flash's speed over MiniLM's real run shapes (2-core EPYC,
# avx512_bf16), from 16 to 512 tokens. Longer rows take flash, whose memory does not grow with length squared
# (at the cap, 1,024 tokens at 12 heads, one row's scores take 24 MiB at bf16, 72 MiB with the fp32 softmax
# output); so do fp32, where this path was no faster, a dtype oneDNN emulates (fp16 without AVX512-FP16 or
# AMX-FP16: its batched GEMMs ran 5x slower than flash), and autograd (bmm into `out` has no gradient).
ROW_SCORES = 12 << 20
SCORE_BUDGET = 1 << 20


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    key_runs: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """SDPA of (rows, heads, n, d) q, k, v; see ROW_SCORES for the CPU path."""
    # mask: (n, n), (heads, n, n) or per row (rows, 1 or heads, 1 or n, n); boolean marks keys seen, float adds.
    # key_runs: (rows, keys) for consecutive runs of rows, each row seeing its first `keys` keys only (padding
    # after them); the GEMM path fills those scores' slices rather than masking every score.
    rows, heads, n, d = q.shape
    if torch.is_autocast_enabled(q.device.type):
        # what autocast does to SDPA's inputs, done first so the path below sees one dtype (a decoder's q and k
        # leave its fp32-weighted RMSNorm in fp32 while v is bf16)
        low = torch.get_autocast_dtype(q.device.type)
        q, k, v = (t.to(low) if t.is_floating_point() else t for t in (q, k, v))
    gemm = gemm_attention(q) and heads * n * n <= ROW_SCORES and rows * n > 0
    if key_runs is not None and sum(r for r, _ in key_runs) != rows:
        raise ValueError(f"key_runs cover {sum(r for r, _ in key_runs)} rows; q has {rows}")
    if causal and mask is None and (gemm or key_runs is not None):  # else SDPA's is_causal
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if key_runs is not None and (mask is not None or not gemm):
        mask = with_key_runs(mask, key_runs, n, q.device)
        key_runs = None
    if not gemm:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale
        )
    if mask is None:
        blind = any(rows and not keys for rows, keys in key_runs or ())
    else:  # a query that sees no key gets zeros, as from SDPA, not NaN
        blind = bool((~mask if mask.dtype == torch.bool else mask.isneginf()).all(-1).any())
    # A boolean mask becomes 0 / -inf in the scores' dtype (exact): adding it ran ~4x faster than a broadcast
    # masked_fill_, and an (n, n) one is folded into the first GEMM as its input (beta=1).
    hide = None
    if mask is not None and mask.dtype == torch.bool:
        hide, mask = key_bias(mask, q.dtype), None
    out = q.new_empty(q.shape)
    step = max(1, SCORE_BUDGET // (heads * n * n))
    unused = q.new_empty(1, 1, 1)  # baddbmm's input, ignored at beta=0
    with torch.autocast(q.device.type, enabled=False):  # the dtypes below are chosen, not autocast's
        for r in range(0, rows, step):
            part = slice(r, r + step)
            qc, kc, vc = (t[part].contiguous().flatten(0, 1) for t in (q, k, v))
            if hide is not None and hide.dim() == 2:
                start = hide.expand(qc.shape[0], n, n)
                scores = torch.baddbmm(start, qc, kc.transpose(1, 2), beta=1.0, alpha=scale)
            else:
                scores = torch.baddbmm(unused, qc, kc.transpose(1, 2), beta=0.0, alpha=scale)
            scores = scores.view(-1, heads, n, n)
            # as SDPA: a boolean mask marks the keys a query sees, a float one is added
            if hide is not None and hide.dim() > 2:
                scores = scores.add_(hide[part] if hide.dim() == 4 else hide)
            elif mask is not None:
                scores = scores + (mask[part] if mask.dim() == 4 else mask)
            elif key_runs is not None:
                hide_padding(scores, key_runs, r)
            probs = softmax(scores)
            if blind:
                probs = probs.nan_to_num_(0.0)
            torch.bmm(probs.to(v.dtype).flatten(0, 1), vc, out=out[part].flatten(0, 1))
    return out


def with_key_runs(
    mask: torch.Tensor | None, key_runs: list[tuple[int, int]], n: int, device: torch.device
) -> torch.Tensor:
    """`mask` (None, boolean or float) with each row's keys past its `key_runs` count hidden, per row."""
    lengths = torch.tensor([keys for rows, keys in key_runs for _ in range(rows)], device=device)
    seen = (torch.arange(n, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    if mask is None:
        return seen
    if mask.dtype == torch.bool:
        return mask & seen
    return mask + key_bias(seen, mask.dtype)


def key_bias(seen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as scores to add: 0 where a key is seen, -inf where it is not (exact in any dtype)."""
    return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, float("-inf"))


def hide_padding(scores: torch.Tensor, key_runs: list[tuple[int, int]], first: int) -> None:
    """Set to -inf the scores of keys past each row's count, for scores (rows, heads, n, n) from row `first` on."""
    start, n = 0, scores.shape[-1]
    for rows, keys in key_runs:
        lo, hi = max(start - first, 0), min(start + rows - first, scores.shape[0])
        if lo < hi and keys < n:
            scores[lo:hi, :, :, keys:].fill_(float("-inf"))
        start += rows


def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether attend's GEMM path runs `dtype` fast here: bf16 or fp16 where this CPU's oneDNN has it natively."""
    return torch.backends.mkldnn.enabled and _onednn_native(dtype)


NATIVE_CHECKS = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


@functools.cache
def _onednn_native(dtype: torch.dtype) -> bool:
    check = NATIVE_CHECKS.get(dtype)
    try:
        return bool(check and torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # an older or stripped torch: SDPA is right everywhere
        return False


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, computed in fp32, through whichever of torch's CPU kernels is faster for its length."""
    # Measured on AVX-512: the bf16-output kernel runs 2-3x slower than fp32-output + cast when a row is not a
    # whole number of its 32-lane vectors; below one fp32 vector the fp32-output kernel is the slow one (~10x).
    n, width = scores.shape[-1], fp32_lanes()
    if scores.dtype == torch.float32 or n < width or n % (2 * width) == 0:
        return scores.softmax(dim=-1)
    return scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)


@functools.cache
def fp32_lanes() -> int:
    """fp32 values in one of the vectors torch's CPU kernels run on here (x86: AVX-512 16, else 8)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def runs_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    runs: list[tuple[int, int, int]],
    scale: float,
    *,
    mask_for: ScoreMask | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Attention of packed q (tokens, heads, d) over k, v (tokens, kv_heads, d), each row on its own tokens.

    One call per run of equal-length rows (`Layout.runs`), with `mask_for(n)` (a bias or boolean mask for length
    n, e.g. a `Layout.mask` made once per batch) or a causal mask; kv_heads may divide heads (grouped-query
    attention). Length-sorted batches hold few distinct lengths, so this costs a handful of calls per layer and
    does no work on padding. Returns (tokens, heads * d).
    """
    tokens, heads, d = q.shape
    groups = heads // k.shape[1]
    ctx = q.new_empty(tokens, heads, d)
    if mask_for is None and not causal and groups == 1 and gemm_attention(q):
        merged = merge_runs(runs, heads)
        runs = [group[0] for group in merged if len(group) == 1]
        for group in (g for g in merged if len(g) > 1):
            padded_attention(q, k, v, group, scale, ctx)
    for first, rows, n in runs:
        span = slice(first, first + rows * n)
        qs, ks, vs = (t[span].view(rows, n, t.shape[1], d).transpose(1, 2) for t in (q, k, v))
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        extra = mask_for(n) if mask_for is not None else None
        out = attend(qs, ks, vs, scale, extra, causal)
        ctx[span].view(rows, n, heads, d).copy_(out.transpose(1, 2))
    return ctx.view(tokens, heads * d)


# Merging a run into its neighbours' call may add up to this many padded scores (heads x rows x (m^2 - n^2)):
# about what one more attend call costs on this path (~0.3-0.5 ms of baddbmm, softmax, bmm and copies at
# ~2.5 ns a score). Small encode calls split a batch into many runs of one or two rows.
PAD_SCORES = 1 << 17


def merge_runs(runs: list[tuple[int, int, int]], heads: int) -> list[list[tuple[int, int, int]]]:
    """Consecutive runs in groups, each merge adding at most PAD_SCORES padded scores (rows to the longest)."""
    groups: list[list[tuple[int, int, int]]] = []
    waste = 0
    for run in runs:
        if groups:
            group = groups[-1]
            longest = max(run[2], max(n for _, _, n in group))
            merged = heads * sum(rows * (longest * longest - n * n) for _, rows, n in (*group, run))
            if merged - waste <= PAD_SCORES:
                group.append(run)
                waste = merged
                continue
        groups.append([run])
        waste = 0
    return groups


def gemm_attention(q: torch.Tensor) -> bool:
    """Whether attend would take its GEMM path for q's device and dtype (lengths aside)."""
    return q.device.type == "cpu" and onednn_runs(q.dtype) and not torch.is_grad_enabled()


def padded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: list[tuple[int, int, int]],
    scale: float,
    ctx: torch.Tensor,
) -> None:
    """Unmasked attention of a group of runs in one attend call, written into ctx (tokens, heads, d)."""
    # each row is padded to the group's longest; its padding keys are masked, its padding queries dropped
    heads, d = q.shape[1], q.shape[2]
    rows = sum(r for _, r, _ in group)
    longest = max(n for _, _, n in group)
    # zeros, not garbage: a masked key's probability is 0, and 0 x NaN would reach the real rows through v
    qb, kb, vb = (t.new_zeros(rows, heads, longest, d) for t in (q, k, v))
    row = 0
    for first, r, n in group:
        span = slice(first, first + r * n)
        for t, b in ((q, qb), (k, kb), (v, vb)):
            b[row : row + r, :, :n].copy_(t[span].view(r, n, heads, d).transpose(1, 2))
        row += r
    out = attend(qb, kb, vb, scale, key_runs=[(r, n) for _, r, n in group])
    row = 0
    for first, r, n in group:
        span = slice(first, first + r * n)
        ctx[span].view(r, n, heads, d).copy_(out[row : row + r, :, :n].transpose(1, 2))
        row += r


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of packed x (tokens, heads, d) with cos/sin (tokens, d), in x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None, :].float() + rotated * sin[:, None, :].float()).to(x.dtype)


def band_mask(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Boolean (n, n) mask: query i sees key j when i - before <= j <= i + after."""
    i = torch.arange(n, device=device)
    offset = i[None, :] - i[:, None]
    return (offset >= -before) & (offset <= after)
