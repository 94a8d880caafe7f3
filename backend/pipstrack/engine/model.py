"""The PIPs network ("Particle Video Revisited", Harley et al., ECCV 2022).

Written from ../shared/docs/pips-model.md so that the authors' published checkpoint
loads with ``strict=True`` and gives the same trajectories. The sizes are configurable
(:class:`PipsConfig`) so that pipstrack's own default model can be a narrower network
with the same structure; the defaults are the official sizes.

Two entry points:
- ``model(xys, rgbs, iters)``: the whole network on one window, as the authors call it.
- ``model.encode(rgbs)`` + ``model.refine(fmaps, xys, iters, feat_init)``: the same
  computation split so the tracker encodes every frame of a long clip only once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class PipsConfig:
    """Network sizes. The defaults are those of the official checkpoint."""

    stride: int = 4
    window: int = 8  # S, frames per window
    latent_dim: int = 128
    encoder_widths: tuple[int, int, int, int] = (64, 96, 128, 128)
    encoder_hidden: int = 256
    mixer_dim: int = 512
    mixer_depth: int = 12
    corr_levels: int = 4
    corr_radius: int = 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_widths"] = list(self.encoder_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PipsConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        d = dict(d)
        if "encoder_widths" in d:
            d["encoder_widths"] = tuple(int(w) for w in d["encoder_widths"])
        return cls(**d)


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = _instance_norm(cout)
        self.norm2 = _instance_norm(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and cin == cout:
            self.downsample = None
        else:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), _instance_norm(cout))

    def forward(self, x):
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class Encoder(nn.Module):
    """Per-frame feature encoder: multi-scale residual features fused at 1/stride."""

    def __init__(self, cfg: PipsConfig):
        super().__init__()
        self.stride = cfg.stride
        w = cfg.encoder_widths
        self.conv1 = nn.Conv2d(3, w[0], 7, stride=2, padding=3)
        self.norm1 = _instance_norm(w[0])
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(w[0], w[0], 1), ResidualBlock(w[0], w[0], 1))
        self.layer2 = nn.Sequential(ResidualBlock(w[0], w[1], 2), ResidualBlock(w[1], w[1], 1))
        self.layer3 = nn.Sequential(ResidualBlock(w[1], w[2], 2), ResidualBlock(w[2], w[2], 1))
        self.layer4 = nn.Sequential(ResidualBlock(w[2], w[3], 2), ResidualBlock(w[3], w[3], 1))
        self.conv2 = nn.Conv2d(sum(w), cfg.encoder_hidden, 3, padding=1)
        self.norm2 = _instance_norm(cfg.encoder_hidden)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(cfg.encoder_hidden, cfg.latent_dim, 1)

    def forward(self, x):
        H, W = x.shape[-2:]
        size = (H // self.stride, W // self.stride)
        x = self.relu1(self.norm1(self.conv1(x)))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        feats = [F.interpolate(t, size, mode="bilinear", align_corners=True) for t in (a, b, c, d)]
        x = self.relu2(self.norm2(self.conv2(torch.cat(feats, dim=1))))
        return self.conv3(x)


class PreNormResidual(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x)) + x


def _feed_forward(dim: int, hidden: int, layer) -> nn.Sequential:
    # Indices 0 and 3 are what the checkpoint names (1: GELU, 2 and 4: dropout slots).
    return nn.Sequential(layer(dim, hidden), nn.GELU(), nn.Identity(), layer(hidden, dim), nn.Identity())


class MeanOverTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


def mlp_mixer(S: int, input_dim: int, dim: int, output_dim: int, depth: int, expansion: int = 4) -> nn.Sequential:
    """MLP-Mixer over the S time tokens of one point: token mixing is a 1x1 Conv1d across time."""

    def over_time(cin, cout):
        return nn.Conv1d(cin, cout, kernel_size=1)

    blocks = [
        nn.Sequential(
            PreNormResidual(dim, _feed_forward(S, S * expansion, over_time)),
            PreNormResidual(dim, _feed_forward(dim, dim * expansion, nn.Linear)),
        )
        for _ in range(depth)
    ]
    return nn.Sequential(
        nn.Linear(input_dim, dim), *blocks, nn.LayerNorm(dim), MeanOverTokens(), nn.Linear(dim, output_dim)
    )


class DeltaBlock(nn.Module):
    def __init__(self, cfg: PipsConfig):
        super().__init__()
        self.S = cfg.window
        self.latent_dim = cfg.latent_dim
        corr_dim = cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2
        input_dim = cfg.latent_dim + corr_dim + 64 * 3 + 3
        self.to_delta = mlp_mixer(self.S, input_dim, cfg.mixer_dim, self.S * (cfg.latent_dim + 2), cfg.mixer_depth)

    def forward(self, ffeats, fcorrs, flows):
        x = torch.cat([ffeats, fcorrs, motion_embedding(flows, 64)], dim=2)
        return self.to_delta(x).reshape(x.shape[0], self.S, self.latent_dim + 2)


def motion_embedding(xyt: torch.Tensor, channels: int) -> torch.Tensor:
    """Sin/cos embedding of (x, y, t) with the raw values appended: (..., 3*channels + 3)."""
    freqs = torch.arange(0, channels, 2, device=xyt.device, dtype=xyt.dtype) * (1000.0 / channels)
    parts = []
    for i in range(3):
        v = xyt[..., i : i + 1] * freqs
        emb = torch.stack([torch.sin(v), torch.cos(v)], dim=-1).flatten(-2)  # channels 2j, 2j+1
        parts.append(emb)
    return torch.cat(parts + [xyt], dim=-1)


def sample_features(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of fmap (B,C,H,W) at xy (B,N,2) in map units, edge-replicated: (B,N,C)."""
    B, C, H, W = fmap.shape
    x, y = xy[..., 0], xy[..., 1]
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    x1, y1 = x0 + 1, y0 + 1
    wa = (x1 - x) * (y1 - y)
    wb = (x1 - x) * (y - y0)
    wc = (x - x0) * (y1 - y)
    wd = (x - x0) * (y - y0)
    flat = fmap.reshape(B, C, H * W)

    def gather(xi, yi):
        xi = xi.clamp(0, W - 1).long()
        yi = yi.clamp(0, H - 1).long()
        idx = (yi * W + xi).unsqueeze(1).expand(B, C, xi.shape[1])
        return torch.gather(flat, 2, idx)  # B,C,N

    out = (
        wa.unsqueeze(1) * gather(x0, y0)
        + wb.unsqueeze(1) * gather(x0, y1)
        + wc.unsqueeze(1) * gather(x1, y0)
        + wd.unsqueeze(1) * gather(x1, y1)
    )
    return out.permute(0, 2, 1)


