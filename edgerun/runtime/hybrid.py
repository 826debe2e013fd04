"""Hybrid CPU-GPU runner: per the placement plan, attention on the GPU, FFN on the CPU.

:class:`HybridRunner` is a :class:`~edgerun.runtime.runner.Runner` (same ``forward(seqs)``
contract, same batch building) whose model is wrapped by :class:`HybridModel`: for every layer
whose attention the plan puts on the GPU, the hidden state is copied in (pinned buffer), the
attention runs there over a GPU-resident paged KV cache, and the result is copied out; the FFN runs
on the CPU with the runner's CPU backend, unless the plan put that FFN block on the GPU too (then
the hidden state stays on the device across the layer). Layers the plan leaves on the CPU run the
model's own ``attention_block`` / ``ffn_block``. All-GPU placement uses the same kernels.

Extras: CUDA graphs for decode steps (each GPU segment of a layer is captured once per batch shape
and replayed; not above the backend's batched threshold, where the cuBLAS path allocates), and
micro-batch overlap (a batch of several sequences split in two halves so that one half's GPU
attention runs while the CPU computes the other half's FFN). Overlap calls the CPU FFN once per
half, so it is used only where that cannot read the FFN weights from memory twice: when a layer's
FFN weights fit in the CPU's last-level cache. Otherwise every FFN weight is read once per layer
per step, which is what bounds hybrid decode. Prefill steps of STREAM_FFN_TOKENS+ rows run the
CPU-placed FFNs on the GPU instead, their weights streamed over PCIe on a copy stream (two staging
slots: layer k+2's copy waits for layer k's FFN), llama.cpp's op offload.

:func:`edgerun.runtime.factory.make_runner` picks the runner: the plain CPU Runner when the plan
puts nothing on a GPU.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun.backends.base import FusedFFN, implements
from edgerun.models.base import KVCache, SeqBatch, Transformer, rms_norm
from edgerun.quant.gguf_file import GGUFFile
from edgerun.runtime.planner import GPU, Plan, plan_placement
from edgerun.runtime.runner import Runner
from edgerun.runtime.weights import pin_in_hugepages

STREAM_FFN_TOKENS = 32  # prefill rows from which streaming FFN weights over PCIe beats the CPU FFN


def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (sysfs), 0 when unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            try:
                with open(os.path.join(base, d, "size")) as f:
                    txt = f.read().strip().upper()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
            num = txt[:-1] if txt[-1:] in "KMG" else txt
            if num.isdigit():
                best = max(best, int(num) * mult)
    except OSError:
        return 0
    return best


@dataclass
class StepData:
    """Per-step index arrays on the device, shared by every GPU layer of the step."""

    t: int  # query rows
    pos: Any  # (T,) int32
    slots: Any  # (T,) int32 slots of the new tokens
    q_seq: Any  # (T,) int32 row -> sequence
    tables: Any  # (S, max_blocks) int32
    seqs: list[tuple[int, int]]  # (row offset, rows) per sequence
    decode: bool  # one row per sequence
    n_split: int


class GPUExec:
    """The GPU half of a hybrid model: device weights, the GPU KV cache, and the per-layer ops."""

    def __init__(self, model: Transformer, plan: Plan, backend: Any, num_slots: int, block_size: int,
                 max_blocks: int) -> None:
        self.model, self.plan, self.be = model, plan, backend
        a = model.args
        self.args = a
        self.block_size, self.max_blocks = block_size, max_blocks
        layers = plan.layers
        self.attn_layers = [i for i in range(a.n_layers) if layers[i]["attn"] == GPU]
        self.ffn_layers = {i for i in self.attn_layers if layers[i]["ffn"] == GPU}
        cp = backend.cp
        self.w: dict[int, dict[str, Any]] = {}
        self.kc: dict[int, Any] = {}
        self.vc: dict[int, Any] = {}
        for i in self.attn_layers:
            ly = model.layers[i]
            d: dict[str, Any] = {n: backend.upload(getattr(ly, n)) for n in ("wq", "wk", "wv", "wo")}
            for n in ("attn_norm", "bq", "bk", "bv", "q_norm", "k_norm", "post_attn_norm"):
                d[n] = backend.vector(getattr(ly, n))
            if i in self.ffn_layers:
                for n in ("w_gate", "w_up", "w_down"):
                    d[n] = backend.upload(getattr(ly, n))
                d["ffn_norm"] = backend.vector(ly.ffn_norm)
                d["post_ffn_norm"] = backend.vector(ly.post_ffn_norm)
            self.w[i] = d
            with backend.stream:
                self.kc[i] = cp.zeros((num_slots, a.n_kv_heads, a.head_dim), cp.float16)  # as the CPU's
                self.vc[i] = cp.zeros((num_slots, a.n_kv_heads, a.head_dim), cp.float16)
        self.head_on_gpu = plan.head_device == GPU
        if self.head_on_gpu:
            self.head = backend.upload(model.output)
            self.out_norm = backend.vector(model.out_norm)
        backend.synchronize()

    # ------------------------------------------------------------------ step data
    def prepare(self, b: SeqBatch, tag: str = "") -> StepData:
        """Upload positions, new-token slots, row->sequence map and block tables of a step."""
        be, bs = self.be, self.block_size
        s = len(b.seq_lens)
        tables = np.zeros((s, self.max_blocks), np.int32)
        new = []
        for j, (n, ctx, slots) in enumerate(zip(b.seq_lens, b.ctx_lens, b.slot_maps, strict=True)):
            tb = np.asarray(slots[::bs], np.int64) // bs
            tables[j, : len(tb)] = tb
            new.append(np.asarray(slots[ctx - n: ctx], np.int32))
        q_seq = np.repeat(np.arange(s, dtype=np.int32), b.seq_lens)
        decode = all(n == 1 for n in b.seq_lens)
        return StepData(
            t=int(len(b.tokens)),
            pos=be.to_device(np.asarray(b.positions, np.int32), tag + "pos"),
            slots=be.to_device(np.concatenate(new), tag + "slots"),
            q_seq=be.to_device(q_seq, tag + "qseq"),
            tables=be.to_device(tables, tag + "tables"),
            seqs=list(zip(b.seq_starts, b.seq_lens, strict=True)),
            decode=decode,
            n_split=be.n_split_for(max(b.ctx_lens), s, self.args.n_heads) if decode else 1,
        )

    # ------------------------------------------------------------------ layer pieces on the device
    def attention(self, i: int, x: Any, st: StepData, tag: str = "") -> None:
        """x (T, D) device += attention of layer i (writes this step's K/V into the GPU cache)."""
        a, be, w = self.args, self.be, self.w[i]
        t = st.t
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        h = be.rms_norm_dev(x, w["attn_norm"], a.norm_eps, out=be.buf(tag + "h", (t, a.dim)))
        q = be.mm(w["wq"], h, out=be.buf(tag + "q", (t, qd)))
        k = be.mm(w["wk"], h, out=be.buf(tag + "k", (t, kvd)))
        v = be.mm(w["wv"], h, out=be.buf(tag + "v", (t, kvd)))
        for vec, m in ((w["bq"], q), (w["bk"], k), (w["bv"], v)):
            if vec is not None:
                be.add_bias_dev(m, vec)
        q3 = q.reshape(t, a.n_heads, a.head_dim)
        k3 = k.reshape(t, a.n_kv_heads, a.head_dim)
        v3 = v.reshape(t, a.n_kv_heads, a.head_dim)
        if w["q_norm"] is not None:
            be.rms_norm_dev(q3, w["q_norm"], a.norm_eps, out=q3)
        if w["k_norm"] is not None:
            be.rms_norm_dev(k3, w["k_norm"], a.norm_eps, out=k3)
        be.rope_dev(q3, st.pos, a.rope_bases[i], a.rope_neox, a.rope_pos_scales[i])
        be.rope_dev(k3, st.pos, a.rope_bases[i], a.rope_neox, a.rope_pos_scales[i])
        be.kv_write_dev(self.kc[i], self.vc[i], k3, v3, st.slots)
        att = be.buf(tag + "att", (t, qd))
        if st.decode:
            be.attention_dev(q3, self.kc[i], self.vc[i], st.q_seq, st.pos, st.tables, self.block_size,
                             a.attn_scale, a.windows[i], st.n_split, att)
        else:
            for j, (s0, n) in enumerate(st.seqs):
                be.attention_prefill_dev(q3[s0: s0 + n], self.kc[i], self.vc[i], st.pos[s0: s0 + n],
                                         st.tables[j], self.block_size, a.attn_scale, a.windows[i],
                                         att[s0: s0 + n])
        o = be.mm(w["wo"], att, out=be.buf(tag + "o", (t, a.dim)))
        if w["post_attn_norm"] is not None:
            be.rms_norm_dev(o, w["post_attn_norm"], a.norm_eps, out=o)
        be.add_dev(x, o, out=x)

    def stage_ffn(self, i: int, slot: int, after: Any = None) -> tuple[dict[str, Any], Any]:
        """Queue the copy of layer i's FFN weights (quantized, as on disk) into staging slot ``slot`` on
        the copy stream, after event ``after`` (the compute that last read that slot); (device weights
        and norms for :meth:`ffn`, the event that marks the copy done)."""
        from edgerun.backends.cuda import DeviceTensor

        be, ly = self.be, self.model.layers[i]
        w: dict[str, Any] = {}
        if after is not None:
            be.copy_stream.wait_event(after)
        for n in ("w_gate", "w_up", "w_down"):
            q = getattr(ly, n)
            host = q.data.view(np.uint8).reshape(q.n, -1)
            be.register_host(q.data)
            dst = be.buf(f"ffn_stage{slot}_{n}", host.shape, np.uint8)
            be.h2d(dst, host, stream=be.copy_stream)
            w[n] = DeviceTensor(q.name, int(q.qtype), q.k, q.n, int(host.shape[1]), dst)
        w["ffn_norm"] = be.vector(ly.ffn_norm)
        w["post_ffn_norm"] = be.vector(ly.post_ffn_norm)
        return w, be.event(be.copy_stream)

    def ffn(self, i: int, x: Any, t: int, tag: str = "", w: dict[str, Any] | None = None) -> None:
        """x (T, D) device += FFN of layer i (layers whose FFN the plan put on the GPU, or with ``w`` the
        weights :meth:`stage_ffn` streamed in)."""
        a, be = self.args, self.be
        w = self.w[i] if w is None else w
        h = be.rms_norm_dev(x, w["ffn_norm"], a.norm_eps, out=be.buf(tag + "h", (t, a.dim)))
        g = be.mm(w["w_gate"], h, out=be.buf(tag + "g", (t, a.ffn_dim)))
        u = be.mm(w["w_up"], h, out=be.buf(tag + "u", (t, a.ffn_dim)))
        be.act_mul_dev(g, u, a.activation, out=g)
        y = be.mm(w["w_down"], g, out=be.buf(tag + "y", (t, a.dim)))
        if w["post_ffn_norm"] is not None:
            be.rms_norm_dev(y, w["post_ffn_norm"], a.norm_eps, out=y)
        be.add_dev(x, y, out=x)


class HybridModel:
    """Wraps a :class:`Transformer`: same ``forward(batch, kv)``, layers split per the plan.

    Attributes not defined here (``args``, ``layers``, ``backend`` ...) are the wrapped model's.
    """

    def __init__(self, model: Transformer, gpu: GPUExec, overlap: bool = True, graphs: bool = True,
                 llc_bytes: int | None = None, stream_ffn: bool = True) -> None:
        self.model = model
        self.gpu = gpu
        self.stream_ffn = stream_ffn  # prefill: stream CPU-placed FFN weights to the GPU
        self.overlap = overlap
        self.graphs = graphs
        self.llc_bytes = last_level_cache_bytes() if llc_bytes is None else llc_bytes
        self.ffn_bytes = max((sum(int(getattr(ly, n).data.nbytes) for n in ("w_gate", "w_up", "w_down"))
                              for ly in model.layers), default=0)  # one layer's FFN weights
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._seen: set[tuple[Any, ...]] = set()
        self.captured: list[tuple[Any, ...]] = []  # keys of every capture so far (tests, debugging)
        self._graph_gen = -1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    # ------------------------------------------------------------------ helpers
    def _upload(self, x: np.ndarray, tag: str) -> Any:
        be = self.gpu.be
        xd = be.buf(tag + "x", x.shape)
        stage = be.pinned(tag + "x_in", x.shape)
        stage[...] = x
        be.h2d(xd, stage)
        return xd

    def _download(self, xd: Any, tag: str) -> np.ndarray:
        be = self.gpu.be
        stage = be.pinned(tag + "x_out", xd.shape)
        be.d2h(stage, xd)
        be.synchronize()
        return stage.copy()

    def cpu_ffn(self, ly: Any, x: np.ndarray) -> np.ndarray:
        """x + FFN(x) on the CPU: the backend's fused native FFN when it has one, else ffn_block."""
        m = self.model
        a = m.args
        be = m.backend
        if implements(be, FusedFFN) and ly.post_ffn_norm is None:
            return be.ffn(x, ly.ffn_norm, a.norm_eps, ly.w_gate, ly.w_up, ly.w_down, a.activation)
        return x + m.ffn_block(ly, x)

    def _segments(self) -> list[tuple[int, bool, bool]]:
        """Per layer: (layer, attention on GPU, FFN on GPU)."""
        g = self.gpu
        ga = set(g.attn_layers)
        return [(i, i in ga, i in g.ffn_layers) for i in range(self.model.args.n_layers)]

    def _gpu_segment(self, i: int, ffn_gpu: bool, xd: Any, st: StepData, tag: str) -> None:
        """Layer i's GPU work (attention, plus FFN when placed there), eager or as a CUDA graph."""
        g = self.gpu
        be = g.be
        key = (tag, i, st.t, len(st.seqs), st.n_split)
        if not (self.graphs and st.decode and st.t <= be.batched_threshold):
            g.attention(i, xd, st, tag)
            if ffn_gpu:
                g.ffn(i, xd, st.t, tag)
            return
        if self._graph_gen != be.generation:
            self._graphs.clear()
            self._seen.clear()
            self._graph_gen = be.generation
        graph = self._graphs.get(key)
        if graph is not None:
            graph.launch(stream=be.stream)
            return
        if key not in self._seen:  # first time: run eagerly so every pooled buffer exists
            self._seen.add(key)
            g.attention(i, xd, st, tag)
            if ffn_gpu:
                g.ffn(i, xd, st.t, tag)
            return
        gen = be.generation
        try:
            be.stream.begin_capture()
            try:
                g.attention(i, xd, st, tag)
                if ffn_gpu:
                    g.ffn(i, xd, st.t, tag)
            finally:
                graph = be.stream.end_capture()
            if be.generation != gen:
                raise RuntimeError("a buffer was allocated during capture")
        except Exception as e:  # capture unsupported here: stay eager from now on
            print(f"edgerun: CUDA graph capture disabled ({type(e).__name__}: {e})", file=sys.stderr)
            self.graphs = False
            be.synchronize()
            # captured work is recorded, not run: the residual on the device is unchanged
            g.attention(i, xd, st, tag)
            if ffn_gpu:
                g.ffn(i, xd, st.t, tag)
            return
        self._graphs[key] = graph
        self.captured.append(key)
        graph.launch(stream=be.stream)

    # ------------------------------------------------------------------ forward
    def forward(self, b: SeqBatch, kv: KVCache) -> list[np.ndarray]:
        """One step; per sequence the logits of its last token or of all its tokens."""
        m = self.model
        a = m.args
        x = m.backend.get_rows(m.tok_embd, b.tokens)
        if a.embed_scale != 1.0:
            x = x * np.float32(a.embed_scale)
        segs = self._segments()
        pure_hybrid = all(ga and not gf for _, ga, gf in segs)
        streams = self.stream_ffn and len(b.tokens) >= STREAM_FFN_TOKENS
        if self.overlap and len(b.seq_lens) >= 2 and pure_hybrid and self.ffn_bytes <= self.llc_bytes \
                and not streams:
            x = self._forward_overlap(b, kv, x)
            xd = None
        else:
            x, xd = self._forward_layers(b, kv, x, segs)
        return self._head(b, x, xd)

    def _forward_layers(self, b: SeqBatch, kv: KVCache, x: np.ndarray,
                        segs: list[tuple[int, bool, bool]]) -> tuple[np.ndarray | None, Any]:
        m, g = self.model, self.gpu
        st = g.prepare(b) if g.attn_layers else None
        xd = None  # device copy of the residual stream, current when not None
        # prefill of STREAM_FFN_TOKENS+ rows: the CPU-placed FFNs of GPU-attention layers run on the GPU
        # with weights streamed over PCIe, layer k+2's copy queued behind layer k's compute (two slots)
        streamed = [i for i, ga, gf in segs if ga and not gf] \
            if self.stream_ffn and st is not None and st.t >= STREAM_FFN_TOKENS else []
        staged: dict[int, tuple[dict[str, Any], Any]] = {}
        for k in range(min(2, len(streamed))):
            staged[streamed[k]] = g.stage_ffn(streamed[k], k)
        order = {i: k for k, i in enumerate(streamed)}
        for i, attn_gpu, ffn_gpu in segs:
            ly = m.layers[i]
            if attn_gpu:
                if xd is None:
                    xd = self._upload(x, "")
                self._gpu_segment(i, ffn_gpu, xd, st, "")
                if ffn_gpu:
                    continue
                if i in staged:
                    w, ready = staged.pop(i)
                    g.be.stream.wait_event(ready)
                    g.ffn(i, xd, st.t, "", w=w)
                    k = order[i]
                    if k + 2 < len(streamed):  # reuse this slot once this FFN has read it
                        staged[streamed[k + 2]] = g.stage_ffn(streamed[k + 2], k % 2, g.be.event(g.be.stream))
                    continue
                x = self._download(xd, "")
                xd = None
            else:
                if xd is not None:
                    x = self._download(xd, "")
                    xd = None
                x = x + m.attention_block(i, ly, x, b, kv)
            x = self.cpu_ffn(ly, x)
        if xd is not None and not g.head_on_gpu:
            x = self._download(xd, "")
            xd = None
        return x, xd

    def _forward_overlap(self, b: SeqBatch, kv: KVCache, x: np.ndarray) -> np.ndarray:
        """Two micro-batches: GPU attention of one overlaps the CPU FFN of the other."""
        m, g = self.model, self.gpu
        be = g.be
        s = len(b.seq_lens)
        cut = s // 2
        halves = []
        for lo, hi, tag in ((0, cut, "A"), (cut, s, "B")):
            r0 = b.seq_starts[lo]
            r1 = b.seq_starts[hi - 1] + b.seq_lens[hi - 1]
            sub = SeqBatch(b.tokens[r0:r1], b.positions[r0:r1], [o - r0 for o in b.seq_starts[lo:hi]],
                           b.seq_lens[lo:hi], b.ctx_lens[lo:hi], b.slot_maps[lo:hi], b.want_all[lo:hi])
            halves.append((tag, g.prepare(sub, tag), x[r0:r1].copy(), r0, r1))
        xs = [h[2] for h in halves]
        n_layers = m.args.n_layers

        def enqueue(j: int, i: int) -> np.ndarray:
            tag, st = halves[j][0], halves[j][1]
            xd = self._upload(xs[j], tag)
            g.attention(i, xd, st, tag)
            stage = be.pinned(tag + "x_out", xd.shape)
            be.d2h(stage, xd)
            return stage

        for i in range(n_layers):
            ly = m.layers[i]
            stage_a = enqueue(0, i)
            if i > 0:
                xs[1] = self.cpu_ffn(m.layers[i - 1], xs[1])  # CPU, overlaps A's attention
            be.synchronize()
            xs[0] = stage_a.copy()
            stage_b = enqueue(1, i)
            xs[0] = self.cpu_ffn(ly, xs[0])  # CPU, overlaps B's attention
            be.synchronize()
            xs[1] = stage_b.copy()
        xs[1] = self.cpu_ffn(m.layers[n_layers - 1], xs[1])
        return np.concatenate(xs, axis=0)

    def _head(self, b: SeqBatch, x: np.ndarray | None, xd: Any) -> list[np.ndarray]:
        m, g = self.model, self.gpu
        a = m.args
        rows = [np.arange(s0, s0 + n) if want else np.array([s0 + n - 1])
                for s0, n, want in zip(b.seq_starts, b.seq_lens, b.want_all, strict=True)]
        sel = np.concatenate(rows)
        if g.head_on_gpu:
            be = g.be
            if xd is None:
                xd = self._upload(np.ascontiguousarray(x[sel]), "head")
            else:
                with be.stream:
                    xd = be.cp.ascontiguousarray(xd[be.to_device(sel.astype(np.int64), "sel")])
            h = be.rms_norm_dev(xd, g.out_norm, a.norm_eps, out=be.buf("head_h", xd.shape))
            logits = be.to_host(be.mm(g.head, h))
        else:
            assert x is not None
            h = rms_norm(x[sel], m.out_norm, a.norm_eps)
            logits = m.backend.matmul(m.output, h)
        out, r = [], 0
        for n, want in zip(b.seq_lens, b.want_all, strict=True):
            k = n if want else 1
            out.append(logits[r: r + k] if want else logits[r])
            r += k
        return out


class HybridRunner(Runner):
    """A :class:`Runner` whose layers run per a placement :class:`Plan` on the GPU and the CPU."""

    pin_weights_at_init = False  # only the weights left on the CPU, once the plan has placed them

    def __init__(self, model: str | os.PathLike | GGUFFile, plan: Plan | None = None, placement: str = "auto",
                 vram_budget: int | None = None, overrides: Sequence[str] = (), vram_bytes: int | None = None,
                 overlap: bool = True, graphs: bool = True, **kw: Any) -> None:
        kw.pop("batch_tiles", None)  # the CPU side's weights move after the plan (pin_in_hugepages below)
        super().__init__(model, **kw)
        if plan is None:
            a = self.args
            plan = plan_placement(self.gguf, a.n_layers, a.n_kv_heads, a.head_dim,
                                  ctx=self.num_blocks * self.block_size, batch=1, mode=placement,
                                  vram_bytes=vram_bytes, vram_budget=vram_budget, overrides=overrides)
        self.plan = plan
        from edgerun.backends.cuda import CudaBackend

        self.gpu_backend = CudaBackend()
        max_blocks = math.ceil(self.n_ctx / self.block_size)
        self.gpu = GPUExec(self.model, plan, self.gpu_backend, self.num_blocks * self.block_size,
                           self.block_size, max_blocks)
        for i in self.gpu.attn_layers:  # their KV lives on the GPU
            self.kv.k[i] = self.kv.k[i][:0]
            self.kv.v[i] = self.kv.v[i][:0]
        cpu_side = [] if self.gpu.head_on_gpu else [self.model.output]
        for i, ly in enumerate(self.model.layers):
            if i not in self.gpu.attn_layers:
                cpu_side += [ly.wq, ly.wk, ly.wv, ly.wo]
            if i not in self.gpu.ffn_layers:
                cpu_side += [ly.w_gate, ly.w_up, ly.w_down]
        self.pinned_bytes = pin_in_hugepages(cpu_side)
        self.model = HybridModel(self.model, self.gpu, overlap=overlap, graphs=graphs)  # type: ignore[assignment]


__all__ = ["GPUExec", "HybridModel", "HybridRunner", "StepData"]
