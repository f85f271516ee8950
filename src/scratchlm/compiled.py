"""The batch-1 decode step compiled by inductor (SampleConfig.compile; decode.Steps runs it).

At batch 1 on CPU an eager decode step is ~100 small ops, each costing more in dispatch than in
arithmetic, and its matmuls are (1 x n) @ (n x m) products that MKL runs at ~10 GB/s of weights where
llama.cpp's dot products read ~25 GB/s. The compiled step fixes both: one graph of generated C++ kernels
at shapes that never change (GPT.forward_static), with each matmul of one row written as a product and
a sum over every weight row, which inductor turns into a vectorized dot-product loop over the weights as
they lie in memory, fed by an input computed once. Each change's figure is in docs/benchmarks.md (issue 27.1).
"""

from __future__ import annotations

import functools
import threading
import types
import weakref

import torch

from .model import GPT, KVCache

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _static_step(model: GPT, idx: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    """One token through GPT.forward_static: the last logits (vocab,) and their argmax, the greedy pick,
    which costs ~2 us inside the compiled graph against ~13 us as an op of its own."""
    logits, _ = model.forward_static(idx, cache)
    return logits[0, -1], logits[0, -1].argmax()


# Weights of at least this many elements (1 MiB in float32) are read in blocks of output rows.
_BLOCKED_MIN = 2**18


@functools.cache
def _block_rows() -> int:
    """Rows per block of a repacked weight: the floats in one of inductor's vectors, so a block's sums fill
    one register. On AVX-512, 16 gained 10% on the 6x384 model where 8 lost 4x in half-vector loops; on
    AVX2, 16 took 9% longer than row dots and 8 the same time (docs/benchmarks.md, issue 27.1)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return isa.nelements(torch.float32) if isa else 16


def _static_rows(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token for each of B rows through GPT.forward_static: every row's last logits (B, vocab)."""
    logits, _ = model.forward_static(idx, cache)
    return logits[:, -1]


def _row_mm(x: torch.Tensor, w_t: torch.Tensor):
    """aten.mm for one row x (1, n) and a weight's transpose w_t (n, m): x times each weight row, summed.
    Other shapes keep aten's mm (NotImplemented leaves an op undecomposed).

    x is pinned to a buffer of its own first (as_strided makes inductor realize it): left to fusion,
    inductor recomputed x's producer (a layer norm, GELU's erf) inside the loop for every one of the m
    weight rows. A small weight is read row by row, a dot product each. A large one is repacked once, at
    compile time (freezing folds the copy into a constant), as (m / r, n, r) with r rows a vector holds
    (`_block_rows`): blocks of r outputs whose loop keeps one vector of r sums and reads the block as one
    contiguous stream, with no horizontal sum per output: +10% tokens/s on the 6x384 model, whose weights
    do not fit in cache, on AVX-512 (on AVX2 the same as row dots); on the tiny preset's small weights,
    held in cache, the row dots are ~5% faster. The copy costs the memory of those weights
    again while the compiled step lives."""
    if x.shape[0] != 1:
        return NotImplemented
    x = x.as_strided(x.shape, x.stride())
    n, m = w_t.shape
    rows = _block_rows() if w_t.device.type == "cpu" else 0  # measured on CPUs only
    if n * m < _BLOCKED_MIN or not rows or m % rows:
        return (x[:, None, :] * w_t.t()[None]).sum(-1)  # (1, m, n) summed over n: W's rows are contiguous
    blocks = w_t.reshape(n, m // rows, rows).permute(1, 0, 2).contiguous()  # (m / rows, n, rows)
    return (x.view(1, n, 1) * blocks).sum(1).reshape(1, m)


def _row_addmm(bias: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        return NotImplemented
    y = _row_mm(x, w_t)
    return y if y is NotImplemented else y + bias


def _one_query_attention(q, k, v, dropout_p=0.0, is_causal=False, attn_mask=None, scale=None):
    """CPU flash attention for one new query (B, H, 1, hd) over the whole cache k, v (B, H, L, hd) as
    products, sums and a softmax, which inductor fuses into its own loops instead of calling the kernel.
    Returns (out, logsumexp) as the kernel does. +9% tokens/s on the tiny preset (L = 128), the same on
    the 6x384 model, where the matmuls dominate."""
    if q.shape[2] != 1 or is_causal or dropout_p or k.shape[1] != q.shape[1]:
        return NotImplemented
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * k).sum(-1) * scale  # (B, H, L)
    if attn_mask is not None:
        mask = attn_mask[:, :, 0]  # (B, 1 or H, L)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (B, H, 1)
    out = ((scores - lse).exp()[..., None] * v).sum(-2, keepdim=True)  # (B, H, 1, hd)
    return out, lse


def _roll_as_cat(x: torch.Tensor, shifts, dims=()):
    """RoPE's half-head roll as two slices joined: inductor lowers aten.roll to a gather of single floats
    (an index modulo the head size), 16 scalar loads a vector, and fused it into attention's loop over
    every cached position; a concatenation it reads as two plain vector loads."""
    if len(shifts) != 1 or len(dims) != 1:
        return NotImplemented
    dim, size = dims[0], x.shape[dims[0]]
    s = shifts[0] % size
    return torch.cat([x.narrow(dim, size - s, s), x.narrow(dim, 0, size - s)], dim)


def _backend(gm, example_inputs):
    """Inductor with the one-row matmuls, attention and roll above, freezing (weights as constants, with
    `_traced_frozen`), cpp_wrapper (the graph's calls made from C++, not Python) and fused multiply-adds."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    aten = torch.ops.aten
    decompositions = {
        **select_decomp_table(),
        aten.mm.default: _row_mm,
        aten.addmm.default: _row_addmm,
        aten._scaled_dot_product_flash_attention_for_cpu.default: _one_query_attention,
        aten.roll.default: _roll_as_cat,
    }
    # fp-contract=fast lets the C++ compiler fuse each dot product's multiply and add into one FMA, as
    # llama.cpp's kernels do: +5% tokens/s on the 6x384 model (interleaved A/B), last bits of rounding apart.
    patches = {"freezing": True, "cpp_wrapper": True, "cpp.enable_floating_point_contract_flag": "fast"}
    return compile_fx(gm, example_inputs, config_patches=patches, decompositions=decompositions)


def _traced_frozen(step, any_length: bool):
    """`step` whose calls that dynamo traces (the first at each batch size) run with inductor's freezing
    on. Dynamo decides while tracing whether the weights enter the graph as constants or as inputs (it
    reads the global config then); the backend's patch alone came too late, so the weights stayed inputs
    and freezing folded nothing. As constants: +21% tokens/s on the tiny preset, +8% on the 6x384 model,
    and the blocked copies of `_row_mm` are made once. any_length: the cache's length is traced as a
    symbol (`StepCache`), so one graph takes every length the calls pass."""
    traced: set[torch.Size] = set()

    def call(model: GPT, idx: torch.Tensor, cache: KVCache):
        if idx.shape in traced:
            return step(model, idx, cache)
        if any_length:
            for t in (*cache.k, *cache.v):
                torch._dynamo.mark_dynamic(t, 2)
        with torch._inductor.config.patch(freezing=True):
            out = step(model, idx, cache)
        traced.add(idx.shape)
        return out

    return call


class _Replay:
    """A compiled step called straight, past dynamo, when a call passes the very objects of an earlier one.

    Dynamo's part of each call (its frame hook, the guards, the bytecode around the graph) cost ~120 us of
    the tiny preset's ~460 us step. A decoder passes the same objects on every step (a preallocated
    input, StepCache's views) whose contents change in place, so the graph that dynamo picked for them,
    and the arguments it gave that graph, hold for every later call with those objects: the guards are
    cut to tensor guards, and those objects' shapes, strides and dtypes never change. Taken only when
    each of the graph's arguments is one of those tensors, a weight, or a length read from their shapes,
    and the step returns the graph's outputs as they are; otherwise every call goes through dynamo.
    An entry lives as long as its cache view (the decoder's StepCache) does."""

    def __init__(self):
        self._last = threading.local()  # (graph, args, outs) of the graph dynamo called last here
        self._calls: dict[int, tuple] = {}  # id(cache) -> (weakref to cache, idx, graph, args, picks)
        self.replayed = 0  # calls that skipped dynamo

    def backend(self, gm, example_inputs):
        graph = _backend(gm, example_inputs)

        def run(*args):
            outs = graph(*args)
            self._last.call = (graph, args, outs)
            return outs

        return run

    def wrap(self, step):
        def call(model: GPT, idx: torch.Tensor, cache: KVCache):
            hit = self._calls.get(id(cache))
            if hit is not None and hit[0]() is cache and hit[1] is idx:
                self.replayed += 1
                outs = hit[2](*hit[3])
                picks = hit[4]
                return tuple(outs[j] for j in picks) if isinstance(picks, tuple) else outs[picks]
            self._last.call = None
            out = step(model, idx, cache)
            self._learn(model, idx, cache, out)
            self._last.call = None  # its arguments would keep the cache alive
            return out

        call.replay = self
        return call

    def _learn(self, model: GPT, idx: torch.Tensor, cache: KVCache, out) -> None:
        graph, args, outs = getattr(self._last, "call", None) or (None, (), ())
        if graph is None or not all(isinstance(a, torch.Tensor | int) for a in args):
            return
        known = {id(t) for t in (idx, cache.pos, *cache.k, *cache.v, *model.parameters(), *model.buffers())}
        if not all(isinstance(a, int) or id(a) in known for a in args):
            return
        place = {id(o): j for j, o in enumerate(outs)}
        results = out if isinstance(out, tuple) else (out,)
        if not all(id(r) in place for r in results):
            return
        picks = tuple(place[id(r)] for r in results) if isinstance(out, tuple) else place[id(out)]
        key = id(cache)
        gone = weakref.ref(cache, lambda _: self._calls.pop(key, None))
        self._calls[key] = (gone, idx, graph, args, picks)


def compiled_step(model: GPT, rows: bool = False):
    """The decode step compiled for this model as its weights are now. rows=False (batch-1 generation):
    step(model, idx (1, 1), cache) → (logits (vocab,), argmax). rows=True (the engine's batched step):
    step(model, idx (B, 1), cache) → logits (B, vocab), one graph per batch size B. In both, cache.pos is a
    (B,) tensor that the step moves on.

    Dynamo's guards checked every module on each call (~44 us a token on the tiny preset) and are cut
    to the tensor guards. Frozen weights do not follow later changes, so a step is compiled per model
    and again once any parameter was written to (an optimizer step bumps `_version`); each compile gets
    a code object of its own, because dynamo keeps compiled graphs per code object and the trimmed
    guards would not tell two models apart.
    """
    # Weights made under torch.inference_mode (a model loaded inside it) keep no version counter; no
    # optimizer can step them, so they count as never changed.
    version = tuple(-1 if p.is_inference() else p._version for p in model.parameters())
    fn = _static_rows if rows else _static_step
    steps = _COMPILED.setdefault(model, {})
    hit = steps.get(fn)
    if hit is None or hit[0] != version:
        fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
        options = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}
        replay = _Replay()
        step = torch.compile(fresh, backend=replay.backend, fullgraph=True, dynamic=False, options=options)
        hit = steps[fn] = (version, replay.wrap(_traced_frozen(step, _any_length(model.config.block_size))))
    return hit[1]


# From this many positions of context a compiled step attends over the filled part of the cache only,
# rounded up to _SPAN positions (StepCache); below, over all of it, in a graph of fixed shapes.
_PREFIX_MIN = 512
_SPAN = 64


def _any_length(block_size: int) -> bool:
    """Whether a compiled step of this context traces the cache's length as a symbol (StepCache)."""
    return block_size >= _PREFIX_MIN


class StepCache:
    """The KV cache that a compiled step reads, and the views of it that each call passes.

    A graph of fixed shapes attends over the whole cache: at GPT-2's 1,024 positions a 124M model's step
    at 16 rows took 212 ms where the first 128 positions took 84 (one row: 34 against 26 ms). So from
    _PREFIX_MIN positions of context each call passes the positions up to the furthest row's, rounded up
    to _SPAN, and the graph is traced with that length as a symbol: one graph takes every length. Shorter
    contexts keep one static graph over the whole cache (attention over a quarter or half of a 256-long
    cache gained nothing on the 6x384 model, and the tiny preset lost to a second graph's guards).

    The cache holds one position more than the context, so no view is ever contiguous: traced on a
    contiguous tensor, a graph takes its strides from its length, and a shorter view's then fail it.
    """

    def __init__(self, model: GPT, batch: int):
        cfg, weight = model.config, model.transformer.wte.weight
        self.block = cfg.block_size
        self.any_length = _any_length(self.block)
        length = self.block + self.any_length
        self.cache = KVCache.empty(cfg, batch, length, weight.device, weight.dtype)
        # Each row's position, which the step moves on; every view shares it (a prefill may set the
        # cache's own `pos` to an int).
        self.cache.pos = self.positions = torch.zeros(batch, dtype=torch.long, device=weight.device)
        self._views: dict[tuple[int, int], KVCache] = {}

    def view(self, rows: int, end: int | None = None) -> KVCache:
        """Rows 0..rows-1 over the positions a step needs when the furthest row writes at end - 1 (end
        None: read from the rows' positions, when the length depends on it)."""
        length = self.block
        if self.any_length:
            if end is None:
                end = int(self.positions[:rows].max()) + 1
            length = min(self.block, -(-end // _SPAN) * _SPAN)
        hit = self._views.get((rows, length))
        if hit is None:  # views made once: narrowing 2 x n_layer tensors a step cost ~5% of a 1-row step
            whole = KVCache(self.cache.k, self.cache.v, self.positions)
            hit = self._views[rows, length] = whole.rows(0, rows).prefix(length)
        return hit
