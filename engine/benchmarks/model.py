"""Model benchmarks: one SSM mixer layer against its fairly sized peers; step mode per bar; the full model's
training step against a Transformer of the same width.

`rows(device)` returns one dict per measurement: the median ms and its spread (IQR, min..max), "fwd" inference
(eval mode, no autograd), "fwd+bwd" a training pass (train mode, forward, backward of the sum). Every layer is the
pre-norm residual block of width 64 (d_inner 128, state 16) with the same dropout (ModelConfig's default, 0.1):

* our SSM layer (chunked scan; and with the sequential reference scan, the exactness baseline);
* mambapy's Mamba block (RMSNorm + mixer + residual: the same scope), with its parallel pscan and sequential mode;
* a causal pre-norm nn.TransformerEncoderLayer with the standard 4x feed-forward (256 wide), NOT torch's default
  2048 (32x d_model, 8x our layer's parameters), and the same dropout. Parameter counts are in every row.

The peers of one length are timed interleaved (each once per round), and the ratios are medians of the rounds'
paired ratios, so load on a shared CPU hits both sides of a ratio alike. Each budget row says pass or FAIL.

On a GPU the full model's training step is timed several ways (issue 18): eager as before the grouped per-asset
matmuls (engine.model.ssm), eager with them, and the whole step captured as one CUDA graph
(engine.model.hybrid.GraphedTrainingStep), the Transformer peer eager and captured alike, so each ratio compares
like with like; the lead-lag attention runs as the fused Triton kernel (engine.model.attention_triton) unless a row
says "explicit attention (before)" (the torch path: key windows and a scores tensor); `--only compile` adds the step under torch.compile (minutes of compiling, not in the default run).
"""
from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from importlib import metadata

import torch
from torch import nn

import engine.model.attention as attention_module
import engine.model.hybrid as hybrid_module
import engine.model.ssm as ssm_module
from engine.benchmarks._measure import (
    Timing,
    machine_line,
    paired_ratio,
    time_interleaved,
    time_on,
    verdict,
)
from engine.model.attention import LeadLagAttention
from engine.model.config import ModelConfig
from engine.model.hybrid import GraphedTrainingStep, HybridModel
from engine.model.scan import selective_scan_reference
from engine.model.ssm import SelectiveSSMBlock
from engine.runtime import configure_cpu_threads, device_label, pick_device
from engine.training.precision import tf32_matmuls

LAYER_BATCH = 8
LAYER_LENGTHS = (1024, 4096)
D_MODEL, D_STATE, EXPAND, N_HEADS = 64, 16, 2, 4
DROPOUT = ModelConfig().dropout  # every peer trains with the dropout our layer has
FF_MULT = 4  # the Transformer's feed-forward width, as a multiple of d_model (the standard choice)
MODEL_BATCH, MODEL_LENGTH, MODEL_ASSETS = 32, 512, 3
MANY_ASSETS, MANY_BATCH = 50, 8  # issue 18's wide case: 50 assets x 512 bars x batch 8
MANY_BEFORE_MS = 77.0  # its training step before issue 18's work (H200, fp32), as the issue quotes it
MANY_BUDGET_MS = MANY_BEFORE_MS / 3  # the target: 3x faster
TRANSFORMER_LAYERS = 4  # the full model's peer: as many layers as our default pattern has
STEP_BUDGET_MS = 1.0  # step mode, 3 assets, one new bar, one CPU thread
# Targets for our layer against its peers (our time / peer time; mambapy: its time / ours).
TRANSFORMER_RATIO_TARGET = {1024: 1.5, 4096: 1.0}
MAMBAPY_SPEEDUP_TARGET = 20.0


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def sequential_reference_scan() -> Iterator[None]:
    """Run our layer with the plain sequential scan in place of the fast one."""
    fast = ssm_module.selective_scan
    ssm_module.selective_scan = selective_scan_reference
    try:
        yield
    finally:
        ssm_module.selective_scan = fast


