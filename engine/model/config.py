"""The model's architecture: ModelConfig, the one dataclass every model part is built from.

Architecture only, as nanoGPT's GPTConfig: what the weights mean and how they are wired. How a model is trained
(loss weights, optimiser, windows) is engine.training.config.TrainConfig's. The defaults that concern a model part
the shipped recipe uses (point head, lead path) are that recipe's (engine.training.presets.demo_config); a
checkpoint made before a field existed is upgraded by engine.model.checkpoint's manifest migration, not by a
default here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any

LAYER_KINDS = ("ssm", "attn")
# The model a config builds (engine.model.peers.build_model): the hybrid, or a neural peer trained by the same
# recipe for comparison (engine.training.peer_presets). A peer reads len(layer_pattern) as its number of layers.
MODEL_KINDS = ("hybrid", "transformer", "lstm")
# Keys an older ModelConfig had that now live elsewhere (a checkpoint's manifest is upgraded on load).
MOVED_KEYS = {"loss_weights": "engine.training.config.TrainConfig.loss_weights"}

# ----- what the app can run ------------------------------------------------------------------------------------------
# A checkpoint's config is checked against these caps before any tensor is built (ModelConfig.check_app_limits,
# engine.model.checkpoint): a manifest asking for d_model=32768 is refused with the field, its value and the cap,
# not met with a 51 GB allocation. Training is not capped by them (a GPU may train wider), but the app will refuse
# to load what it cannot run. The shipped demo is d_model 32, d_state 8, 3 assets, 2 layers, ~34k parameters.
MAX_N_ASSETS = 256
MAX_N_FEATURES = 256
MAX_D_MODEL = 1024
MAX_D_STATE = 256
MAX_EXPAND = 8
MAX_D_CONV = 64
MAX_N_HEADS = 64
MAX_LAYERS = 32
MAX_LAG = 512  # attention look-back in bars
MAX_HORIZON = 4096  # bars ahead
MAX_N_HORIZONS = 64
MAX_N_QUANTILES = 99
MAX_PARAMETERS = 50_000_000  # 200 MB of float32 weights
# The working memory of one inference chunk (engine.model.inference runs the panel in chunks of
# INFERENCE_CHUNK_BARS bars): weights, one layer's activations, the scan's state buffers and the attention scores.
MAX_INFERENCE_BYTES = 4 * 2**30
INFERENCE_CHUNK_BARS = 2048  # engine.model.inference.InferenceConfig.chunk_size's default
SCAN_MIN_CHUNK_BARS = 16  # engine.model.scan: its state buffers hold at least this many bars

_INT_FIELDS = ("n_assets", "n_features", "d_model", "d_state", "expand", "d_conv", "dt_rank", "n_heads", "max_lag",
               "lead_features", "span_feature")
_FLOAT_FIELDS = ("dt_min", "dt_max", "dt_clamp_min", "dt_clamp_max", "dropout")
_BOOL_FIELDS = ("shared_ssm", "point_head", "lead_path", "skip_paths")
_OPTIONAL_FIELDS = ("dt_rank", "lead_features", "span_feature")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _sequence(name: str, value: Any, limit: int) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"ModelConfig: {name} must be a list, got {type(value).__name__} {_short(value)}")
    if len(value) > limit:
        raise ValueError(f"ModelConfig: {name} has {len(value)} entries, more than the app runs ({limit})")
    return tuple(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ModelConfig:
    n_assets: int = 3
    n_features: int = 16  # input features per asset per bar
    d_model: int = 64
    d_state: int = 16  # N, SSM state size per channel
    expand: int = 2  # d_inner = expand * d_model
    d_conv: int = 4
    dt_rank: int | None = None  # rank of the Delta projection; None -> ceil(d_model / 16)
    dt_min: float = 1e-3  # softplus(dt bias) starts log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1
    dt_clamp_min: float = 1e-4  # Delta at open bars stays in [dt_clamp_min, dt_clamp_max]
    dt_clamp_max: float = 1.0  # one bar of Delta=1 already forgets 63% of the slowest S4D state
    n_heads: int = 4
    max_lag: int = 8  # K: attention sees lags 0..K
    # Level 1 = the SSM layers before the first "attn"; Level 3 = what follows it. Per-asset SSM layers cost
    # ~98k parameters each at the defaults, so two of them (plus attention and heads) keep the model in the
    # 100k-300k range that trains on two CPU cores; lengthen the pattern for a GPU.
    layer_pattern: tuple[str, ...] = ("ssm", "attn", "ssm", "attn")
    shared_ssm: bool = False  # True: one set of SSM weights for all assets plus a learned asset embedding
    horizons: tuple[int, ...] = (1, 5, 20)  # bars ahead
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    dropout: float = 0.1
    # A conditional-mean head per asset and horizon (squared-error loss), used as the point forecast.
    point_head: bool = True
    # A direct linear path from the sources' features, summed with the first attention layer's weights, to the
    # forecasts' location (engine.model.lead_path, engine.model.heads.ForecastHeads.lead); needs an "attn" layer.
    lead_path: bool = True
    # How many of the leading input features the lead path reads; None: all. engine.features puts the bar
    # return (ret_1) first: 1 reads the sources' latest returns only, the channel a lead-lag moves through, so the
    # path has n_heads weights per asset and horizon to fit instead of n_heads * n_features.
    lead_features: int | None = 1
    # Which model this config builds: "hybrid" (HybridModel), or a per-asset peer (engine.model.peers): a causal
    # "transformer" over the last max_lag + 1 bars, an "lstm". Checkpoints written before the field are hybrids.
    kind: str = "hybrid"
    # Linear skip paths to the heads, fitted in closed form on each fold's training rows and then held fixed
    # (engine.model.heads.SkipPaths, engine.training.skip_fit); the network learns what they leave. Needs the lead
    # path (it carries the sources' last K bars). The mean skip reads every source's ret_1 (feature 0) at lags
    # 0..max_lag, the ridge regression a lead-lag needs; the volatility skip reads the asset's own features at
    # vol_skip_features (indices into the input features: the gap-scaled variance EWMAs and the gap), a log-link
    # QLIKE fit, the GARCH-like recursion the volatility forecast starts from. False: no skip paths (old runs).
    skip_paths: bool = False
    vol_skip_features: tuple[int, ...] = ()
    # The input feature (an index, one of vol_skip_features) that predicts how many rows the asset's next bar will
    # span: next_gap_log, learnt causally from the session calendar. Across a close an equity's next return takes
    # in the leader's moves over every closed row, so the mean skip's lags beyond the horizon count on the bars
    # before a gap (engine.model.heads.SkipPaths' span-gated weights). None: no gating (runs made before it).
    span_feature: int | None = None

    def __post_init__(self) -> None:
        # JSON gives lists back; keep tuples so configs compare equal after a round trip. Types are checked first,
        # so a config read from a file fails with the field's name rather than a TypeError deep inside a layer.
        self._check_types()
        self.layer_pattern = tuple(self.layer_pattern)
        self.horizons = tuple(int(h) for h in self.horizons)
        self.quantiles = tuple(float(q) for q in self.quantiles)
        self.vol_skip_features = tuple(int(i) for i in self.vol_skip_features)
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        self._validate()

    def _check_types(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not (_is_int(value) or (value is None and name in _OPTIONAL_FIELDS)):
                raise ValueError(f"ModelConfig: {name} must be an integer, got {_short(value)}")
        for name in _FLOAT_FIELDS:
            if not _is_real(getattr(self, name)):
                raise ValueError(f"ModelConfig: {name} must be a finite number, got {_short(getattr(self, name))}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig: {name} must be true or false, got {_short(getattr(self, name))}")
        # Sequences are capped here already: a list of a million horizons is not worth converting.
        pattern = _sequence("layer_pattern", self.layer_pattern, 10 * MAX_LAYERS)
        if not all(isinstance(kind, str) for kind in pattern):
            raise ValueError(f"ModelConfig: layer_pattern must hold {LAYER_KINDS}, got {_short(pattern)}")
        horizons = _sequence("horizons", self.horizons, 10 * MAX_N_HORIZONS)
        bad = [h for h in horizons if not (_is_int(h) or (_is_real(h) and float(h).is_integer()))]
        if bad:
            raise ValueError(f"ModelConfig: horizons must be whole numbers of bars, got {_short(bad[0])}")
        quantiles = _sequence("quantiles", self.quantiles, 10 * MAX_N_QUANTILES)
        bad = [q for q in quantiles if not _is_real(q)]
        if bad:
            raise ValueError(f"ModelConfig: quantiles must be finite numbers, got {_short(bad[0])}")
        skip_features = _sequence("vol_skip_features", self.vol_skip_features, MAX_N_FEATURES)
        if not all(_is_int(i) for i in skip_features):
            raise ValueError(f"ModelConfig: vol_skip_features must be feature indices, got {_short(skip_features)}")

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"ModelConfig: {message}")

        for name in ("n_assets", "n_features", "d_model", "d_state", "expand", "d_conv", "dt_rank", "n_heads"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_lag < 0:
            fail(f"max_lag must be >= 0, got {self.max_lag}")
        if self.d_model % self.n_heads:
            fail(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0 < self.dt_min <= self.dt_max:
            fail(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if not 0 < self.dt_clamp_min <= self.dt_min or self.dt_clamp_max < self.dt_max:
            fail(f"the Delta clamp [{self.dt_clamp_min}, {self.dt_clamp_max}] must contain [dt_min, dt_max]")
        bad_layers = [kind for kind in self.layer_pattern if kind not in LAYER_KINDS]
        if not self.layer_pattern or bad_layers:
            fail(f"layer_pattern must be a non-empty sequence of {LAYER_KINDS}, got {self.layer_pattern}")
        if not self.horizons or min(self.horizons) < 1:
            fail(f"horizons must be positive bar counts, got {self.horizons}")
        q = self.quantiles
        if not q or any(not 0 < level < 1 for level in q) or any(a >= b for a, b in zip(q, q[1:])):
            fail(f"quantiles must be strictly increasing levels in (0, 1), got {q}")
        if not 0 <= self.dropout < 1:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lead_features is not None and not 1 <= self.lead_features <= self.n_features:
            fail(f"lead_features must be in 1..n_features={self.n_features}, got {self.lead_features}")
        if self.kind not in MODEL_KINDS:
            fail(f"kind must be one of {MODEL_KINDS}, got {_short(self.kind)}")
        if self.kind != "hybrid" and (self.lead_path or self.shared_ssm):
            fail(f"a {self.kind} peer has no lead path or shared SSM weights (set lead_path=False, shared_ssm=False)")
        if self.skip_paths and not self.lead_path:
            fail("skip_paths read the sources' last bars through the lead path: set lead_path=True")
        if any(not 0 <= i < self.n_features for i in self.vol_skip_features):
            fail(f"vol_skip_features must index the {self.n_features} input features, got {self.vol_skip_features}")
        if self.span_feature is not None and (not self.skip_paths or self.span_feature not in self.vol_skip_features):
            fail(f"span_feature {self.span_feature} gates the mean skip path on one of the asset's own skip inputs: "
                 f"set skip_paths=True and list it in vol_skip_features {self.vol_skip_features}")
        if self.lead_path and "attn" not in self.layer_pattern:
            fail(f"lead_path reads the first attention layer, but layer_pattern {self.layer_pattern} has none "
                 "(add an 'attn' layer, or set lead_path=False)")

    def check_app_limits(self) -> None:
        """ValueError naming the field, its value and the cap when the app could not run this model (the caps at
        the top of this module); a checkpoint's config passes this before anything is built."""
        caps = {"n_assets": MAX_N_ASSETS, "n_features": MAX_N_FEATURES, "d_model": MAX_D_MODEL,
                "d_state": MAX_D_STATE, "expand": MAX_EXPAND, "d_conv": MAX_D_CONV, "n_heads": MAX_N_HEADS,
                "max_lag": MAX_LAG, "dt_rank": self.d_model}
        for name, cap in caps.items():
            if getattr(self, name) > cap:
                raise ValueError(f"ModelConfig: {name}={getattr(self, name)} is more than the app runs "
                                 f"({name} <= {cap})")
        counts = {"layer_pattern": (len(self.layer_pattern), MAX_LAYERS, "layers"),
                  "horizons": (len(self.horizons), MAX_N_HORIZONS, "horizons"),
                  "quantiles": (len(self.quantiles), MAX_N_QUANTILES, "quantile levels")}
        for name, (count, cap, what) in counts.items():
            if count > cap:
                raise ValueError(f"ModelConfig: {name} has {count} {what}, more than the app runs (<= {cap})")
        if max(self.horizons) > MAX_HORIZON:
            raise ValueError(f"ModelConfig: horizon {max(self.horizons)} bars is more than the app runs "
                             f"(horizons <= {MAX_HORIZON} bars)")
        parameters = self.estimated_parameters()
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"ModelConfig: the model would have {parameters:,} parameters, more than the app runs "
                             f"(<= {MAX_PARAMETERS:,})")
        memory = self.estimated_inference_bytes()
        if memory > MAX_INFERENCE_BYTES:
            raise ValueError(f"ModelConfig: running the model would take about {memory / 2**30:.1f} GiB per "
                             f"{INFERENCE_CHUNK_BARS}-bar chunk, more than the app allows "
                             f"({MAX_INFERENCE_BYTES / 2**30:.0f} GiB)")

    def estimated_parameters(self) -> int:
        """The parameter count of the HybridModel this config builds, from the sizes alone (nothing allocated);
        tests/engine/test_checkpoint_hardening.py checks it against HybridModel.num_parameters."""
        A, F, M, N, Di, R = self.n_assets, self.n_features, self.d_model, self.d_state, self.d_inner, self.dt_rank
        w = 1 if self.shared_ssm else A  # weight sets of an SSM layer
        ssm = w * (M + M * 2 * Di + Di * self.d_conv + Di + Di * (R + 2 * N) + R * Di + Di + Di * N + Di + Di * M)
        attention = (self.max_lag + 1) * M + A * M + M + 3 * M * M + M * M
        n_ssm = sum(kind == "ssm" for kind in self.layer_pattern)
        n_attn = len(self.layer_pattern) - n_ssm
        columns = len(self.horizons) * (len(self.quantiles) + 2 + int(self.point_head))
        heads = A * M * columns + A * columns
        lead = A * self.n_heads * self.lead_input_width * len(self.horizons) if self.lead_path else 0
        embedding = A * M if self.shared_ssm else 0
        # the skip paths (heads.SkipPaths) are fitted in closed form and held as buffers, not parameters
        return A * F * M + A * M + embedding + n_ssm * ssm + n_attn * attention + A * M + heads + lead

    def estimated_inference_bytes(self, chunk_bars: int = INFERENCE_CHUNK_BARS) -> int:
        """A rough upper estimate (float32) of the memory one inference chunk needs: the weights, one layer's
        activations for every bar of the chunk, the scan's state buffers and the attention's keys and scores."""
        A, M, N, Di, R, H = self.n_assets, self.d_model, self.d_state, self.d_inner, self.dt_rank, self.n_heads
        window = self.max_lag + 1
        per_bar = A * (8 * Di + R + 2 * N + 6 * M)  # projections, conv, gate, Delta, outputs, residual stream
        if "attn" in self.layer_pattern:
            per_bar += 2 * A * window * M + 4 * H * A * A * window  # key/value windows; scores, softmax, weights
        scan = 2 * SCAN_MIN_CHUNK_BARS * A * Di * N
        return 4 * (self.estimated_parameters() + chunk_bars * per_bar + scan)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def lead_input_width(self) -> int:
        return self.n_features if self.lead_features is None else self.lead_features

    @property
    def embedding_dim(self) -> int:
        return 2 * self.d_state + self.d_inner  # see engine.model.ssm.regime_embedding

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists in JSON; from_dict restores them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            moved = [f"{key} is now {MOVED_KEYS[key]}" for key in unknown if key in MOVED_KEYS]
            hint = f" ({'; '.join(moved)})" if moved else ""
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}{hint}")
        return cls(**data)