def _grid_offsets(radius: int, device, dtype=torch.float32) -> torch.Tensor:
    # (2r+1)^2 offsets, row-major over (a, b) with the sample at (x + a, y + b): x offset slowest.
    d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    a, b = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([a, b], dim=-1).reshape(-1, 2)


class Pips(nn.Module):
    def __init__(self, stride: int | None = None, config: PipsConfig | None = None):
        super().__init__()
        cfg = config or PipsConfig()
        if stride is not None and stride != cfg.stride:
            cfg = PipsConfig(**{**asdict(cfg), "stride": stride})
        self.config = cfg
        self.S = cfg.window
        self.stride = cfg.stride
        self.latent_dim = cfg.latent_dim
        self.fnet = Encoder(cfg)
        self.delta_block = DeltaBlock(cfg)
        self.norm = nn.GroupNorm(1, cfg.latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(cfg.latent_dim, 1))

    # -- split entry points -------------------------------------------------------
    def encode(self, rgbs: torch.Tensor) -> torch.Tensor:
        """(F,3,H,W) float 0..255 -> feature maps (F,C,H//stride,W//stride)."""
        return self.fnet(2 * (rgbs / 255.0) - 1.0)

    def initial_features(self, fmap0: torch.Tensor, xys: torch.Tensor) -> torch.Tensor:
        """Target features (B,N,C) sampled at xys (B,N,2, pixels) on frame maps (B,C,h,w)."""
        return sample_features(fmap0, xys / float(self.stride))

    def pyramid(self, fmaps: torch.Tensor) -> list[torch.Tensor]:
        """The correlation pyramid of maps (F,C,h,w): the maps, then each level pooled 2x from
        the one before. Each frame's levels depend on that frame alone, so a caller that sees a
        frame in many windows can pool it once (the tracker keeps them with the maps)."""
        levels = [fmaps]
        for _ in range(self.config.corr_levels - 1):
            levels.append(F.avg_pool2d(levels[-1], 2, stride=2))
        return levels

    def refine(self, fmaps, xys, iters=6, feat_init=None, coords_init=None, lock_first=True, pyramid=None):
        """Iterative refinement on pre-encoded maps.

        fmaps (B,S,C,h,w); xys (B,N,2) pixels on frame 0. ``pyramid``, if given, is
        :meth:`pyramid` of the maps with its levels shaped (B*S,C,h_i,w_i) (else it is pooled
        here). Returns (list of per-iteration coords (B,S,N,2) in pixels, visibility logits
        (B,S,N), the target feature (B,N,C)).
        """
        B, S, C, h, w = fmaps.shape
        N = xys.shape[1]
        coords0 = xys / float(self.stride)
        if coords_init is None:
            coords = coords0.reshape(B, 1, N, 2).repeat(1, S, 1, 1)
        else:
            coords = coords_init / float(self.stride)
        ffeat = sample_features(fmaps[:, 0], coords0) if feat_init is None else feat_init
        ffeats = ffeat.unsqueeze(1).repeat(1, S, 1, 1)  # B,S,N,C

        if pyramid is None:
            pyramid = self.pyramid(fmaps.reshape(B * S, C, h, w))
        offsets = _grid_offsets(self.config.corr_radius, fmaps.device, fmaps.dtype)
        times = torch.linspace(0, S, S, device=fmaps.device, dtype=fmaps.dtype).reshape(1, S, 1).repeat(B * N, 1, 1)
        scale = 1.0 / math.sqrt(C)

        predictions = []
        for _ in range(iters):
            coords = coords.detach()
            fcorrs = self._local_correlation(pyramid, ffeats, coords, offsets, scale)
            fcorrs = fcorrs.permute(0, 2, 1, 3).reshape(B * N, S, -1)
            flows = (coords - coords[:, 0:1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flows = torch.cat([flows, times], dim=2)
            ffeats_ = ffeats.permute(0, 2, 1, 3).reshape(B * N, S, C)
            delta = self.delta_block(ffeats_, fcorrs, flows)
            delta_coords = delta[:, :, :2]
            delta_feats = delta[:, :, 2:].reshape(B * N * S, C)
            ffeats_ = self.ffeat_updater(self.norm(delta_feats)) + ffeats_.reshape(B * N * S, C)
            ffeats = ffeats_.reshape(B, N, S, C).permute(0, 2, 1, 3)
            coords = coords + delta_coords.reshape(B, N, S, 2).permute(0, 2, 1, 3)
            if lock_first:
                coords = torch.cat([coords0.unsqueeze(1), coords[:, 1:]], dim=1)
            predictions.append(coords * self.stride)
        vis = self.vis_predictor(ffeats.reshape(B * S * N, C)).reshape(B, S, N)
        return predictions, vis, ffeat

    def _local_correlation(self, pyramid, ffeats, coords, offsets, scale):
        """Correlation of each point's feature with the maps on a (2r+1)^2 grid per level.

        The authors build the full correlation volume (every point against every map
        position) and sample it bilinearly. Sampling is linear, so sampling the maps
        and then taking the dot product gives the same numbers (to float rounding) at a
        fraction of the cost and memory: (2r+1)^2 positions per level instead of h*w.
        """
        B, S, N, C = ffeats.shape
        K = offsets.shape[0]
        out = []
        for i, maps in enumerate(pyramid):
            h, w = maps.shape[-2:]
            pts = coords.reshape(B * S, N, 1, 2) / 2**i + offsets.reshape(1, 1, K, 2)
            # align_corners=True: -1 and 1 are the centres of the edge pixels; zeros outside.
            gx = 2 * pts[..., 0] / max(w - 1, 1) - 1
            gy = 2 * pts[..., 1] / max(h - 1, 1) - 1
            grid = torch.stack([gx, gy], dim=-1)  # BS,N,K,2
            sampled = F.grid_sample(maps, grid, align_corners=True, padding_mode="zeros")  # BS,C,N,K
            sampled = sampled.permute(0, 2, 3, 1).reshape(B, S, N, K, C)
            out.append((sampled * ffeats.unsqueeze(3)).sum(-1) * scale)
        return torch.cat(out, dim=-1)

    # -- the authors' call ----------------------------------------------------------
    def forward(self, xys, rgbs, iters=6, feat_init=None, coords_init=None):
        """xys (B,N,2) pixels on frame 0, rgbs (B,S,3,H,W) 0..255 -> (coords per iteration, vis logits)."""
        B, S, _, H, W = rgbs.shape
        fmaps = self.encode(rgbs.reshape(B * S, 3, H, W))
        fmaps = fmaps.reshape(B, S, *fmaps.shape[1:])
        predictions, vis, _ = self.refine(fmaps, xys, iters, feat_init=feat_init, coords_init=coords_init)
        return predictions, vis
