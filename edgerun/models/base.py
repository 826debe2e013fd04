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

from edgerun.backends.base import Backend, FusedFFN, FusedLayers, FusedNorm, FusedStep, QTensor, implements
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
    # per-dimension RoPE frequency divisors (Llama 3.1 `rope_freqs.weight`), (head_dim/2,) or None
    rope_freq_factors: np.ndarray | None = None
    # mixture of experts: routed experts per layer, how many each token uses, their FFN width
    n_experts: int = 0
    n_experts_used: int = 0
    expert_ffn_dim: int = 0
    shared_expert_ffn_dim: int = 0
    moe_norm_topk: bool = True  # renormalise the chosen experts' weights to sum to 1

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
        if self.n_experts and not 0 < self.n_experts_used <= self.n_experts:
            raise ModelLoadError(f"expert_used_count {self.n_experts_used} must be in 1..{self.n_experts}")
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
        n_layers = _md(md, p + "block_count", int)
        extra: dict[str, Any] = {}
        scaling = md.get(p + "rope.scaling.type", "none")
        if scaling == "linear":
            factor = _md(md, p + "rope.scaling.factor", float, 1.0)
            if not (math.isfinite(factor) and factor > 0):
                raise ModelLoadError(f"{p}rope.scaling.factor must be a positive number, got {factor}")
            extra["rope_pos_scales"] = [1.0 / factor] * n_layers
        elif scaling not in ("none", ""):
            # YaRN and LongRoPE change the rotation itself; running them as plain RoPE would give
            # wrong positions silently
            raise ModelLoadError(f"RoPE scaling type {scaling!r} ({p}rope.scaling.type) is not supported "
                                 "(supported: none, linear, and Llama 3.1 frequency factors)")
        n_exp = _md(md, p + "expert_count", int, 0) if p + "expert_count" in md else 0
        if n_exp:
            extra["n_experts"] = n_exp
            extra["n_experts_used"] = _md(md, p + "expert_used_count", int)
        return dict(
            arch=arch,
            n_layers=n_layers,
            dim=dim,
            ffn_dim=_md(md, p + "feed_forward_length", int),
            n_heads=n_heads,
            n_kv_heads=_md(md, p + "attention.head_count_kv", int, n_heads),
            head_dim=head_dim,
            norm_eps=_md(md, p + "attention.layer_norm_rms_epsilon", float, 1e-5),
            rope_base=_md(md, p + "rope.freq_base", float, 10000.0),
            context_length=_md(md, p + "context_length", int, 2048),
            vocab_size=vocab_size,
        ) | extra | kw


# ----------------------------------------------------------------------------- light ops


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (T, D) or (T, H, D), w (D,)."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + eps)) * w


