"""Built-in denoising networks: `model(z, t) -> out`, t of shape (B,) in [0, 1].

- `ResidualMLP` for flat data (B, D), e.g. the 2-D toy sets.
- `UNet` for images (B, C, H, W), e.g. the 8x8 digits: one down/up level, GroupNorm, the time
  embedding added in every residual block (the [DDPM] UNet, scaled down).

The output has the input's shape, or twice its channels (axis 1) for `param="both"` (x half first,
eps half second; docs/spec.md section 2). Weights are initialised deterministically from `seed`; the last
layer starts at zero, so an untrained `v` or `x` model predicts `x_hat = alpha_t * z_t` or 0.

Conditional networks (docs/spec.md section 8): with `num_classes`, `model(z, t, c)` takes class
labels c (B,) in [0, num_classes), or -1 (`NULL_LABEL`, also what an omitted c means) for the
unconditional prediction: a label embedding with one extra (null) row is added to the time
embedding. With `w_conditioned` (the guided student of [GD]), `model(z, t, c, w)` also takes the
guidance weight w: a Fourier embedding of w, through an MLP whose output layer starts at zero, is
added there too, so that `w_conditioned_from(teacher)` starts as the teacher's conditional model.
The modules these options add are created after all others, so an unconditional network keeps its
weights (and outputs) for a given seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import PARAMS
from ..parameterizations import NULL_LABEL


def output_channels(channels: int, param: str) -> int:
    """Channels of the network output: doubled for param='both' (docs/spec.md section 2)."""
    if param not in PARAMS:
        raise ValueError(f"param must be one of {PARAMS}, got {param!r}")
    return 2 * channels if param == "both" else channels


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of `1000 * t` ([DDPM] Appendix B, Transformer positional encoding).

    t: (B,) -> (B, dim): `[cos(1000 t f_k), sin(1000 t f_k)]`, `f_k = max_period^(-k / (dim/2))`.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def guidance_embedding(w: Tensor, dim: int, min_freq: float = 0.25, max_freq: float = 64.0) -> Tensor:
    """Fourier embedding of the guidance weight ([GD] Section 4.1): w: (B,) -> (B, dim),
    `[cos(w f_k), sin(w f_k)]` with `f_k` geometric from `min_freq` to `max_freq` (w in [0, 4] and
    beyond: the lowest frequency does not wrap below w = 25)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half, device=w.device))
    angles = w.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _check_t(z: Tensor, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    if t.ndim == 0:
        t = t.expand(z.shape[0])
    if t.shape != (z.shape[0],):
        raise ValueError(f"t must have shape ({z.shape[0]},) (the batch of z), got {tuple(t.shape)}")
    return t


class _TimeMLP(nn.Module):
    def __init__(self, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.net = nn.Sequential(nn.Linear(emb_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.net(timestep_embedding(t, self.emb_dim))


class _GuidanceMLP(nn.Module):
    """`guidance_embedding(w)` -> Linear -> SiLU -> Linear, the last layer zero-initialised: the
    embedding starts at exactly 0 for every w."""

    def __init__(self, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.net = nn.Sequential(nn.Linear(emb_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, w: Tensor) -> Tensor:
        return self.net(guidance_embedding(w, self.emb_dim))


class _Conditioning(nn.Module):
    """What a network adds to its time embedding: a label embedding (`num_classes` + 1 rows, the
    last for the null label) and, if `w_conditioned`, the guidance MLP."""

    def __init__(self, num_classes: int, w_conditioned: bool, emb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label = nn.Embedding(num_classes + 1, out_dim)
        self.guidance = _GuidanceMLP(emb_dim, out_dim) if w_conditioned else None

    def forward(self, emb: Tensor, z: Tensor, c: Tensor | None, w: Tensor | float | None) -> Tensor:
        emb = emb + self.label(_label_index(z, c, self.num_classes))
        if self.guidance is not None:
            if w is None:
                raise ValueError("w is required: this network is w-conditioned (model(z, t, c, w))")
            emb = emb + self.guidance(_check_w(z, w))
        elif w is not None:
            raise ValueError("w given, but this network is not w-conditioned (w_conditioned=False)")
        return emb


def _label_index(z: Tensor, c: Tensor | None, num_classes: int) -> Tensor:
    """Embedding rows of the labels c (B,): c itself, and num_classes for the null label -1 (or an
    omitted c). Labels on the CPU are range-checked; on a GPU a bad label fails in the embedding."""
    if c is None:
        return torch.full((z.shape[0],), num_classes, dtype=torch.long, device=z.device)
    if not isinstance(c, Tensor) or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(
            f"c must be an integer tensor of labels, got {getattr(c, 'dtype', type(c).__name__)}"
        )
    if c.shape != (z.shape[0],):
        raise ValueError(f"c must have shape ({z.shape[0]},) (the batch of z), got {tuple(c.shape)}")
    if c.device.type == "cpu" and bool(((c < NULL_LABEL) | (c >= num_classes)).any()):
        raise ValueError(f"c must hold labels in [0, {num_classes}) or -1 (null), got {c.tolist()}")
    return torch.where(c == NULL_LABEL, num_classes, c).to(device=z.device, dtype=torch.long)


def _check_w(z: Tensor, w: Tensor | float) -> Tensor:
    if not isinstance(w, Tensor):
        w = torch.as_tensor(w, dtype=torch.float32, device=z.device)
    if w.ndim == 0:
        w = w.expand(z.shape[0])
    if w.shape != (z.shape[0],):
        raise ValueError(
            f"w must be a float or of shape ({z.shape[0]},) (the batch of z), got {tuple(w.shape)}"
        )
    if w.device.type == "cpu" and not bool((torch.isfinite(w) & (w >= 0)).all()):
        raise ValueError(f"w must be finite and >= 0, got {w.tolist()}")
    return w


def _conditioning_options(num_classes: int | None, w_conditioned: bool) -> dict:
    """The config entries of the conditioning options (none for an unconditional network)."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be None or a positive integer, got {num_classes!r}")
    if w_conditioned and num_classes is None:
        raise ValueError("w_conditioned needs num_classes: the guided student is a conditional network")
    options = {} if num_classes is None else {"num_classes": num_classes}
    return options | ({"w_conditioned": True} if w_conditioned else {})


class _MLPBlock(nn.Module):
    def __init__(self, hidden: int, emb: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(F.silu(r))


class ResidualMLP(nn.Module):
    """Residual MLP: `z (B, *shape), t (B,) -> out (B, *shape)`, or twice the channels (axis 1)
    for param='both'. Examples are flattened to D = prod(shape) features, so it also serves
    small images (8x8 digits train ~20x faster on a CPU than with the UNet).

    in-projection, `depth` pre-norm residual blocks (the time embedding added inside each),
    out-projection (zero-initialised), reshaped back. Conditioning (`num_classes`, `w_conditioned`)
    as in the module docstring: `model(z, t, c=None, w=None)`.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 64,
        param: str = "v",
        out_channels: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        w_conditioned: bool = False,
    ) -> None:
        super().__init__()
        options = _conditioning_options(num_classes, w_conditioned)
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a positive int or tuple of positive ints, got {shape!r}")
        for name, value in (("hidden", hidden), ("depth", depth), ("emb_dim", emb_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        out = output_channels(shape[0], param) if out_channels is None else int(out_channels)
        dim = math.prod(shape)
        self.shape = shape
        self.out_shape = (out,) + shape[1:]
        self.config = (
            dict(kind="mlp", shape=list(shape), hidden=hidden, depth=depth, emb_dim=emb_dim, out_channels=out)
            | options
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.time = _TimeMLP(emb_dim, hidden)
            self.inp = nn.Linear(dim, hidden)
            self.blocks = nn.ModuleList(_MLPBlock(hidden, hidden) for _ in range(depth))
            self.norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, math.prod(self.out_shape))
            self.cond = (
                None if num_classes is None else _Conditioning(num_classes, w_conditioned, emb_dim, hidden)
            )
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, z: Tensor, t: Tensor, c: Tensor | None = None, w: Tensor | float | None = None
    ) -> Tensor:
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(
                f"z must have shape (B, {', '.join(map(str, self.shape))}), got {tuple(z.shape)}"
            )
        emb = _embed(self, z, t, c, w)
        h = self.inp(z.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm(h))).reshape((z.shape[0],) + self.out_shape)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> conv, + skip."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        r = self.conv2(F.silu(self.norm2(r)))
        return self.skip(h) + r


class UNet(nn.Module):
    """A small UNet for images: `z (B, C, H, W), t (B,) -> out (B, C', H, W)`, C' = C or 2C ('both').

    Level 1 (H x W, `ch` channels): `blocks` residual blocks; stride-2 conv down; level 2
    (ceil(H/2) x ceil(W/2), `2*ch`): `blocks` residual blocks; upsample, concatenate the level-1
    skip, `blocks` residual blocks; GroupNorm -> SiLU -> conv out (zero-initialised).
    Any H, W >= 2 work (the upsampled map is resized to the skip's size). Conditioning
    (`num_classes`, `w_conditioned`) as in the module docstring: `model(z, t, c=None, w=None)`.
    """

    def __init__(
        self,
        channels: int = 1,
        ch: int = 32,
        blocks: int = 1,
        emb_dim: int = 64,
        param: str = "v",
        out_channels: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        w_conditioned: bool = False,
    ) -> None:
        super().__init__()
        options = _conditioning_options(num_classes, w_conditioned)
        for name, value in (("channels", channels), ("ch", ch), ("blocks", blocks), ("emb_dim", emb_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        out = output_channels(channels, param) if out_channels is None else int(out_channels)
        self.config = (
            dict(kind="unet", channels=channels, ch=ch, blocks=blocks, emb_dim=emb_dim, out_channels=out)
            | options
        )
        emb = 4 * ch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.time = _TimeMLP(emb_dim, emb)
            self.inp = nn.Conv2d(channels, ch, 3, padding=1)
            self.down1 = nn.ModuleList(_ResBlock(ch, ch, emb) for _ in range(blocks))
            self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
            self.mid = nn.ModuleList(_ResBlock(2 * ch, 2 * ch, emb) for _ in range(blocks))
            self.up = nn.Conv2d(2 * ch, ch, 3, padding=1)
            self.up1 = nn.ModuleList(_ResBlock(2 * ch if i == 0 else ch, ch, emb) for i in range(blocks))
            self.norm = nn.GroupNorm(_groups(ch), ch)
            self.out = nn.Conv2d(ch, out, 3, padding=1)
            self.cond = (
                None if num_classes is None else _Conditioning(num_classes, w_conditioned, emb_dim, emb)
            )
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, z: Tensor, t: Tensor, c: Tensor | None = None, w: Tensor | float | None = None
    ) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.config["channels"]:
            raise ValueError(f"z must have shape (B, {self.config['channels']}, H, W), got {tuple(z.shape)}")
        emb = _embed(self, z, t, c, w)
        h = self.inp(z)
        for block in self.down1:
            h = block(h, emb)
        skip = h
        h = self.down(h)
        for block in self.mid:
            h = block(h, emb)
        h = self.up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
        h = torch.cat([h, skip], dim=1)
        for block in self.up1:
            h = block(h, emb)
        return self.out(F.silu(self.norm(h)))


def _embed(
    net: ResidualMLP | UNet, z: Tensor, t: Tensor, c: Tensor | None, w: Tensor | float | None
) -> Tensor:
    """The time embedding, plus the label and guidance embeddings of a conditional network."""
    emb = net.time(_check_t(z, t))
    if net.cond is not None:
        return net.cond(emb, z, c, w)
    if c is not None or w is not None:
        raise ValueError("c (or w) given, but this network is unconditional (num_classes=None)")
    return emb


MODELS = ("mlp", "unet")


def build_model(
    kind: str, data_shape: tuple[int, ...], param: str = "v", seed: int = 0, **kwargs: int
) -> nn.Module:
    """The built-in network for data of per-example shape `data_shape`.

    kind: 'mlp' (any shape, flattened) or 'unet' (images (C, H, W)). Extra keyword arguments go to
    the constructor (hidden, depth, emb_dim for 'mlp'; ch, blocks, emb_dim for 'unet').
    """
    if kind not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {kind!r}")
    shape = tuple(int(s) for s in data_shape)
    if kind == "mlp":
        return ResidualMLP(shape, param=param, seed=seed, **kwargs)
    if len(shape) != 3:
        raise ValueError(f"model 'unet' needs images (N, C, H, W), got examples of shape {shape}")
    return UNet(shape[0], param=param, seed=seed, **kwargs)


def model_from_config(config: dict, seed: int = 0) -> nn.Module:
    """Rebuild a built-in network from its `.config` dict (as saved next to a checkpoint)."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "mlp":
        return ResidualMLP(seed=seed, **cfg)
    if kind == "unet":
        return UNet(seed=seed, **cfg)
    raise ValueError(f"config['kind'] must be 'mlp' or 'unet', got {kind!r}")


def w_conditioned_from(teacher: nn.Module, seed: int = 0) -> nn.Module:
    """The guided student of [GD] stage 1 (docs/spec.md section 8): a w-conditioned copy of the
    conditional built-in network `teacher`, with the teacher's weights (on its device and dtype) and
    a new guidance MLP whose output layer is zero, so that `student(z, t, c, w) == teacher(z, t, c)`
    exactly for every w until it is trained. `seed` initialises the guidance MLP's first layer."""
    config = getattr(teacher, "config", {})
    if "num_classes" not in config:
        raise ValueError("teacher must be a conditional built-in network (its config has num_classes)")
    if config.get("w_conditioned"):
        raise ValueError("teacher is w-conditioned already")
    student = model_from_config({**config, "w_conditioned": True}, seed=seed)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not key.startswith("cond.guidance.") for key in missing):
        raise ValueError(
            f"teacher's weights do not fit its config: missing {missing}, unexpected {unexpected}"
        )
    parameter = next(teacher.parameters())
    return student.to(device=parameter.device, dtype=parameter.dtype)