class _Peer:
    """One candidate of the layer table: a module, how to run it on x, and whether its training pass is timed."""

    def __init__(self, name: str, module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 *, backward: bool = True, context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 why_no_backward: str = ""):
        self.name, self.module, self.run, self.backward = name, module, run, backward
        self.context, self.why_no_backward = context, why_no_backward
        self.x = x
        self.x_grad = x.detach().requires_grad_(True)

    def forward(self) -> None:
        with self.context(), torch.no_grad():
            self.run(self.x)

    def train_pass(self) -> None:
        with self.context():
            self.module.zero_grad(set_to_none=True)
            self.run(self.x_grad).sum().backward()


def layer_peers(device: torch.device, length: int) -> tuple[list[_Peer], list[dict]]:
    """Every layer of the table at one length, and the rows of peers that could not be built."""
    peers, missing = [], []
    torch.manual_seed(0)
    config = ModelConfig(n_assets=1, n_features=D_MODEL, d_model=D_MODEL, d_state=D_STATE, expand=EXPAND,
                         dropout=DROPOUT)
    ours = SelectiveSSMBlock(config).to(device)
    x4 = torch.randn(LAYER_BATCH, length, 1, D_MODEL, device=device)  # (B, T, A=1, M)
    mask = torch.ones(LAYER_BATCH, length, 1, dtype=torch.bool, device=device)
    peers.append(_Peer("our SSM layer (chunked scan)", ours, lambda t: ours(t, mask)[0], x4))
    long = length > 1024 and device.type == "cpu"
    peers.append(_Peer("our SSM layer (sequential reference scan)", ours, lambda t: ours(t, mask)[0], x4,
                       context=sequential_reference_scan, backward=not long,
                       why_no_backward="its training pass is a Python loop under autograd: minutes at this length"))
    x3 = torch.randn(LAYER_BATCH, length, D_MODEL, device=device)
    try:
        from mambapy.mamba import MambaConfig, ResidualBlock
        version = metadata.version("mambapy")
        for parallel in (True, False):  # mambapy's own switch: Blelloch pscan, or a Python loop over time
            torch.manual_seed(0)
            mamba_config = MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=EXPAND,
                                       pscan=parallel)
            block = ResidualBlock(mamba_config).to(device)
            scan = "parallel pscan" if parallel else "sequential"
            peers.append(_Peer(f"mambapy {version} Mamba block ({scan})", block, block, x3, backward=parallel,
                               why_no_backward="its sequential mode's training pass is a Python loop under autograd "
                                               "(over a minute at 1024 bars)"))
    except ImportError:
        missing.append({"case": "mambapy Mamba block", "length": length,
                            "note": "mambapy not installed (pip install mambapy==1.2.0)"})
    torch.manual_seed(0)
    transformer = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, dim_feedforward=FF_MULT * D_MODEL, dropout=DROPOUT,
                                             batch_first=True, norm_first=True).to(device)
    causal = nn.Transformer.generate_square_subsequent_mask(length, device=device)
    peers.append(_Peer(f"Transformer layer, causal, pre-norm, FF {FF_MULT}x", transformer,
                       lambda t: transformer(t, src_mask=causal, is_causal=True), x3))
    return peers, missing


def layer_rows(device: torch.device, length: int, budget_s: float = 8.0) -> list[dict]:
    peers, rows = layer_peers(device, length)
    for peer in peers:
        peer.module.eval()
    forward = time_interleaved({p.name: p.forward for p in peers}, device, budget_s=budget_s)
    for peer in peers:
        peer.module.train()
    trained = [p for p in peers if p.backward]
    train = time_interleaved({p.name: p.train_pass for p in trained}, device, budget_s=budget_s)
    for peer in peers:
        t = train.get(peer.name)
        rows.append({"case": peer.name, "length": length, "parameters": f"{params(peer.module):,}",
                         "fwd_ms": forward[peer.name].median, "fwd_spread": forward[peer.name].spread(),
                         "fwd_bwd_ms": t.median if t else "-", "fwd_bwd_spread": t.spread() if t else "-",
                         "note": "" if t else peer.why_no_backward})
    rows.extend(ratio_rows(peers, forward, train, length))
    return rows


