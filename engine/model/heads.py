"""Multi-task forecast heads, one set per asset and horizon: return quantiles, P(up) logit, log volatility, and
(with ModelConfig.point_head) the conditional mean of the return, trained on squared error: the point forecast
that MSE scores (the median the pinball loss trains is a different, noisier estimate of the centre)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import ModelConfig
from engine.model.ssm import PerAssetLinear


def quantile_offset_matrix(n_quantiles: int, anchor: int) -> Tensor:
    """(Q, Q) matrix M of 0/+1/-1 such that q = raw[anchor] + softplus(raw) @ M is monotone_quantiles' result:
    column i > anchor sums the gaps anchor+1..i, column i < anchor subtracts the gaps i..anchor-1, column anchor
    is all zeros (so slot `anchor` is exactly the raw median)."""
    matrix = torch.zeros(n_quantiles, n_quantiles)
    for i in range(n_quantiles):
        for j in range(n_quantiles):
            if anchor < j <= i:
                matrix[j, i] = 1.0
            elif i <= j < anchor:
                matrix[j, i] = -1.0
    return matrix


def monotone_quantiles(raw: Tensor, anchor: int, offsets: Tensor | None = None) -> Tensor:
    """Turn free outputs into quantiles that cannot cross.

    raw (..., Q) -> (..., Q): slot `anchor` (the level nearest the median) is taken as is; each level above it is
    the previous one plus softplus(raw) >= 0, each level below it the next one minus softplus(raw). Anchoring at the
    median keeps the centre of the fan free of the offsets' positivity bias. The cumulative sums are one small
    matmul with quantile_offset_matrix (pass it as `offsets` to skip rebuilding it): in step mode every op counts.
    """
    if offsets is None:
        offsets = quantile_offset_matrix(raw.shape[-1], anchor).to(raw)
    return raw[..., anchor : anchor + 1] + F.softplus(raw) @ offsets


# SkipPaths.span_threshold where a cut is never reached: far above any standardised feature, and finite, because
# checkpoints refuse infinite values.
SPAN_NEVER = 1e30

# What follows the Q quantile slots in each horizon's block of the projection's columns, in order; "mean" only
# with a point head.
SCALAR_OUTPUTS = ("direction_logit", "log_vol", "mean")


class ForecastHeads(nn.Module):
    """x (..., A, M) -> quantiles (..., A, H, Q), direction_logit (..., A, H), log_vol (..., A, H), mean (..., A, H)
    or None without a point head. Per horizon the projection's columns are [quantiles | logit | log-vol | mean]:
    `column` names them, for code that must address one (the per-column training scale in
    engine.training.head_scale)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_horizons, self.n_quantiles = len(config.horizons), len(config.quantiles)
        self.has_mean = bool(config.point_head)
        self.width = self.n_quantiles + 2 + int(self.has_mean)  # columns per horizon
        self.anchor = min(range(self.n_quantiles), key=lambda i: abs(config.quantiles[i] - 0.5))
        # Per-asset heads: BTC and AAPL returns live on different scales and tails.
        self.proj = PerAssetLinear(config.n_assets, config.d_model, self.n_horizons * self.width)
        # A constant, not a weight: kept out of checkpoints (persistent=False), rebuilt from the config.
        self.register_buffer("offsets", quantile_offset_matrix(self.n_quantiles, self.anchor), persistent=False)
        # ModelConfig.lead_path: a per-asset linear map from the sources' raw features summed with the first
        # attention layer's weights (per head) to a location shift per horizon, added to every quantile and to the
        # mean. Through the residual stream a leader's return reaches the heads as one of 16 features under a
        # random value projection, diluted by every other slot, and rescaled by the final norm; here it is one
        # fixed input whose coefficient the data can find, and its gradient sharpens the weights on that slot.
        self.lead = PerAssetLinear(config.n_assets, config.n_heads * config.lead_input_width, self.n_horizons,
                                   bias=False) if config.lead_path else None
        if self.lead is not None:
            nn.init.zeros_(self.lead.weight)  # starts as no shift: the data must earn it
        self.lead_width = config.n_heads * config.lead_input_width if config.lead_path else 0
        self.skips = SkipPaths(config) if config.skip_paths else None

    @property
    def n_columns(self) -> int:
        """The projection's outputs per asset: n_horizons blocks of `width` columns."""
        return self.n_horizons * self.width

    def column(self, horizon_index: int, output: str, level: int | None = None) -> int:
        """The projection's output column of one head of the horizon at `horizon_index`.

        output: "quantile" with `level` an index into config.quantiles (slot `anchor` is the median itself, the
        others are the softplus gaps of monotone_quantiles), "median" (the same as "quantile" at the anchor), or
        one of SCALAR_OUTPUTS ("mean" only with a point head)."""
        if not 0 <= horizon_index < self.n_horizons:
            raise ValueError(f"ForecastHeads.column: horizon_index {horizon_index} is outside 0..{self.n_horizons - 1}")
        if output == "median":
            offset = self.anchor
        elif output == "quantile":
            if level is None or not 0 <= level < self.n_quantiles:
                raise ValueError(f"ForecastHeads.column: a quantile needs a level in 0..{self.n_quantiles - 1}, "
                                 f"got {level}")
            offset = level
        elif output in SCALAR_OUTPUTS and (output != "mean" or self.has_mean):
            offset = self.n_quantiles + SCALAR_OUTPUTS.index(output)
        else:
            raise ValueError(f"ForecastHeads.column: no {output!r} head (these heads have quantile, median, "
                             f"{', '.join(SCALAR_OUTPUTS[:3 if self.has_mean else 2])})")
        return horizon_index * self.width + offset

    def forward(self, x: Tensor, attended: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (..., A, M) normed stream; attended (..., A, heads * F) the sources' features under the first
        attention layer's weights, read by the lead path (required when the heads have one)."""
        raw = self.proj(x).unflatten(-1, (self.n_horizons, self.width))  # (..., A, H, Q+2[+1])
        Q = self.n_quantiles
        quantiles = monotone_quantiles(raw[..., :Q], self.anchor, self.offsets.to(raw.dtype))
        mean = raw[..., self.column(0, "mean")] if self.has_mean else None  # column(0, .): the offset in a block
        log_vol = raw[..., self.column(0, "log_vol")]
        if self.lead is not None:
            if attended is None:
                raise ValueError("ForecastHeads: the lead path needs the attended input features")
            skip_inputs = attended[..., self.lead_width:]
            attended = attended[..., : self.lead_width]
            shift = self.lead(attended)  # (..., A, H)
            if self.skips is not None:
                mean_shift, vol_shift = self.skips(skip_inputs)
                shift = shift + mean_shift
                log_vol = log_vol + vol_shift
            quantiles = quantiles + shift.unsqueeze(-1)  # the whole fan moves; its gaps stay
            mean = None if mean is None else mean + shift
        return quantiles, raw[..., self.column(0, "direction_logit")], log_vol, mean


class SkipPaths(nn.Module):
    """The heads' linear skip paths (ModelConfig.skip_paths): fitted in closed form on a fold's training rows by
    engine.training.skip_fit and held fixed while the network trains, so they are buffers, not parameters.

    mean:  per target asset and horizon, a linear map of every source's ret_1 at lags 0..K (a ridge regression:
           the lead-lag a least-squares fit finds), added to every quantile and the mean, in raw return units.
           With ModelConfig.span_feature, more weights count only on the bars before a gap: a source leading by L
           bars moves a 1-bar return that spans S rows through its lags L-S..L-1, so lag k < L - 1 counts when the
           next bar is predicted to span at least L - k rows. span_weight[..., g] applies where the span feature is
           at least span_threshold[:, g], the fitted cut for "spans at least g + 2 rows" (never: SPAN_NEVER).
    vol:   per asset and horizon, a linear map of the asset's own volatility-skip features plus a constant, added
           to the log volatility (a QLIKE fit with a log link, like a HAR or GARCH recursion in logs).
    All start at zero: a model whose skips were never fitted forecasts as it would without them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        A, H, K = config.n_assets, len(config.horizons), config.max_lag
        self.n_lagged = A * (K + 1)
        self.register_buffer("mean_weight", torch.zeros(A, self.n_lagged, H))  # (A_tgt, A_src * (K+1), H)
        self.register_buffer("vol_weight", torch.zeros(A, len(config.vol_skip_features), H))  # (A, V, H)
        self.register_buffer("vol_bias", torch.zeros(A, H))  # (A, H)
        # the span feature's place among the own inputs; G = K cuts: spans of at least 2 .. K+1 rows
        self.span_position = None if config.span_feature is None else \
            list(config.vol_skip_features).index(config.span_feature)
        if self.span_position is not None:
            self.register_buffer("span_weight", torch.zeros(A, self.n_lagged, H, K))  # (A_tgt, A_src * (K+1), H, G)
            self.register_buffer("span_threshold", torch.full((A, K), SPAN_NEVER))  # (A, G) on the feature's scale

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """inputs (..., A, A_src * (K+1) + V) -> (mean shift (..., A, H), log-vol shift (..., A, H))."""
        lagged, own = inputs[..., : self.n_lagged], inputs[..., self.n_lagged:]
        mean = torch.einsum("...ai,aih->...ah", lagged, self.mean_weight.to(lagged.dtype))
        if self.span_position is not None:
            span = own[..., self.span_position]  # (..., A)
            reached = (span.unsqueeze(-1) >= self.span_threshold).to(lagged.dtype)  # (..., A, G)
            gated = torch.einsum("...ai,aihg->...ahg", lagged, self.span_weight.to(lagged.dtype))  # (..., A, H, G)
            mean = mean + (gated * reached.unsqueeze(-2)).sum(-1)
        vol = torch.einsum("...av,avh->...ah", own, self.vol_weight.to(own.dtype)) + self.vol_bias.to(own.dtype)
        return mean, vol
