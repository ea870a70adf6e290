"""Flax port of diffusers' ``UNet2DModel`` (same topology and parameter names) + a torch-free loader.

The module tree mirrors diffusers so that a PyTorch key maps to a Flax path by one rule
(``down_blocks.0.resnets.1.conv1.weight`` -> ``down_blocks_0/resnets_1/conv1/kernel``):

    conv_in, time_embedding/{linear_1, linear_2}, class_embedding?,
    down_blocks_i/{resnets_j/{norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut?},
                   attentions_j/{group_norm, to_q, to_k, to_v, to_out_0}?, downsamplers_0/conv?},
    mid_block/{resnets_0, attentions_0?, resnets_1},
    up_blocks_i/{resnets_j (layers_per_block + 1 of them), attentions_j?, upsamplers_0/conv?},
    conv_norm_out, conv_out

Layouts: images are NHWC here (NCHW in diffusers); conv kernels HWIO (torch OIHW); Dense kernels
``[in, out]`` (torch ``[out, in]``); norm ``scale`` (torch ``weight``).

Quirks reproduced on purpose (each changes the numbers):
  * ``downsample_padding=0`` pads (bottom 1, right 1) before the stride-2 3x3 conv; ``1`` pads 1 all round.
  * timestep embedding: ``exponent = -ln(10000) k / (half - freq_shift)``, ``[sin, cos]`` swapped to
    ``[cos, sin]`` when ``flip_sin_to_cos``.
  * self-attention blocks are the deprecated ``AttentionBlock`` form: GroupNorm -> q/k/v (with bias)
    -> softmax in float32 -> out proj -> + residual -> / ``rescale_output_factor``.
  * ResNet output ``(shortcut + h) / output_scale_factor``; the mid block uses ``mid_block_scale_factor``.

Supported config values (others raise ``ValueError``): ``time_embedding_type='positional'``,
block types ``DownBlock2D``/``AttnDownBlock2D``/``UpBlock2D``/``AttnUpBlock2D``, ``mid_block_type``
``UNetMidBlock2D`` or None, ``downsample_type``/``upsample_type`` ``conv``, ``act_fn`` ``silu``/``swish``,
``class_embed_type`` None (with ``num_class_embeds`` for a class-label embedding) or ``identity``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["UNet2DConfig", "UNet2DModel", "timestep_embedding", "load_diffusers_unet",
           "torch_to_flax_params", "save_diffusers_unet", "count_params", "abstract_params"]

_DOWN = ("DownBlock2D", "AttnDownBlock2D")
_UP = ("UpBlock2D", "AttnUpBlock2D")


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """The subset of diffusers' ``UNet2DModel`` config keys this port implements (same defaults)."""

    sample_size: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int | None = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    num_train_timesteps: int | None = None

    def __post_init__(self):
        for k in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, k, tuple(getattr(self, k)))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"down_block_types ({len(self.down_block_types)}), up_block_types "
                             f"({len(self.up_block_types)}) and block_out_channels ({n}) must have equal length")
        bad = [b for b in self.down_block_types if b not in _DOWN] + [b for b in self.up_block_types if b not in _UP]
        if bad:
            raise ValueError(f"unsupported block types {bad}: use {_DOWN} / {_UP}")
        if self.mid_block_type not in ("UNetMidBlock2D", None):
            raise ValueError(f"mid_block_type={self.mid_block_type!r}: only 'UNetMidBlock2D' or None are supported")
        if self.time_embedding_type != "positional":
            raise ValueError(f"time_embedding_type={self.time_embedding_type!r}: only 'positional' is supported")
        if self.downsample_type != "conv" or self.upsample_type != "conv":
            raise ValueError("downsample_type/upsample_type must be 'conv' (resnet resampling is not ported)")
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"act_fn={self.act_fn!r}: only 'silu'/'swish' are supported")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"resnet_time_scale_shift={self.resnet_time_scale_shift!r}: use 'default' or 'scale_shift'")
        if self.class_embed_type not in (None, "identity"):
            raise ValueError(f"class_embed_type={self.class_embed_type!r}: use None (+num_class_embeds) or 'identity'")

    @classmethod
    def from_dict(cls, d: dict) -> "UNet2DConfig":
        """From a diffusers ``config.json`` dict; private ``_*`` keys are ignored, unknown keys raise."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"config keys {unknown} are not supported by this UNet2DModel port")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "UNet2DConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding as diffusers' ``get_timestep_embedding``: ``[B] -> [B, dim]`` float32."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _gn(groups, eps, name):
    # two-pass variance: diffusers' torch GroupNorm; the fast E[x^2]-E[x]^2 form costs ~1e-6 parity
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _conv(ch, name, k=3, stride=1, padding=1):
    return nn.Conv(ch, (k, k), strides=(stride, stride), padding=((padding, padding), (padding, padding)), name=name)


class ResnetBlock2D(nn.Module):
    out_channels: int
    groups: int
    eps: float
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb):
        h = nn.silu(_gn(self.groups, self.eps, "norm1")(x))
        h = _conv(self.out_channels, "conv1")(h)
        t = nn.Dense(self.out_channels * (2 if self.time_scale_shift == "scale_shift" else 1),
                     name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = _gn(self.groups, self.eps, "norm2")(h) * (1 + scale) + shift
        else:
            h = _gn(self.groups, self.eps, "norm2")(h + t)
        h = _conv(self.out_channels, "conv2")(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, "conv_shortcut", k=1, padding=0)(x)
        return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
    """diffusers ``Attention`` as built for UNet2DModel (group-norm, residual, q/k/v bias, upcast softmax)."""

    head_dim: int
    groups: int | None
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        heads = c // self.head_dim
        residual = x
        if self.groups is not None:
            x = _gn(self.groups, self.eps, "group_norm")(x)
        x = x.reshape(b, hgt * wid, c)
        q, k, v = (nn.Dense(heads * self.head_dim, name=n)(x).reshape(b, -1, heads, self.head_dim)
                   for n in ("to_q", "to_k", "to_v"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, -1, heads * self.head_dim)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + residual) / self.rescale_output_factor


class _Down(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    eps: float
    attention: bool
    head_dim: int
    add_downsample: bool
    downsample_padding: int
    time_scale_shift: str

    @nn.compact
    def __call__(self, x, temb):
        states = []
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.eps, self.time_scale_shift, name=f"resnets_{j}")(x, temb)
            if self.attention:
                x = AttentionBlock(self.head_dim, self.groups, self.eps, name=f"attentions_{j}")(x)
            states.append(x)
        if self.add_downsample:
            x = _Downsample(self.out_channels, self.downsample_padding, name="downsamplers_0")(x)
            states.append(x)
        return x, states


class _Downsample(nn.Module):
    channels: int
    padding: int

    @nn.compact
    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers pads (0,1,0,1) when padding=0
        return _conv(self.channels, "conv", stride=2, padding=self.padding)(x)


class _Upsample(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
        return _conv(self.channels, "conv")(x)


class _Up(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    eps: float
    attention: bool
    head_dim: int
    add_upsample: bool
    time_scale_shift: str

    @nn.compact
    def __call__(self, x, skips, temb):
        skips = list(skips)
        for j in range(self.num_layers):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ResnetBlock2D(self.out_channels, self.groups, self.eps, self.time_scale_shift, name=f"resnets_{j}")(x, temb)
            if self.attention:
                x = AttentionBlock(self.head_dim, self.groups, self.eps, name=f"attentions_{j}")(x)
        if self.add_upsample:
            x = _Upsample(self.out_channels, name="upsamplers_0")(x)
        return x


class _Mid(nn.Module):
    channels: int
    groups: int
    attn_groups: int | None
    eps: float
    head_dim: int
    add_attention: bool
    scale: float
    time_scale_shift: str

    @nn.compact
    def __call__(self, x, temb):
        x = ResnetBlock2D(self.channels, self.groups, self.eps, self.time_scale_shift, self.scale, name="resnets_0")(x, temb)
        if self.add_attention:
            x = AttentionBlock(self.head_dim, self.attn_groups, self.eps, self.scale, name="attentions_0")(x)
        return ResnetBlock2D(self.channels, self.groups, self.eps, self.time_scale_shift, self.scale, name="resnets_1")(x, temb)


class UNet2DModel(nn.Module):
    """``apply({'params': p}, sample [B,H,W,C_in], timesteps [B] or scalar, class_labels [B] int?) -> [B,H,W,C_out]``.

    H and W must be divisible by ``2 ** (len(block_out_channels) - 1)``. ``class_labels`` is required
    iff the config has a class embedding (``num_class_embeds`` or ``class_embed_type='identity'``).
    """

    config: UNet2DConfig

    @nn.compact
    def __call__(self, sample, timesteps, class_labels=None):
        cfg = self.config
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"sample shape {sample.shape}: expected NHWC with C={cfg.in_channels}")
        f = 2 ** (len(cfg.block_out_channels) - 1)
        if sample.shape[1] % f or sample.shape[2] % f:
            raise ValueError(f"sample spatial size {sample.shape[1:3]} must be divisible by {f}")
        has_class = cfg.num_class_embeds is not None or cfg.class_embed_type == "identity"
        if has_class and class_labels is None:
            raise ValueError("class_labels should be provided: this UNet is class-conditional")
        if not has_class and class_labels is not None:
            raise ValueError("class_labels given but the config has no class embedding (set num_class_embeds)")
        b = sample.shape[0]
        groups = cfg.norm_num_groups if cfg.norm_num_groups is not None else min(cfg.block_out_channels[0] // 4, 32)
        eps = cfg.norm_eps
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        c0 = cfg.block_out_channels[0]
        temb = timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift).astype(sample.dtype)
        emb = _TimestepEmbedding(cfg.time_embed_dim, name="time_embedding")(temb)
        if cfg.class_embed_type is None and cfg.num_class_embeds is not None:
            emb = emb + nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, name="class_embedding")(class_labels)
        elif cfg.class_embed_type == "identity":
            emb = emb + class_labels

        x = _conv(c0, "conv_in")(sample)
        skips = [x]
        n = len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            ch = cfg.block_out_channels[i]
            x, states = _Down(ch, cfg.layers_per_block, groups, eps, kind == "AttnDownBlock2D",
                              cfg.attention_head_dim or ch, i < n - 1, cfg.downsample_padding,
                              cfg.resnet_time_scale_shift, name=f"down_blocks_{i}")(x, emb)
            skips += states
        if cfg.mid_block_type is not None:
            ch = cfg.block_out_channels[-1]
            attn_groups = cfg.attn_norm_num_groups
            if attn_groups is None:
                attn_groups = groups if cfg.resnet_time_scale_shift == "default" else None
            x = _Mid(ch, groups, attn_groups, eps, cfg.attention_head_dim or ch, cfg.add_attention,
                     cfg.mid_block_scale_factor, cfg.resnet_time_scale_shift, name="mid_block")(x, emb)
        rev = list(reversed(cfg.block_out_channels))
        for i, kind in enumerate(cfg.up_block_types):
            ch = rev[i]
            k = cfg.layers_per_block + 1
            mine, skips = skips[-k:], skips[:-k]
            x = _Up(ch, k, groups, eps, kind == "AttnUpBlock2D", cfg.attention_head_dim or ch, i < n - 1,
                    cfg.resnet_time_scale_shift, name=f"up_blocks_{i}")(x, mine, emb)
        x = nn.silu(_gn(groups, eps, "conv_norm_out")(x))
        return _conv(cfg.out_channels, "conv_out")(x)


class _TimestepEmbedding(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.dim, name="linear_2")(nn.silu(nn.Dense(self.dim, name="linear_1")(x)))


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


# --------------------------------------------------------------------------------------------
# diffusers checkpoint <-> Flax params
# --------------------------------------------------------------------------------------------

# Legacy AttentionBlock names (diffusers < 0.14) -> current Attention names.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _flax_path(torch_key: str) -> tuple[tuple[str, ...], str]:
    """``'down_blocks.0.attentions.1.query.weight'`` -> (('down_blocks_0','attentions_1','to_q'), 'weight')."""
    parts = torch_key.split(".")
    leaf, mods = parts[-1], parts[:-1]
    if len(mods) >= 1 and mods[-1] in _LEGACY_ATTN and any(m == "attentions" for m in mods):
        mods = mods[:-1] + _LEGACY_ATTN[mods[-1]].split(".")
    out: list[str] = []
    for p in mods:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out), leaf


def torch_to_flax_params(state: dict[str, np.ndarray], template: Any) -> dict:
    """Maps a diffusers state dict (numpy arrays, torch layouts) onto ``template``'s Flax tree.

    ``template`` is the params pytree of our ``UNet2DModel`` (from ``init``) giving names and shapes.
    Raises ``ValueError`` listing missing / unexpected keys or shape mismatches.
    """
    flat_t = {tuple(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(template)[0]}
    out: dict[tuple, np.ndarray] = {}
    unexpected, bad = [], []
    for key, w in state.items():
        mods, leaf = _flax_path(key)
        w = np.asarray(w)
        cands = []
        if leaf == "weight":
            if w.ndim == 4:
                cands = [(mods + ("kernel",), w.transpose(2, 3, 1, 0))]
                if w.shape[2:] == (1, 1):  # legacy 1x1-conv attention projections stored as conv
                    cands.append((mods + ("kernel",), w[:, :, 0, 0].T))
            elif w.ndim == 2:
                cands = [(mods + ("kernel",), w.T), (mods + ("embedding",), w)]
            elif w.ndim == 1:
                cands = [(mods + ("scale",), w)]
        elif leaf == "bias":
            cands = [(mods + ("bias",), w)]
        hit = [(p, v) for p, v in cands if p in flat_t]
        if not hit:
            unexpected.append(key)
            continue
        match = [(p, v) for p, v in hit if tuple(v.shape) == tuple(np.shape(flat_t[p]))]
        if not match:
            bad.append(f"{key}: {w.shape} vs {np.shape(flat_t[hit[0][0]])}")
            continue
        p, v = match[0]
        out[p] = v.astype(np.asarray(flat_t[p]).dtype)
    missing = ["/".join(p) for p in flat_t if p not in out]
    if unexpected or bad or missing:
        raise ValueError("diffusers checkpoint does not match the config: "
                         f"unexpected={unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
                         f"shape_mismatch={bad[:8]} missing={missing[:8]}{'...' if len(missing) > 8 else ''}")
    tree: dict = {}
    for p, v in out.items():
        d = tree
        for k in p[:-1]:
            d = d.setdefault(k, {})
        d[p[-1]] = v
    return tree


def load_diffusers_unet(path: str) -> tuple[UNet2DModel, dict]:
    """Reads a diffusers ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    Uses the safetensors numpy API (no torch). Accepts current (``to_q``...) and legacy
    (``query``/``key``/``value``/``proj_attn``) attention names and sharded checkpoints
    (``*.safetensors.index.json``). Returns ``(model, params)``; params are float32 numpy.
    """
    from safetensors.numpy import load_file

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: pass a diffusers UNet2DModel folder (config.json + safetensors)")
    config = UNet2DConfig.from_json(cfg_path)
    single = os.path.join(path, "diffusion_pytorch_model.safetensors")
    index = single + ".index.json"
    if os.path.isfile(single):
        state = load_file(single)
    elif os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for s in shards:
            state.update(load_file(os.path.join(path, s)))
    else:
        raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors in {path} (legacy .bin needs torch: "
                                "re-save it with diffusers' save_pretrained(safe_serialization=True))")
    state = {k: v.astype(np.float32) if v.dtype in (np.float16,) else v for k, v in state.items()}
    model = UNet2DModel(config)
    template = abstract_params(model)
    return model, torch_to_flax_params(state, template)


def abstract_params(model: UNet2DModel) -> Any:
    """Shape/dtype template of ``model``'s params without computing them (``jax.eval_shape``)."""
    cfg = model.config
    s = cfg.sample_size or 2 ** (len(cfg.block_out_channels) - 1)
    s = s if isinstance(s, int) else s[0]
    x = jnp.zeros((1, s, s, cfg.in_channels))
    c = jnp.zeros((1,), jnp.int32) if cfg.num_class_embeds is not None else (
        jnp.zeros((1, cfg.time_embed_dim)) if cfg.class_embed_type == "identity" else None)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), c))
    return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes["params"])


def save_diffusers_unet(path: str, config: UNet2DConfig, params: Any) -> None:
    """Writes ``params`` as a diffusers folder (config.json + safetensors, torch layouts, current names)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    state = {}
    for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [k.key for k in kp]
        leaf = names[-1]
        mods = []
        for n in names[:-1]:
            m = re.fullmatch(r"(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers|to_out)_(\d+)", n)
            mods += [m.group(1), m.group(2)] if m else [n]
        v = np.asarray(v, np.float32)
        if leaf == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
            leaf = "weight"
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        state[".".join(mods + [leaf])] = np.ascontiguousarray(v)
    save_file(state, os.path.join(path, "diffusion_pytorch_model.safetensors"))
    d = {"_class_name": "UNet2DModel", **config.to_dict()}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(d, f, indent=2)