def ratio_rows(peers: list[_Peer], forward: dict[str, Timing], train: dict[str, Timing], length: int) -> list[dict]:
    """Our layer against the Transformer (our time / its time) and mambapy's parallel block (its time / ours), as
    paired ratios, with their targets and pass/fail."""
    ours = peers[0].name
    out = []
    transformer = next(p.name for p in peers if p.name.startswith("Transformer"))
    target = TRANSFORMER_RATIO_TARGET.get(length, None)
    for mode, timings in (("fwd", forward), ("fwd+bwd", train)):
        if ours in timings and transformer in timings:
            ratio = paired_ratio(timings[ours], timings[transformer])
            out.append({"case": f"ratio: our layer / Transformer layer, {mode}", "length": length, "ratio": ratio,
                            "budget": f"<= {target}" if target else "-",
                            "result": verdict(ratio, target) if target else "-"})
    mambapy = next((p.name for p in peers if "parallel pscan" in p.name), None)
    if mambapy:
        for mode, timings in (("fwd", forward), ("fwd+bwd", train)):
            if ours in timings and mambapy in timings:
                speedup = paired_ratio(timings[mambapy], timings[ours])
                out.append({"case": f"ratio: mambapy pscan block / our layer, {mode}", "length": length, "ratio": speedup,
                                "budget": f">= {MAMBAPY_SPEEDUP_TARGET:g}",
                                "result": verdict(speedup, MAMBAPY_SPEEDUP_TARGET, at_least=True)})
    return out


@contextlib.contextmanager
def plain_step_loop() -> Iterator[None]:
    """Step with the plain layer loop (what step mode was before the batch-1 fast path), for the paired row."""
    fast = hybrid_module.fast_step_applies
    hybrid_module.fast_step_applies = lambda *args: False
    try:
        yield
    finally:
        hybrid_module.fast_step_applies = fast


def step_rows(device: torch.device, bars: int = 400) -> list[dict]:
    """Time per new bar of HybridModel.step, batch 1, in inference mode, the fast path and the plain loop taking
    turns bar by bar (each on its own state): wall clock and this thread's CPU time (on a shared CPU the wall
    clock includes time other processes held the core). With the configured thread count and, on CPU, one thread
    (a bar's tensors are far too small to split across threads), against the 1 ms budget."""
    torch.manual_seed(0)
    model = HybridModel(ModelConfig(n_assets=MODEL_ASSETS, point_head=False, lead_path=False)).to(device).eval()
    x = torch.randn(bars + 20, 1, MODEL_ASSETS, model.config.n_features, device=device)
    mask = torch.ones(bars + 20, 1, MODEL_ASSETS, dtype=torch.bool, device=device)

    def per_bar() -> dict[str, tuple[Timing, Timing]]:
        wall: dict[str, list[float]] = {"fast": [], "plain": []}
        cpu: dict[str, list[float]] = {"fast": [], "plain": []}
        with torch.inference_mode():
            states = {"fast": model.init_state(1), "plain": model.init_state(1)}
            for t in range(bars + 20):
                for path in ("fast", "plain"):
                    with plain_step_loop() if path == "plain" else contextlib.nullcontext():
                        t0, c0 = time.perf_counter(), time.thread_time()
                        _, states[path] = model.step(x[t], mask[t], states[path])
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        c1, t1 = time.thread_time(), time.perf_counter()
                    if t >= 20:  # the first bars warm up
                        wall[path].append((t1 - t0) * 1e3)
                        cpu[path].append((c1 - c0) * 1e3)
        return {path: (Timing(tuple(wall[path])), Timing(tuple(cpu[path]))) for path in wall}

    counts = [torch.get_num_threads()]
    if device.type == "cpu" and counts[0] > 1:
        counts.append(1)
    result = []
    threads = torch.get_num_threads()
    try:
        for count in counts:
            torch.set_num_threads(count)
            timings = per_bar()
            one_thread = device.type == "cpu" and count == 1
            for path, label in (("fast", "batch-1 fast path"), ("plain", "plain layer loop (before)")):
                wall, cpu = timings[path]
                budgeted = one_thread and path == "fast"
                result.append({
                    "case": f"full model step, {MODEL_ASSETS} assets, one new bar: {label}", "length": 1,
                    "parameters": f"{model.num_parameters():,}", "fwd_ms": wall.median, "fwd_spread": wall.spread(),
                    "budget": f"<= {STEP_BUDGET_MS:g} ms" if budgeted else "-",
                    "result": verdict(wall.median, STEP_BUDGET_MS) if budgeted else "-",
                    "note": f"{bars} bars, {count} thread{'s' if count > 1 else ''}; thread CPU time median "
                            f"{cpu.median:.3f} ms"})
            result.append({"case": "ratio: fast path / plain loop, per bar (paired)", "length": 1,
                           "ratio": paired_ratio(timings["fast"][0], timings["plain"][0]),
                           "note": f"{count} thread{'s' if count > 1 else ''}"})
    finally:
        torch.set_num_threads(threads)
    return result


