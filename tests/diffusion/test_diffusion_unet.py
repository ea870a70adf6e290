"""UNet2DModel port: numerical parity with diffusers (torch CPU) and loader behaviour."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.diffusion.unet import (UNet2DConfig, UNet2DModel, load_diffusers_unet, save_diffusers_unet,
                                   timestep_embedding, torch_to_flax_params)

torch = pytest.importorskip("torch", reason="torch (interop extra) not installed: diffusers parity needs it")
diffusers = pytest.importorskip("diffusers", reason="diffusers (interop extra) not installed: parity needs it")

SMALL = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             layers_per_block=1, norm_num_groups=8, attention_head_dim=8, norm_eps=1e-6)


def _torch_unet(seed, **kw):
    torch.manual_seed(seed)
    m = diffusers.UNet2DModel(**kw).eval()
    with torch.no_grad():  # randomise every tensor (zero-init biases would hide layout bugs)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _compare(tmp_path, kw, batch=3, class_labels=None, seed=0):
    tm = _torch_unet(seed, **kw)
    tm.save_pretrained(str(tmp_path))
    model, params = load_diffusers_unet(str(tmp_path))
    rng = np.random.default_rng(seed)
    s = kw["sample_size"]
    x = rng.standard_normal((batch, kw["in_channels"], s, s)).astype(np.float32)
    t = rng.integers(0, 1000, size=batch)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x), torch.from_numpy(t),
                 class_labels=None if class_labels is None else torch.from_numpy(class_labels)).sample.numpy()
    out = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t),
                      None if class_labels is None else jnp.asarray(class_labels))
    out = np.asarray(out).transpose(0, 3, 1, 2)
    return out, ref


@pytest.mark.parametrize("extra", [
    dict(),                                                       # padding 1, flip True, shift 0
    dict(downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None),  # ddpm-cifar10 quirks
    dict(resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.414),
])
def test_matches_diffusers(tmp_path, extra):
    kw = {**SMALL, **extra}
    out, ref = _compare(tmp_path, kw)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_matches_diffusers_class_conditional(tmp_path):
    kw = {**SMALL, "num_class_embeds": 10, "block_out_channels": (16, 32, 32),
          "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
          "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), "layers_per_block": 2}
    out, ref = _compare(tmp_path, kw, class_labels=np.array([0, 3, 9]))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_legacy_attention_names_load(tmp_path):
    """Old checkpoints store attention as query/key/value/proj_attn; both must give the same params."""
    from safetensors.numpy import load_file, save_file

    tm = _torch_unet(1, **SMALL)
    tm.save_pretrained(str(tmp_path / "new"))
    _, p_new = load_diffusers_unet(str(tmp_path / "new"))
    state = load_file(str(tmp_path / "new" / "diffusion_pytorch_model.safetensors"))
    legacy = {}
    for k, v in state.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        legacy[k] = v
    assert any(".proj_attn." in k for k in legacy)
    os.makedirs(tmp_path / "old")
    save_file(legacy, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    _, p_old = load_diffusers_unet(str(tmp_path / "old"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_new, p_old)


def test_save_roundtrip_loads_in_diffusers(tmp_path):
    """Our writer produces a folder diffusers itself loads to the same function."""
    cfg = UNet2DConfig(**SMALL)
    model = UNet2DModel(cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
    params = model.init(jax.random.PRNGKey(3), x, jnp.zeros((2,)))["params"]
    save_diffusers_unet(str(tmp_path), cfg, params)
    tm = diffusers.UNet2DModel.from_pretrained(str(tmp_path)).eval()
    t = np.array([5, 700])
    with torch.no_grad():
        ref = tm(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy()), torch.from_numpy(t)).sample.numpy()
    out = np.asarray(model.apply({"params": params}, x, jnp.asarray(t))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_closed_form():
    t = np.array([0.0, 1.0, 17.0, 999.0])
    for flip, shift in ((False, 1), (True, 0)):
        half = 8
        freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - shift))
        a = t[:, None] * freqs[None]
        ref = np.concatenate([np.sin(a), np.cos(a)], -1)
        if flip:
            ref = np.concatenate([ref[:, half:], ref[:, :half]], -1)
        np.testing.assert_allclose(np.asarray(timestep_embedding(jnp.asarray(t), 16, flip, shift)), ref, atol=2e-4)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="block types"):
        UNet2DConfig(**{**SMALL, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D")})
    with pytest.raises(ValueError, match="not supported"):
        UNet2DConfig.from_dict({**SMALL, "cross_attention_dim": 8})
    model = UNet2DModel(UNet2DConfig(**SMALL))
    with pytest.raises(ValueError, match="class_labels"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet(str(tmp_path))
    tm = _torch_unet(0, **SMALL)
    tm.save_pretrained(str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["block_out_channels"] = [16, 48]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        load_diffusers_unet(str(tmp_path / "m"))
