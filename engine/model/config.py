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
from typing import Any

LAYER_KINDS = ("ssm", "attn")
# Keys an older ModelConfig had that now live elsewhere (a checkpoint's manifest is upgraded on load).
MOVED_KEYS = {"loss_weights": "engine.training.config.TrainConfig.loss_weights"}


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

    def __post_init__(self) -> None:
        # JSON gives lists back; keep tuples so configs compare equal after a round trip.
        self.layer_pattern = tuple(self.layer_pattern)
        self.horizons = tuple(int(h) for h in self.horizons)
        self.quantiles = tuple(float(q) for q in self.quantiles)
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        self._validate()

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
        if self.lead_path and "attn" not in self.layer_pattern:
            fail(f"lead_path reads the first attention layer, but layer_pattern {self.layer_pattern} has none "
                 "(add an 'attn' layer, or set lead_path=False)")

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