class TransformerPeer(nn.Module):
    """The full model's peer: per-asset input projection, TRANSFORMER_LAYERS causal pre-norm layers of the same width
    (FF 4x, same dropout) over each asset's stream, and a linear head with as many outputs as ours."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_proj = nn.Linear(config.n_features, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, dim_feedforward=FF_MULT * config.d_model,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, TRANSFORMER_LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(config.d_model, len(config.horizons) * (len(config.quantiles) + 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, assets, length, features = x.shape
        h = self.input_proj(x.reshape(batch * assets, length, features))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        return self.head(self.encoder(h, mask=causal, is_causal=True))


def full_model_rows(device: torch.device, budget_s: float = 8.0) -> list[dict]:
    if device.type != "cuda":
        return _full_model_rows(device, budget_s)
    with tf32_matmuls(False):
        rows = _full_model_rows(device, budget_s, "fp32")
    with tf32_matmuls(True):
        return rows + _full_model_rows(device, budget_s, "TF32 matmuls")


def many_assets_rows(device: torch.device, budget_s: float = 6.0) -> list[dict]:
    """Our training step at MANY_ASSETS assets x MODEL_LENGTH bars x batch MANY_BATCH (GPU only), fp32 and TF32:
    eager with the plain per-asset matmuls (before), eager with the grouped ones, and the step as one CUDA graph."""
    if device.type != "cuda":
        return []
    model, x, mask = _training_setup(device, MANY_ASSETS, MANY_BATCH)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        _training_loss(model, x, mask).backward()

    rows = []
    for precision, tf32 in (("fp32", False), ("TF32 matmuls", True)):
        with tf32_matmuls(tf32):
            with explicit_attention():
                graph_before = GraphedTrainingStep(model, lambda a, b: _training_loss(model, a, b), x, mask)
            variants = {
                "eager, plain per-asset matmuls, explicit attention (before)": _explicit(_paths(train, False)),
                "eager, grouped per-asset matmuls, explicit attention (before)": _explicit(train),
                "eager, grouped per-asset matmuls, fused attention": train,
                "one CUDA graph (grouped matmuls, explicit attention) (before)": graph_before,
                "one CUDA graph (grouped matmuls, fused attention)": GraphedTrainingStep(
                    model, lambda a, b: _training_loss(model, a, b), x, mask)}
            for name, fn in variants.items():
                try:
                    timing = time_on(device, fn, budget_s=budget_s, max_reps=15)
                except RuntimeError as error:  # a path this torch build cannot run: say so, keep the others
                    rows.append({"case": f"{MANY_ASSETS} assets, {precision}, {name}", "note": f"failed: {error}"[:200]})
                    continue
                rows.append({"case": f"full model, {MANY_ASSETS} assets x {MODEL_LENGTH} bars x batch {MANY_BATCH}, "
                                     f"training step, {precision}, {name}", "length": MODEL_LENGTH,
                             "parameters": f"{model.num_parameters():,}", "fwd_bwd_ms": timing.median,
                             "fwd_bwd_spread": timing.spread(), "budget": f"<= {MANY_BUDGET_MS:.1f} ms (3x under "
                             f"{MANY_BEFORE_MS:g})", "result": verdict(timing.median, MANY_BUDGET_MS)})
            del variants, graph_before
    return rows


def _training_setup(device: torch.device, assets: int, batch: int) -> tuple[HybridModel, torch.Tensor, torch.Tensor]:
    """The benchmark's model (no point head, no lead path) in train mode, random features, every bar open."""
    torch.manual_seed(0)
    config = ModelConfig(n_assets=assets, point_head=False, lead_path=False)
    model = HybridModel(config).to(device).train()
    x = torch.randn(batch, assets, MODEL_LENGTH, config.n_features, device=device)
    return model, x, torch.ones(batch, assets, MODEL_LENGTH, dtype=torch.bool, device=device)