def rope_cos_sin(positions: np.ndarray, head_dim: int, base: float,
                 freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables (T, hd/2); `freq_factors` (hd/2,) divide each pair's frequency (Llama 3.1)."""
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    if freq_factors is not None:
        inv = inv / freq_factors.astype(np.float64)
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
class MoE:
    """A layer's routed experts (each expert's matrices are row slices of the 3-D GGUF tensors)."""

    router: QTensor  # (dim -> n_experts)
    gate: list[QTensor]
    up: list[QTensor]
    down: list[QTensor]
    n_used: int
    norm_topk: bool
    # shared experts (Qwen2-MoE): a dense FFN every token takes, scaled by sigmoid(h . shared_gate)
    shared_gate: np.ndarray | None = None
    shared: tuple[QTensor, QTensor, QTensor] | None = None

    def tensors(self) -> list[QTensor]:
        out = [self.router, *self.gate, *self.up, *self.down]
        return out + list(self.shared or ())


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: QTensor
    wk: QTensor
    wv: QTensor
    wo: QTensor
    ffn_norm: np.ndarray
    w_gate: QTensor | None
    w_up: QTensor | None
    w_down: QTensor | None
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None
    moe: MoE | None = None


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
        if "rope_freqs.weight" in gf.tensors:
            a.rope_freq_factors = self.vector("rope_freqs.weight", a.head_dim // 2)
            if not np.all(np.isfinite(a.rope_freq_factors)) or np.any(a.rope_freq_factors <= 0):
                raise ModelLoadError("rope_freqs.weight must hold positive finite factors")
        self.layers = [self.load_layer(i) for i in range(a.n_layers)]

    @property
    def native_layers_ok(self) -> bool:
        """Whether the fused native layer kernels can run this model: they know dense FFNs and
        plain/linear RoPE; MoE layers and RoPE frequency factors run the per-layer path."""
        return self.args.rope_freq_factors is None and all(ly.moe is None for ly in self.layers)

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

    def row_slices(self, name: str, k: int, parts: list[int]) -> list[QTensor]:
        """Split a matrix of `sum(parts)` rows of length k into consecutive row blocks (views).

        Fused tensors (phi3's `attn_qkv`, `ffn_up` holding gate and up) become the separate
        matrices the rest of the code multiplies by, without copying.
        """
        whole = self.qtensor(name, k, sum(parts))
        out, r = [], 0
        for j, n in enumerate(parts):
            out.append(QTensor(name=f"{name}[{j}]", qtype=whole.qtype, k=k, n=n, data=whole.data[r: r + n]))
            r += n
        return out

    def expert_tensors(self, name: str, k: int, n: int, n_experts: int) -> list[QTensor]:
        """A 3-D expert tensor (GGUF ne = (k, n, n_experts)) as one (k -> n) matrix per expert."""
        info = self.gf.tensors.get(name)
        if info is None:
            raise ModelLoadError(f"missing tensor {name}")
        if tuple(info.shape) != (k, n, n_experts):
            raise ModelLoadError(f"tensor {name} has shape {list(info.shape)}, expected {[k, n, n_experts]}")
        data = self.gf.array(name).reshape(n_experts * n, k) if info.qtype == 0 else self.gf.raw(name)
        return [QTensor(name=f"{name}[{e}]", qtype=info.qtype, k=k, n=n, data=data[e * n: (e + 1) * n])
                for e in range(n_experts)]

    def load_attention(self, i: int) -> tuple[QTensor, QTensor, QTensor, QTensor]:
        """Q, K, V and output projections of layer i."""
        a, p = self.args, f"blk.{i}."
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        return (self.qtensor(p + "attn_q.weight", a.dim, qd), self.qtensor(p + "attn_k.weight", a.dim, kvd),
                self.qtensor(p + "attn_v.weight", a.dim, kvd), self.qtensor(p + "attn_output.weight", qd, a.dim))

    def load_ffn(self, i: int) -> tuple[QTensor | None, QTensor | None, QTensor | None, MoE | None]:
        """Gate, up and down of a dense FFN, or the layer's experts."""
        a, p = self.args, f"blk.{i}."
        if not a.n_experts:
            return (self.qtensor(p + "ffn_gate.weight", a.dim, a.ffn_dim),
                    self.qtensor(p + "ffn_up.weight", a.dim, a.ffn_dim),
                    self.qtensor(p + "ffn_down.weight", a.ffn_dim, a.dim), None)
        ne, ef = a.n_experts, a.expert_ffn_dim or a.ffn_dim
        moe = MoE(router=self.qtensor(p + "ffn_gate_inp.weight", a.dim, ne),
                  gate=self.expert_tensors(p + "ffn_gate_exps.weight", a.dim, ef, ne),
                  up=self.expert_tensors(p + "ffn_up_exps.weight", a.dim, ef, ne),
                  down=self.expert_tensors(p + "ffn_down_exps.weight", ef, a.dim, ne),
                  n_used=a.n_experts_used, norm_topk=a.moe_norm_topk)
        if a.shared_expert_ffn_dim:
            sf = a.shared_expert_ffn_dim
            moe.shared_gate = self.optional_vector(p + "ffn_gate_inp_shexp.weight", a.dim)
            moe.shared = (self.qtensor(p + "ffn_gate_shexp.weight", a.dim, sf),
                          self.qtensor(p + "ffn_up_shexp.weight", a.dim, sf),
                          self.qtensor(p + "ffn_down_shexp.weight", sf, a.dim))
        return None, None, None, moe

    def load_layer(self, i: int) -> Layer:
        a, p = self.args, f"blk.{i}."
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        wq, wk, wv, wo = self.load_attention(i)
        w_gate, w_up, w_down, moe = self.load_ffn(i)
        return Layer(
            attn_norm=self.vector(p + "attn_norm.weight", a.dim),
            wq=wq, wk=wk, wv=wv, wo=wo,
            ffn_norm=self.vector(p + "ffn_norm.weight", a.dim),
            w_gate=w_gate, w_up=w_up, w_down=w_down, moe=moe,
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
            out += [ly.wq, ly.wk, ly.wv, ly.wo]
            out += ly.moe.tensors() if ly.moe is not None else [ly.w_gate, ly.w_up, ly.w_down]
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
        cos, sin = rope_cos_sin(b.positions * a.rope_pos_scales[i], a.head_dim, a.rope_bases[i],
                                a.rope_freq_factors)
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

    def dense_ffn(self, gate: QTensor, up: QTensor, down: QTensor, h: np.ndarray) -> np.ndarray:
        """down(act(gate h) * up h) for normalised rows h (T, D)."""
        be = self.backend
        return be.matmul(down, ACTIVATIONS[self.args.activation](be.matmul(gate, h)) * be.matmul(up, h))

    def moe_ffn(self, moe: MoE, h: np.ndarray) -> np.ndarray:
        """Routed experts for normalised rows h (T, D): softmax over the router's logits, the top
        `n_used` experts per token (weights renormalised when the family does), each expert run
        once over the rows that chose it, so only the chosen experts' weights are read."""
        t = h.shape[0]
        logits = self.backend.matmul(moe.router, h).astype(np.float32)  # (T, E)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        top = np.argsort(-p, axis=1, kind="stable")[:, : moe.n_used]  # (T, k)
        w = np.take_along_axis(p, top, axis=1)  # (T, k)
        if moe.norm_topk:
            w = w / w.sum(axis=1, keepdims=True)
        out = np.zeros((t, h.shape[1]), np.float32)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            y = self.dense_ffn(moe.gate[e], moe.up[e], moe.down[e], np.ascontiguousarray(h[rows]))
            out[rows] += w[rows, slot][:, None] * y
        if moe.shared is not None:
            y = self.dense_ffn(*moe.shared, h)
            if moe.shared_gate is not None:
                y = y / (1.0 + np.exp(-(h @ moe.shared_gate)))[:, None]
            out += y
        return out

    def ffn_block(self, ly: Layer, x: np.ndarray) -> np.ndarray:
        a = self.args
        h = rms_norm(x, ly.ffn_norm, a.norm_eps)
        if ly.moe is not None:
            y = self.moe_ffn(ly.moe, h)
        else:
            assert ly.w_gate is not None and ly.w_up is not None and ly.w_down is not None
            y = self.dense_ffn(ly.w_gate, ly.w_up, ly.w_down, h)
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
        be = self.backend
        one_call = self.native_layers_ok  # MoE and RoPE factors take the per-layer path
        if one_call and implements(be, FusedStep):
            # One native call for the step: embedding, layers, final norm and output head.
            logits = be.run_step(self, b, kv, sel)
        else:
            x = be.get_rows(self.tok_embd, b.tokens)  # (T, D)
            if a.embed_scale != 1.0:
                x = x * np.float32(a.embed_scale)
            if one_call and implements(be, FusedLayers):
                # One native call for the whole layer stack (attention blocks and FFNs).
                x = be.run_layers(self, x, b, kv)
            else:
                fused = be if implements(be, FusedFFN) else None
                for i, ly in enumerate(self.layers):
                    x = x + self.attention_block(i, ly, x, b, kv)
                    if fused is not None and ly.post_ffn_norm is None and ly.moe is None:
                        # One native call: norm, gate/up, activation, down and the residual add.
                        x = fused.ffn(x, ly.ffn_norm, a.norm_eps, ly.w_gate, ly.w_up, ly.w_down, a.activation)
                    else:
                        x = x + self.ffn_block(ly, x)
            norm = be.rms_norm if implements(be, FusedNorm) else rms_norm
            h = norm(x[sel], self.out_norm, a.norm_eps)
            logits = be.matmul(self.output, h)  # (R, vocab)
        out, r = [], 0
        for n, want in zip(b.seq_lens, b.want_all):
            m = n if want else 1
            out.append(logits[r: r + m] if want else logits[r])
            r += m
        return out
