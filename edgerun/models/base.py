"""Shared pieces of decoder-only transformers: args, norms, RoPE, paged attention, the layer loop.

Architectures (llama.py, qwen2.py, gemma3.py) describe themselves with a `ModelArgs`
subclass built from GGUF metadata and a tensor-name map; the forward pass here runs any of
them over a `Backend` (which owns the matmul kernels) and a `KVCache` (paged storage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgerun.backends.base import Backend, QTensor
from edgerun.quant.gguf_file import GGUFError, GGUFFile


class ModelLoadError(ValueError):
    """The GGUF file does not describe a model this architecture can run."""


# sanity bounds on hyper-parameters (far above any real model): a file past them is refused
# before lists, caches or buffers are sized from them
MAX_LAYERS = 1024
MAX_DIM = 1 << 17
MAX_HEADS = 1 << 12
MAX_CONTEXT = 1 << 24


def _md(md: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    if key not in md:
        if default is None:
            raise ModelLoadError(f"missing metadata key {key}")
        return default
    v = md[key]
    if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if kind is int and isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, kind):
        return v
    raise ModelLoadError(f"metadata key {key}: expected {kind.__name__}, got {type(v).__name__}")


@dataclass
class ModelArgs:
    """Hyper-parameters, read only from GGUF metadata."""

    arch: str
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    rope_base: float
    context_length: int
    vocab_size: int
    rope_neox: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    embed_scale: float = 1.0
    activation: str = "silu"  # or "gelu_tanh"
    attn_scale: float = 0.0
    # per layer: sliding window (0 = global) and RoPE base
    windows: list[int] = field(default_factory=list)
    rope_bases: list[float] = field(default_factory=list)
    rope_pos_scales: list[float] = field(default_factory=list)  # linear RoPE scaling

    def __post_init__(self) -> None:
        if min(self.n_layers, self.dim, self.n_heads, self.n_kv_heads, self.head_dim) <= 0:
            raise ModelLoadError("model sizes must be positive")
        for name, v, top in (("block_count", self.n_layers, MAX_LAYERS),
                             ("embedding_length", self.dim, MAX_DIM),
                             ("feed_forward_length", self.ffn_dim, MAX_DIM * 8),
                             ("attention.head_count", self.n_heads, MAX_HEADS),
                             ("attention.head_count_kv", self.n_kv_heads, MAX_HEADS),
                             ("attention.key_length", self.head_dim, MAX_DIM),
                             ("context_length", self.context_length, MAX_CONTEXT)):
            if not 0 < v <= top:
                raise ModelLoadError(f"{self.arch}.{name} = {v} is outside (0, {top}]")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps < 1):
            raise ModelLoadError(f"{self.arch}.attention.layer_norm_rms_epsilon = {self.norm_eps} "
                                 "is not in (0, 1)")
        if not (math.isfinite(self.rope_base) and self.rope_base > 0):
            raise ModelLoadError(f"{self.arch}.rope.freq_base = {self.rope_base} is not a positive number")
        if not (math.isfinite(self.embed_scale) and self.embed_scale > 0):
            raise ModelLoadError(f"embedding scale {self.embed_scale} is not a positive number")
        if self.n_heads % self.n_kv_heads:
            raise ModelLoadError(f"head_count {self.n_heads} not a multiple of head_count_kv "
                                 f"{self.n_kv_heads}")
        if self.head_dim % 2:
            raise ModelLoadError("head dimension must be even for RoPE")
        if not self.attn_scale:
            self.attn_scale = 1.0 / math.sqrt(self.head_dim)
        if not self.windows:
            self.windows = [0] * self.n_layers
        if not self.rope_bases:
            self.rope_bases = [self.rope_base] * self.n_layers
        if not self.rope_pos_scales:
            self.rope_pos_scales = [1.0] * self.n_layers
        for name, vals in (("rope bases", self.rope_bases), ("rope scales", self.rope_pos_scales)):
            if len(vals) != self.n_layers or not all(math.isfinite(v) and v > 0 for v in vals):
                raise ModelLoadError(f"{self.arch}: {name} must be {self.n_layers} positive numbers")
        if len(self.windows) != self.n_layers or any(w < 0 for w in self.windows):
            raise ModelLoadError(f"{self.arch}: sliding windows must be {self.n_layers} values >= 0")

    @classmethod
    def common(cls, md: dict[str, Any], arch: str, vocab_size: int, **kw: Any) -> dict[str, Any]:
        """The fields every llama-like architecture stores under `{arch}.*`."""
        p = arch + "."
        n_heads = _md(md, p + "attention.head_count", int)
        dim = _md(md, p + "embedding_length", int)
        head_dim = _md(md, p + "attention.key_length", int, dim // max(n_heads, 1))
        return dict(
            arch=arch,
            n_layers=_md(md, p + "block_count", int),
            dim=dim,
            ffn_dim=_md(md, p + "feed_forward_length", int),
            n_heads=n_heads,
            n_kv_heads=_md(md, p + "attention.head_count_kv", int, n_heads),
            head_dim=head_dim,
            norm_eps=_md(md, p + "attention.layer_norm_rms_epsilon", float, 1e-5),
            rope_base=_md(md, p + "rope.freq_base", float, 10000.0),
            context_length=_md(md, p + "context_length", int, 2048),
            vocab_size=vocab_size,
        ) | kw


# ----------------------------------------------------------------------------- light ops


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (T, D) or (T, H, D), w (D,)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * w


def rope_cos_sin(positions: np.ndarray, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]  # (T, hd/2)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """x (T, H, hd); NEOX rotates (i, i + hd/2) pairs, the original style rotates (2i, 2i+1)."""
    c, s = cos[:, None, :], sin[:, None, :]
    if neox:
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, scale: float,
              window: int) -> np.ndarray:
    """Causal GQA attention of one sequence.

    q (T, H, hd) at positions q_pos (T,); k, v (S, KVH, hd) for positions 0..S-1.
    A window w > 0 lets position p see keys in (p - w, p]. Returns (T, H * hd).
    """
    t, h, hd = q.shape
    s, kvh, _ = k.shape
    g = h // kvh
    qg = q.reshape(t, kvh, g, hd).transpose(1, 2, 0, 3).reshape(kvh, g * t, hd)  # (KVH, G*T, hd)
    scores = (qg @ k.transpose(1, 2, 0)) * scale  # (KVH, G*T, S)
    kpos = np.arange(s)
    allowed = kpos[None, :] <= q_pos[:, None]  # (T, S)
    if window > 0:
        allowed &= kpos[None, :] > (q_pos[:, None] - window)
    mask = np.where(allowed, 0.0, -np.inf).astype(np.float32)
    scores = scores.reshape(kvh, g, t, s) + mask[None, None]
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p.reshape(kvh, g * t, s) @ v.transpose(1, 0, 2)  # (KVH, G*T, hd)
    return out.reshape(kvh, g, t, hd).transpose(2, 0, 1, 3).reshape(t, h * hd)


# ----------------------------------------------------------------------------- KV cache


KV_TYPES = {"f16": np.float16, "f32": np.float32}


class KVCache:
    """Paged KV storage: per layer, `num_blocks * block_size` slots of (KVH, hd) values.

    `kv_type` "f16" (the default, as llama.cpp's) stores IEEE halves, rounded to nearest even on
    write, and halves the cache's memory and attention reads against "f32".
    """

    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int,
                 head_dim: int, kv_type: str = "f16") -> None:
        if kv_type not in KV_TYPES:
            raise ValueError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        self.num_blocks, self.block_size, self.kv_type = num_blocks, block_size, kv_type
        n = num_blocks * block_size
        dt = KV_TYPES[kv_type]
        self.k = [np.zeros((n, n_kv_heads, head_dim), dt) for _ in range(n_layers)]
        self.v = [np.zeros((n, n_kv_heads, head_dim), dt) for _ in range(n_layers)]

    def slots(self, block_table: np.ndarray, start: int, stop: int) -> np.ndarray:
        pos = np.arange(start, stop)
        need = (stop + self.block_size - 1) // self.block_size
        if len(block_table) < need:
            raise ValueError(f"block table has {len(block_table)} blocks, positions up to {stop} "
                             f"need {need}")
        bt = np.asarray(block_table, dtype=np.int64)
        return bt[pos // self.block_size] * self.block_size + pos % self.block_size

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2


# ----------------------------------------------------------------------------- model


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: QTensor
    wk: QTensor
    wv: QTensor
    wo: QTensor
    ffn_norm: np.ndarray
    w_gate: QTensor
    w_up: QTensor
    w_down: QTensor
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None


@dataclass
class SeqBatch:
    """What one forward step computes; built by the runner from `SeqInput`s."""

    tokens: np.ndarray  # int32 (T_total,) all new tokens, sequences concatenated
    positions: np.ndarray  # int64 (T_total,)
    seq_starts: list[int]  # offset of each sequence in `tokens`
    seq_lens: list[int]  # new tokens per sequence
    ctx_lens: list[int]  # cache length per sequence after this step
    slot_maps: list[np.ndarray]  # per sequence: slots of all its positions 0..ctx_len-1
    want_all: list[bool]
    _flat: dict[str, Any] | None = None

    def flat(self) -> dict[str, Any]:
        """The batch as flat arrays for fused kernels (built once per step, shared by layers)."""
        if self._flat is None:
            offs = np.cumsum([0] + [len(m) for m in self.slot_maps[:-1]]).astype(np.int64)
            self._flat = dict(
                pos=np.ascontiguousarray(self.positions, dtype=np.int32),
                write_slots=np.concatenate([m[c - n: c] for m, c, n in
                                            zip(self.slot_maps, self.ctx_lens, self.seq_lens)]).astype(np.int64),
                tok_seq=np.repeat(np.arange(len(self.seq_lens), dtype=np.int32), self.seq_lens),
                read_slots=np.concatenate(self.slot_maps).astype(np.int64),
                read_off=offs,
                max_ctx=int(max(self.ctx_lens)),
            )
        return self._flat


class Transformer:
    """A decoder-only transformer over a Backend; subclasses map GGUF names to layers."""

    arch: ClassVar[str] = ""
    args_cls: ClassVar[type[ModelArgs]] = ModelArgs

    def __init__(self, gf: GGUFFile, backend: Backend, vocab_size: int) -> None:
        self.gf = gf
        self.backend = backend
        self.args = self.build_args(gf.metadata, vocab_size)
        a = self.args
        layers = {int(n.split(".")[1]) for n in gf.tensors
                  if n.startswith("blk.") and n.split(".")[1].isdigit()}
        if layers != set(range(a.n_layers)):
            raise ModelLoadError(f"{a.arch}.block_count is {a.n_layers} but the file has tensors for "
                                 f"{len(layers)} layers")
        self.tok_embd = self.qtensor("token_embd.weight", a.dim, a.vocab_size)
        self.out_norm = self.vector("output_norm.weight", a.dim)
        self.output = (self.qtensor("output.weight", a.dim, a.vocab_size) if "output.weight" in gf.tensors
                       else self.tok_embd)
        self.layers = [self.load_layer(i) for i in range(a.n_layers)]

    # --- loading helpers
    @classmethod
    def build_args(cls, md: dict[str, Any], vocab_size: int) -> ModelArgs:
        return cls.args_cls(**ModelArgs.common(md, cls.arch, vocab_size))

    def qtensor(self, name: str, k: int, n: int) -> QTensor:
        info = self.gf.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"missing tensor {name}")
        if tuple(info.shape) != (k, n):
            raise ModelLoadError(f"tensor {name} has shape {list(info.shape)}, expected {[k, n]}")
        data = self.gf.array(name) if info.qtype == 0 else self.gf.raw(name)
        return QTensor(name=name, qtype=info.qtype, k=k, n=n, data=data)

    def vector(self, name: str, n: int) -> np.ndarray:
        info = self.gf.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"missing tensor {name}")
        if tuple(info.shape) != (n,):
            raise ModelLoadError(f"tensor {name} has shape {list(info.shape)}, expected {[n]}")
        try:
            return np.ascontiguousarray(self.gf.array(name), dtype=np.float32)
        except GGUFError as e:
            raise ModelLoadError(str(e)) from None

    def optional_vector(self, name: str, n: int) -> np.ndarray | None:
        return self.vector(name, n) if name in self.gf.tensors else None

    def load_layer(self, i: int) -> Layer:
        a, p = self.args, f"blk.{i}."
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        return Layer(
            attn_norm=self.vector(p + "attn_norm.weight", a.dim),
            wq=self.qtensor(p + "attn_q.weight", a.dim, qd),
            wk=self.qtensor(p + "attn_k.weight", a.dim, kvd),
            wv=self.qtensor(p + "attn_v.weight", a.dim, kvd),
            wo=self.qtensor(p + "attn_output.weight", qd, a.dim),
            ffn_norm=self.vector(p + "ffn_norm.weight", a.dim),
            w_gate=self.qtensor(p + "ffn_gate.weight", a.dim, a.ffn_dim),
            w_up=self.qtensor(p + "ffn_up.weight", a.dim, a.ffn_dim),
            w_down=self.qtensor(p + "ffn_down.weight", a.ffn_dim, a.dim),
            bq=self.optional_vector(p + "attn_q.bias", qd),
            bk=self.optional_vector(p + "attn_k.bias", kvd),
            bv=self.optional_vector(p + "attn_v.bias", kvd),
            q_norm=self.optional_vector(p + "attn_q_norm.weight", a.head_dim),
            k_norm=self.optional_vector(p + "attn_k_norm.weight", a.head_dim),
            post_attn_norm=self.optional_vector(p + "post_attention_norm.weight", a.dim),
            post_ffn_norm=self.optional_vector(p + "post_ffw_norm.weight", a.dim),
        )

    def tensors(self) -> list[QTensor]:
        """Every matrix the model multiplies by (for placement and warm-up)."""
        out = [self.output]
        for ly in self.layers:
            out += [ly.wq, ly.wk, ly.wv, ly.wo, ly.w_gate, ly.w_up, ly.w_down]
        return out

    # --- forward
    def attention_block(self, i: int, ly: Layer, x: np.ndarray, b: SeqBatch, kv: KVCache) -> np.ndarray:
        """x (T, D) -> attention output (T, D), writing this step's K/V into the cache."""
        a, be = self.args, self.backend
        t = x.shape[0]
        h = rms_norm(x, ly.attn_norm, a.norm_eps)
        q = be.matmul(ly.wq, h)  # (T, H*hd)
        k = be.matmul(ly.wk, h)  # (T, KVH*hd)
        v = be.matmul(ly.wv, h)
        if ly.bq is not None:
            q += ly.bq
        if ly.bk is not None:
            k += ly.bk
        if ly.bv is not None:
            v += ly.bv
        q = q.reshape(t, a.n_heads, a.head_dim)
        k = k.reshape(t, a.n_kv_heads, a.head_dim)
        v = v.reshape(t, a.n_kv_heads, a.head_dim)
        if ly.q_norm is not None:
            q = rms_norm(q, ly.q_norm, a.norm_eps)
        if ly.k_norm is not None:
            k = rms_norm(k, ly.k_norm, a.norm_eps)
        cos, sin = rope_cos_sin(b.positions * a.rope_pos_scales[i], a.head_dim, a.rope_bases[i])
        q = apply_rope(q, cos, sin, a.rope_neox)
        k = apply_rope(k, cos, sin, a.rope_neox)
        out = np.empty((t, a.n_heads * a.head_dim), np.float32)
        for s0, n, ctx, slots in zip(b.seq_starts, b.seq_lens, b.ctx_lens, b.slot_maps):
            new = slots[ctx - n: ctx]
            kv.k[i][new] = k[s0: s0 + n]
            kv.v[i][new] = v[s0: s0 + n]
            out[s0: s0 + n] = attention(q[s0: s0 + n], kv.k[i][slots].astype(np.float32, copy=False),
                                        kv.v[i][slots].astype(np.float32, copy=False),
                                        b.positions[s0: s0 + n], a.attn_scale, a.windows[i])
        o = be.matmul(ly.wo, out)
        if ly.post_attn_norm is not None:
            o = rms_norm(o, ly.post_attn_norm, a.norm_eps)
        return o

    def ffn_block(self, ly: Layer, x: np.ndarray) -> np.ndarray:
        a, be = self.args, self.backend
        h = rms_norm(x, ly.ffn_norm, a.norm_eps)
        g = be.matmul(ly.w_gate, h)
        u = be.matmul(ly.w_up, h)
        y = be.matmul(ly.w_down, ACTIVATIONS[a.activation](g) * u)
        if ly.post_ffn_norm is not None:
            y = rms_norm(y, ly.post_ffn_norm, a.norm_eps)
        return y

    def forward(self, b: SeqBatch, kv: KVCache) -> list[np.ndarray]:
        """Run one step; per sequence the logits of its last token or of all its tokens."""
        a = self.args
        rows = []
        for s0, n, want in zip(b.seq_starts, b.seq_lens, b.want_all):
            rows.append(np.arange(s0, s0 + n) if want else np.array([s0 + n - 1]))
        sel = np.concatenate(rows)
        run_layers = getattr(self.backend, "run_layers", None)
        run_step = getattr(self.backend, "run_step", None)
        if run_layers is not None and run_step is not None:
            # One native call for the step: embedding, layers, final norm and output head.
            logits = run_step(self, b, kv, sel)
        else:
            x = self.backend.get_rows(self.tok_embd, b.tokens)  # (T, D)
            if a.embed_scale != 1.0:
                x = x * np.float32(a.embed_scale)
            if run_layers is not None:
                # One native call for the whole layer stack (attention blocks and FFNs).
                x = run_layers(self, x, b, kv)
            else:
                fused = getattr(self.backend, "ffn", None)
                for i, ly in enumerate(self.layers):
                    x = x + self.attention_block(i, ly, x, b, kv)
                    if fused is not None and ly.post_ffn_norm is None:
                        # One native call: norm, gate/up, activation, down and the residual add.
                        x = fused(x, ly.ffn_norm, a.norm_eps, ly.w_gate, ly.w_up, ly.w_down, a.activation)
                    else:
                        x = x + self.ffn_block(ly, x)
            norm = getattr(self.backend, "rms_norm", None) or rms_norm
            h = norm(x[sel], self.out_norm, a.norm_eps)
            logits = self.backend.matmul(self.output, h)  # (R, vocab)
        out, r = [], 0
        for n, want in zip(b.seq_lens, b.want_all):
            m = n if want else 1
            out.append(logits[r: r + m] if want else logits[r])
            r += m
        return out