def _training_loss(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    output = model(x, mask)
    return output.quantiles.sum() + output.direction_logit.sum() + output.log_vol.sum()


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """The lead-lag attention's torch path (key windows, scores tensor) instead of the fused kernel; restored after."""
    saved = attention_module.FUSED_ON_CUDA
    attention_module.FUSED_ON_CUDA = False
    try:
        yield
    finally:
        attention_module.FUSED_ON_CUDA = saved


def _explicit(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with explicit_attention():
            fn()
    return run


def _paths(fn: Callable[[], object], grouped: bool) -> Callable[[], None]:
    """fn with the grouped per-asset matmuls (engine.model.ssm) switched on or off; restored after each call."""
    def run() -> None:
        saved = ssm_module.GROUPED_MATMUL
        ssm_module.GROUPED_MATMUL = grouped
        try:
            fn()
        finally:
            ssm_module.GROUPED_MATMUL = saved
    return run


def compile_rows(device: torch.device, budget_s: float = 8.0, mode: str = "default") -> list[dict]:
    """Our training step at 3 assets under torch.compile (GPU only): the compiled step launched as is, and the same
    compiled step captured as one CUDA graph (what mode="reduce-overhead" does). Compile time in the note."""
    if device.type != "cuda":
        return []
    model, x, mask = _training_setup(device, MODEL_ASSETS, MODEL_BATCH)
    shape = f"{MODEL_ASSETS} assets x {MODEL_LENGTH} bars x batch {MODEL_BATCH}, fp32"
    try:
        compiled = torch.compile(lambda a, b: _training_loss(model, a, b), mode=mode)

        def train() -> None:
            model.zero_grad(set_to_none=True)
            compiled(x, mask).backward()

        started = time.perf_counter()
        train()
        torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - started
        eager = _paths(lambda: (model.zero_grad(set_to_none=True), _training_loss(model, x, mask).backward()), True)
        graphed = GraphedTrainingStep(model, compiled, x, mask)
        timings = time_interleaved({"eager": eager, "compiled": train, "graphed": graphed}, device, budget_s=budget_s)
    except Exception as error:  # noqa: BLE001 (a compiler failure of any kind is a row, not a crash)
        return [{"case": f"full model, {shape}, torch.compile(mode={mode!r})", "note": f"failed: {error}"[:300]}]
    note = f"compile {compile_s:.0f} s (first step)"
    return [{"case": f"full model, {shape}, eager", "length": MODEL_LENGTH, "fwd_bwd_ms": timings["eager"].median,
             "fwd_bwd_spread": timings["eager"].spread()},
            {"case": f"full model, {shape}, torch.compile(mode={mode!r})", "length": MODEL_LENGTH,
             "fwd_bwd_ms": timings["compiled"].median, "fwd_bwd_spread": timings["compiled"].spread(), "note": note},
            {"case": f"full model, {shape}, torch.compile(mode={mode!r}) captured as one CUDA graph",
             "length": MODEL_LENGTH, "fwd_bwd_ms": timings["graphed"].median,
             "fwd_bwd_spread": timings["graphed"].spread(), "note": note}]


def _explicit_capture(capture: Callable[[], GraphedTrainingStep]) -> Callable[[], GraphedTrainingStep]:
    """A capture made with the attention's torch path (the graph keeps the kernels it recorded)."""
    def run() -> GraphedTrainingStep:
        with explicit_attention():
            return capture()
    return run


def _full_model_rows(device: torch.device, budget_s: float = 8.0, precision: str = "") -> list[dict]:
    torch.manual_seed(0)
    config = ModelConfig(n_assets=MODEL_ASSETS, point_head=False, lead_path=False)
    model = HybridModel(config).to(device)
    peer = TransformerPeer(config).to(device)
    x = torch.randn(MODEL_BATCH, MODEL_ASSETS, MODEL_LENGTH, config.n_features, device=device)
    mask = torch.ones(MODEL_BATCH, MODEL_ASSETS, MODEL_LENGTH, dtype=torch.bool, device=device)

    def ours_forward() -> None:
        with torch.no_grad():
            model(x, mask)

    def peer_forward() -> None:
        with torch.no_grad():
            peer(x)

    def ours_train() -> None:
        model.zero_grad(set_to_none=True)
        _training_loss(model, x, mask).backward()

    def peer_train() -> None:
        peer.zero_grad(set_to_none=True)
        peer(x).sum().backward()

    model.eval(), peer.eval()
    forward = time_interleaved({"ours": ours_forward, "peer": peer_forward}, device, budget_s=budget_s)
    model.train(), peer.train()
    trains = {"ours": ours_train, "peer": peer_train}
    failed = {}
    if device.type == "cuda":  # the step as one CUDA graph, ours and the peer's alike; and ours before
        trains["ours_plain"] = _explicit(_paths(ours_train, False))
        trains["ours_explicit"] = _explicit(ours_train)
        for key, capture in (("ours_graph", lambda: GraphedTrainingStep(
                                 model, lambda a, b: _training_loss(model, a, b), x, mask)),
                             ("ours_graph_explicit", _explicit_capture(lambda: GraphedTrainingStep(
                                 model, lambda a, b: _training_loss(model, a, b), x, mask))),
                             ("peer_graph", lambda: GraphedTrainingStep(peer, lambda a: peer(a).sum(), x))):
            try:
                trains[key] = capture()
            except RuntimeError as error:  # a capture this build cannot make: a row that says so
                failed[key] = f"capture failed: {error}"[:200]
    train = time_interleaved(trains, device, budget_s=budget_s)
    shape = f"{MODEL_ASSETS} assets x {MODEL_LENGTH} bars x batch {MODEL_BATCH}" + (f", {precision}" if precision else "")
    peer_name = f"{TRANSFORMER_LAYERS}-layer causal Transformer, same width, FF {FF_MULT}x"
    on_gpu = device.type == "cuda"
    rows = [
        {"case": f"full model, {shape}" + (", eager, grouped per-asset matmuls, fused attention" if on_gpu else ""),
             "length": MODEL_LENGTH, "parameters": f"{model.num_parameters():,}",
             "fwd_ms": forward["ours"].median, "fwd_spread": forward["ours"].spread(), "fwd_bwd_ms": train["ours"].median,
             "fwd_bwd_spread": train["ours"].spread(), "note": f"pattern {'/'.join(config.layer_pattern)}"},
        {"case": f"{peer_name}, {shape}" + (", eager" if on_gpu else ""),
             "length": MODEL_LENGTH, "parameters": f"{params(peer):,}", "fwd_ms": forward["peer"].median,
             "fwd_spread": forward["peer"].spread(), "fwd_bwd_ms": train["peer"].median,
             "fwd_bwd_spread": train["peer"].spread(), "note": "per-asset streams, no cross-asset attention"},
    ]
    if on_gpu:
        before = "explicit attention (before)"
        for key, name, n in (("ours_plain", f"full model, {shape}, eager, plain per-asset matmuls, {before}", model),
                             ("ours_explicit", f"full model, {shape}, eager, grouped per-asset matmuls, {before}",
                              model),
                             ("ours_graph_explicit", f"full model, {shape}, training step as one CUDA graph, {before}",
                              model),
                             ("ours_graph", f"full model, {shape}, training step as one CUDA graph, fused attention",
                              model),
                             ("peer_graph", f"{peer_name}, {shape}, training step as one CUDA graph", peer)):
            if key in failed:
                rows.append({"case": name, "note": failed[key]})
                continue
            rows.append({"case": name, "length": MODEL_LENGTH, "parameters": f"{params(n):,}",
                         "fwd_bwd_ms": train[key].median, "fwd_bwd_spread": train[key].spread()})
    pairs = [("ours", "peer", "eager / eager")]
    if on_gpu:
        pairs += [("ours_graph_explicit", "peer_graph", "CUDA graph / CUDA graph, explicit attention (before)"),
                  ("ours_graph", "peer_graph", "CUDA graph / CUDA graph"), ("ours_graph", "peer", "CUDA graph / eager")]
    pairs = [(a, b, how) for a, b, how in pairs if a in train and b in train]
    for ours_key, peer_key, how in pairs:
        ratio = paired_ratio(train[ours_key], train[peer_key])
        rows.append({"case": f"ratio: full model / Transformer, fwd+bwd (training step), {how}"
                             f"{', ' + precision if precision else ''}", "length": MODEL_LENGTH, "ratio": ratio,
                     "budget": "<= 0.5 (issue 18, GPU)" if on_gpu else "-",
                     "result": verdict(ratio, 0.5) if on_gpu else "-"})
    return rows


def attention_rows(device: torch.device, budget_s: float = 4.0) -> list[dict]:
    """The lead-lag attention layer alone (GPU only), training pass (forward, backward of a weighted sum), fp32, at
    3 assets x batch 32 and 50 assets x batch 8 (512 bars, d_model 64, 4 heads, max_lag 8): the fused Triton kernel
    against the torch path, timed interleaved."""
    if device.type != "cuda":
        return []
    rows = []
    for assets, batch in ((MODEL_ASSETS, MODEL_BATCH), (MANY_ASSETS, MANY_BATCH)):
        torch.manual_seed(0)
        layer = LeadLagAttention(ModelConfig(n_assets=assets)).to(device).train()
        x = torch.randn(batch, MODEL_LENGTH, assets, D_MODEL, device=device, requires_grad=True)
        mask = torch.rand(batch, MODEL_LENGTH, assets, device=device) > 0.05
        upstream = torch.randn_like(x)

        def train(layer=layer, x=x, mask=mask, upstream=upstream) -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            (layer(x, mask).output * upstream).sum().backward()

        with tf32_matmuls(False):
            timings = time_interleaved({"fused": train, "explicit": _explicit(train)}, device, budget_s=budget_s)
        for key, name in (("explicit", "explicit attention (before)"), ("fused", "fused Triton attention")):
            rows.append({"case": f"lead-lag attention layer, {assets} assets x {MODEL_LENGTH} bars x batch {batch}, "
                                 f"fp32, {name}", "length": MODEL_LENGTH, "parameters": f"{params(layer):,}",
                         "fwd_bwd_ms": timings[key].median, "fwd_bwd_spread": timings[key].spread()})
        rows.append({"case": f"ratio: fused / explicit attention, {assets} assets", "length": MODEL_LENGTH,
                     "ratio": paired_ratio(timings["fused"], timings["explicit"])})
    return rows


GROUPS = ("layers", "step", "model", "many")
EXTRA_GROUPS = ("compile", "attention")  # compile: minutes of compiling; both only when asked (--only ...)
COLUMNS = ("case", "length", "parameters", "fwd_ms", "fwd_spread", "fwd_bwd_ms", "fwd_bwd_spread", "ratio",
           "budget", "result", "note")


def row_groups(device: torch.device, only: tuple[str, ...] = GROUPS) -> Iterator[list[dict]]:
    """The measurements in groups, so a caller can print each as soon as it is done (the slow ones take minutes)."""
    if "layers" in only:
        for length in LAYER_LENGTHS:
            yield layer_rows(device, length)
    if "step" in only:
        yield step_rows(device)
    if "model" in only:
        yield full_model_rows(device)
    if "many" in only:
        yield many_assets_rows(device)
    if "compile" in only:
        yield compile_rows(device)
    if "attention" in only:
        yield attention_rows(device)


def rows(device: torch.device | str) -> list[dict]:
    return [row for group in row_groups(torch.device(device)) for row in group]


def median_ms(fn: Callable[[], object], device: torch.device) -> float:
    return time_on(device, fn).median


def format_row(row: dict) -> str:
    cells = []
    for column in COLUMNS:
        value = row.get(column, "")
        cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--only", nargs="*", choices=GROUPS + EXTRA_GROUPS, default=list(GROUPS),
                        help="which groups to run (compile: torch.compile's training step, minutes to compile)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all cores, <= 4; 1 on a CPU that others share)")
    args = parser.parse_args(argv)
    configure_cpu_threads(args.threads)
    device = pick_device(args.device)
    print(f"# model benchmarks on {device_label(device)}\n\n{machine_line(device)}\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    for group in row_groups(device, tuple(args.only)):
        for row in group:
            print(format_row(row), flush=True)


if __name__ == "__main__":
    main()
