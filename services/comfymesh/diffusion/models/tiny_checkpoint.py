"""Tiny random-weight checkpoints in the real single-file LDM key layout, for tests and demos.

The files are loaded by exactly the same code as a real checkpoint: only the sizes are small
(channels multiples of 32 so GroupNorm keeps its 32 groups; 64-channel attention heads where the
family uses them; a 49 408-token CLIP vocabulary so the real tokenizer ids fit).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

FAMILIES = ("sd15", "sd2", "sd2v", "sdxl")
VOCAB = 49_408
POSITIONS = 77
ADM_TIME_WIDTH = 6 * 256  # SDXL: six 256-wide size embeddings after the pooled vector


@dataclass(frozen=True)
class UNetShape:
    model_channels: int
    mult: tuple[int, ...]
    res_blocks: int
    depth: tuple[int, ...]  # transformer depth per level, 0 = no attention
    mid_depth: int
    context_dim: int
    linear_proj: bool
    adm: int | None = None
    in_channels: int = 4
    out_channels: int = 4


@dataclass(frozen=True)
class TinyFamily:
    unet: UNetShape
    clip_hf: tuple[str, int] | None  # (prefix, width) of a Hugging Face layout CLIP
    clip_open: tuple[str, int] | None  # (prefix, width) of an OpenCLIP layout text tower
    clip_layers: int = 3
    vpred_bias_std: float | None = None  # SD2 768-v is told apart by this bias' spread
    extra_keys: tuple[str, ...] = ()


_CLIP_W = 32
# Attention only at the lower-resolution levels keeps 512–1024 px workflows fast on a CPU (self-attention
# cost grows with the square of the token count); the families' structural markers stay intact.
SPECS: dict[str, TinyFamily] = {
    "sd15": TinyFamily(
        UNetShape(32, (1, 1, 2), 1, (0, 1, 1), 1, _CLIP_W, linear_proj=False),
        clip_hf=("cond_stage_model.transformer.text_model.", _CLIP_W), clip_open=None,
    ),
    "sd2": TinyFamily(
        UNetShape(64, (1, 1, 1), 1, (0, 1, 1), 1, _CLIP_W, linear_proj=True),
        clip_hf=None, clip_open=("cond_stage_model.model.", _CLIP_W), vpred_bias_std=0.01,
    ),
    "sd2v": TinyFamily(
        UNetShape(64, (1, 1, 1), 1, (0, 1, 1), 1, _CLIP_W, linear_proj=True),
        clip_hf=None, clip_open=("cond_stage_model.model.", _CLIP_W), vpred_bias_std=0.2,
    ),
    "sdxl": TinyFamily(
        UNetShape(32, (1, 1, 2), 1, (0, 0, 2), 2, 2 * _CLIP_W, linear_proj=True, adm=_CLIP_W + ADM_TIME_WIDTH),
        clip_hf=("conditioner.embedders.0.transformer.text_model.", _CLIP_W),
        clip_open=("conditioner.embedders.1.model.", _CLIP_W),
    ),
}

# Full-size architectures (random weights) for benchmarks: the real SD1.5 shapes, about 1.07 G parameters.
FULL_SPECS: dict[str, TinyFamily] = {
    "sd15": TinyFamily(
        UNetShape(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 768, linear_proj=False),
        clip_hf=("cond_stage_model.transformer.text_model.", 768), clip_open=None, clip_layers=12,
    ),
}
FULL_VAE = {"ch": 128, "mult": (1, 2, 4, 4), "res_blocks": 2}

Shapes = dict[str, tuple[int, ...]]


def _linear(out: dict[str, tuple[int, ...]], name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def _conv(out: Shapes, name: str, n_in: int, n_out: int, k: int) -> None:
    out[f"{name}.weight"] = (n_out, n_in, k, k)
    out[f"{name}.bias"] = (n_out,)


def _norm(out: Shapes, name: str, n: int) -> None:
    out[f"{name}.weight"] = (n,)
    out[f"{name}.bias"] = (n,)


def _unet_resblock(out: Shapes, name: str, n_in: int, n_out: int, emb: int) -> None:
    _norm(out, f"{name}.in_layers.0", n_in)
    _conv(out, f"{name}.in_layers.2", n_in, n_out, 3)
    _linear(out, f"{name}.emb_layers.1", emb, n_out)
    _norm(out, f"{name}.out_layers.0", n_out)
    _conv(out, f"{name}.out_layers.3", n_out, n_out, 3)
    if n_in != n_out:
        _conv(out, f"{name}.skip_connection", n_in, n_out, 1)


def _transformer(out: Shapes, name: str, ch: int, depth: int, ctx: int, linear: bool) -> None:
    _norm(out, f"{name}.norm", ch)
    for proj in ("proj_in", "proj_out"):
        if linear:
            _linear(out, f"{name}.{proj}", ch, ch)
        else:
            _conv(out, f"{name}.{proj}", ch, ch, 1)
    for j in range(depth):
        blk = f"{name}.transformer_blocks.{j}"
        for attn, kv_in in (("attn1", ch), ("attn2", ctx)):
            _linear(out, f"{blk}.{attn}.to_q", ch, ch, bias=False)
            _linear(out, f"{blk}.{attn}.to_k", kv_in, ch, bias=False)
            _linear(out, f"{blk}.{attn}.to_v", kv_in, ch, bias=False)
            _linear(out, f"{blk}.{attn}.to_out.0", ch, ch)
        _linear(out, f"{blk}.ff.net.0.proj", ch, ch * 8)  # GEGLU: value and gate, 4·ch each
        _linear(out, f"{blk}.ff.net.2", ch * 4, ch)
        for k in (1, 2, 3):
            _norm(out, f"{blk}.norm{k}", ch)


def unet_shapes(u: UNetShape, prefix: str = "model.diffusion_model.") -> Shapes:
    """Every UNet tensor name and shape in the LDM (openaimodel) layout."""
    s: Shapes = {}
    mc, emb = u.model_channels, u.model_channels * 4
    _linear(s, "time_embed.0", mc, emb)
    _linear(s, "time_embed.2", emb, emb)
    if u.adm is not None:
        _linear(s, "label_emb.0.0", u.adm, emb)
        _linear(s, "label_emb.0.2", emb, emb)
    _conv(s, "input_blocks.0.0", u.in_channels, mc, 3)
    skips = [mc]
    ch, block = mc, 1
    for level, mult in enumerate(u.mult):
        for _ in range(u.res_blocks):
            _unet_resblock(s, f"input_blocks.{block}.0", ch, mc * mult, emb)
            ch = mc * mult
            if u.depth[level]:
                _transformer(s, f"input_blocks.{block}.1", ch, u.depth[level], u.context_dim, u.linear_proj)
            skips.append(ch)
            block += 1
        if level != len(u.mult) - 1:
            _conv(s, f"input_blocks.{block}.0.op", ch, ch, 3)
            skips.append(ch)
            block += 1
    _unet_resblock(s, "middle_block.0", ch, ch, emb)
    _transformer(s, "middle_block.1", ch, u.mid_depth, u.context_dim, u.linear_proj)
    _unet_resblock(s, "middle_block.2", ch, ch, emb)
    block = 0
    for level in reversed(range(len(u.mult))):
        for r in range(u.res_blocks + 1):
            n_out = mc * u.mult[level]
            _unet_resblock(s, f"output_blocks.{block}.0", ch + skips.pop(), n_out, emb)
            ch = n_out
            sub = 1
            if u.depth[level]:
                _transformer(s, f"output_blocks.{block}.1", ch, u.depth[level], u.context_dim, u.linear_proj)
                sub = 2
            if level and r == u.res_blocks:
                _conv(s, f"output_blocks.{block}.{sub}.conv", ch, ch, 3)
            block += 1
    _norm(s, "out.0", ch)
    _conv(s, "out.2", ch, u.out_channels, 3)
    return {prefix + k: v for k, v in s.items()}


def _vae_resblock(out: Shapes, name: str, n_in: int, n_out: int) -> None:
    _norm(out, f"{name}.norm1", n_in)
    _conv(out, f"{name}.conv1", n_in, n_out, 3)
    _norm(out, f"{name}.norm2", n_out)
    _conv(out, f"{name}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        _conv(out, f"{name}.nin_shortcut", n_in, n_out, 1)


def _vae_mid(out: Shapes, name: str, ch: int) -> None:
    _vae_resblock(out, f"{name}.block_1", ch, ch)
    _norm(out, f"{name}.attn_1.norm", ch)
    for p in ("q", "k", "v", "proj_out"):
        _conv(out, f"{name}.attn_1.{p}", ch, ch, 1)
    _vae_resblock(out, f"{name}.block_2", ch, ch)


def vae_shapes(ch: int = 32, mult: tuple[int, ...] = (1, 1, 1, 1), res_blocks: int = 1, z: int = 4,
               prefix: str = "first_stage_model.") -> Shapes:
    """Every VAE tensor in the LDM layout (4 levels = spatial factor 8, like the real one)."""
    s: Shapes = {}
    _conv(s, "encoder.conv_in", 3, ch, 3)
    cur = ch
    for i, m in enumerate(mult):
        for j in range(res_blocks):
            _vae_resblock(s, f"encoder.down.{i}.block.{j}", cur, ch * m)
            cur = ch * m
        if i != len(mult) - 1:
            _conv(s, f"encoder.down.{i}.downsample.conv", cur, cur, 3)
    _vae_mid(s, "encoder.mid", cur)
    _norm(s, "encoder.norm_out", cur)
    _conv(s, "encoder.conv_out", cur, 2 * z, 3)
    _conv(s, "quant_conv", 2 * z, 2 * z, 1)
    _conv(s, "post_quant_conv", z, z, 1)
    cur = ch * mult[-1]
    _conv(s, "decoder.conv_in", z, cur, 3)
    _vae_mid(s, "decoder.mid", cur)
    for i in reversed(range(len(mult))):
        for j in range(res_blocks + 1):
            _vae_resblock(s, f"decoder.up.{i}.block.{j}", cur, ch * mult[i])
            cur = ch * mult[i]
        if i != 0:
            _conv(s, f"decoder.up.{i}.upsample.conv", cur, cur, 3)
    _norm(s, "decoder.norm_out", cur)
    _conv(s, "decoder.conv_out", cur, 3, 3)
    return {prefix + k: v for k, v in s.items()}


def clip_hf_shapes(prefix: str, width: int, layers: int) -> Shapes:
    """A Hugging Face layout CLIP text model (SD1's and SDXL's CLIP-L)."""
    s: Shapes = {"embeddings.token_embedding.weight": (VOCAB, width),
                 "embeddings.position_embedding.weight": (POSITIONS, width)}
    for i in range(layers):
        layer = f"encoder.layers.{i}"
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, f"{layer}.self_attn.{p}", width, width)
        _norm(s, f"{layer}.layer_norm1", width)
        _norm(s, f"{layer}.layer_norm2", width)
        _linear(s, f"{layer}.mlp.fc1", width, 4 * width)
        _linear(s, f"{layer}.mlp.fc2", 4 * width, width)
    _norm(s, "final_layer_norm", width)
    return {prefix + k: v for k, v in s.items()}


def clip_open_shapes(prefix: str, width: int, layers: int, proj: int) -> Shapes:
    """An OpenCLIP layout text tower (SD2's CLIP-H, SDXL's CLIP-bigG)."""
    s: Shapes = {"token_embedding.weight": (VOCAB, width), "positional_embedding": (POSITIONS, width),
                 "text_projection": (width, proj), "logit_scale": ()}
    for i in range(layers):
        blk = f"transformer.resblocks.{i}"
        s[f"{blk}.attn.in_proj_weight"] = (3 * width, width)
        s[f"{blk}.attn.in_proj_bias"] = (3 * width,)
        _linear(s, f"{blk}.attn.out_proj", width, width)
        _norm(s, f"{blk}.ln_1", width)
        _norm(s, f"{blk}.ln_2", width)
        _linear(s, f"{blk}.mlp.c_fc", width, 4 * width)
        _linear(s, f"{blk}.mlp.c_proj", 4 * width, width)
    _norm(s, "ln_final", width)
    return {prefix + k: v for k, v in s.items()}


def checkpoint_shapes(family: str, full: bool = False) -> Shapes:
    """All tensor names and shapes of a tiny (or, with `full`, full-size) checkpoint of `family`."""
    spec = _spec(family, full)
    shapes = {**unet_shapes(spec.unet), **(vae_shapes(**FULL_VAE) if full else vae_shapes())}  # type: ignore[arg-type]
    if spec.clip_hf:
        shapes.update(clip_hf_shapes(spec.clip_hf[0], spec.clip_hf[1], spec.clip_layers))
    if spec.clip_open:
        shapes.update(clip_open_shapes(spec.clip_open[0], spec.clip_open[1], spec.clip_layers, spec.clip_open[1]))
    return shapes


def _spec(family: str, full: bool = False) -> TinyFamily:
    specs = FULL_SPECS if full else SPECS
    if family not in specs:
        raise ValueError(f"unknown {'full' if full else 'tiny'} family {family!r}; choose one of {', '.join(specs)}")
    return specs[family]


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    def randn(size: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=gen.device)

    if name.endswith("logit_scale"):
        return torch.tensor(4.6052)
    if len(shape) == 1 and name.endswith("weight"):
        # only norm layers have 1-D weights: near 1 keeps activations at unit scale through the layers
        return 1.0 + 0.01 * randn(shape)
    if name.endswith("bias"):
        return 0.01 * randn(shape)
    if "embedding" in name:
        return 0.02 * randn(shape)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return randn(shape) / max(fan_in, 1) ** 0.5


def make_state_dict(family: str, seed: int = 0, dtype: torch.dtype = torch.float16, full: bool = False,
                    device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a tiny (or full-size) checkpoint; same family, seed and device give identical tensors.
    `device` only says where the random numbers are drawn (a GPU makes a full-size file in seconds)."""
    spec = _spec(family, full)
    gen = torch.Generator(device).manual_seed(seed)
    sd = {name: _init(name, shape, gen).to(dtype).cpu()
          for name, shape in sorted(checkpoint_shapes(family, full).items())}
    if spec.vpred_bias_std is not None:
        key = _last_output_norm1_bias(sd)
        sd[key] = (spec.vpred_bias_std * torch.randn(sd[key].shape, generator=gen)).to(dtype)
    # realistic bookkeeping tensors that a loader must ignore
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000, dtype=torch.float32)
    for key in spec.extra_keys:
        sd[key] = torch.tensor([])
    return sd


def _last_output_norm1_bias(sd: dict[str, torch.Tensor]) -> str:
    from comfymesh.diffusion.models.recognise import vpred_probe_key

    key = vpred_probe_key(list(sd))
    assert key is not None
    return key


def make_tiny_checkpoint(path: str | Path, family: str = "sd15", seed: int = 0,
                         dtype: torch.dtype = torch.float16, vpred: bool = False, full: bool = False,
                         device: str = "cpu") -> Path:
    """Write a tiny (or `full`-size) checkpoint file and return its path. `vpred` adds SDXL's `v_pred` key."""
    sd = make_state_dict(family, seed, dtype, full=full, device=device)
    if vpred:
        sd["v_pred"] = torch.tensor([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "comfymesh_tiny_family": family + ("-full" if full else "")})
    return path


def _lora_targets(sd_keys: list[str]) -> Iterator[tuple[str, str]]:
    """(kohya name, tensor key) for the attention projections of the UNet and the text encoders."""
    for key in sd_keys:
        if key.startswith("model.diffusion_model.") and key.endswith(("to_q.weight", "to_v.weight")):
            name = key[len("model.diffusion_model."):-len(".weight")]
            yield "lora_unet_" + name.replace(".", "_"), key
    te_prefixes = {"cond_stage_model.transformer.text_model.": "lora_te_text_model_",
                   "conditioner.embedders.0.transformer.text_model.": "lora_te1_text_model_"}
    for key in sd_keys:
        for prefix, kohya in te_prefixes.items():
            if key.startswith(prefix) and key.endswith(("q_proj.weight", "v_proj.weight")):
                yield kohya + key[len(prefix):-len(".weight")].replace(".", "_"), key


def make_tiny_lora(path: str | Path, checkpoint: str | Path, seed: int = 0, rank: int = 4,
                   alpha: float = 4.0, scale: float = 0.5) -> Path:
    """Write a kohya-style LoRA (lora_unet_*, lora_te_* / lora_te1_*) that fits `checkpoint`."""
    from safetensors import safe_open

    gen = torch.Generator().manual_seed(seed)
    with safe_open(str(checkpoint), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    out: dict[str, torch.Tensor] = {}
    for kohya, key in sorted(_lora_targets(sorted(shapes))):
        n_out, n_in = shapes[key][0], shapes[key][1]
        out[f"{kohya}.lora_down.weight"] = (scale * torch.randn(rank, n_in, generator=gen)).half()
        out[f"{kohya}.lora_up.weight"] = (scale * torch.randn(n_out, rank, generator=gen)).half()
        out[f"{kohya}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": "pt"})
    return path


# where each family's text encoders sit in its checkpoint, and the file ComfyUI ships each as
_SPLIT_ENCODERS = {
    "cond_stage_model.transformer.": "clip_l", "conditioner.embedders.0.transformer.": "clip_l",
    "cond_stage_model.model.": "clip_h", "conditioner.embedders.1.model.": "clip_g",
}


def _openclip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower in CLIPTextModelWithProjection naming (how clip_g.safetensors ships)."""
    out: dict[str, torch.Tensor] = {}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, tensor in sd.items():
        if key.startswith("transformer.resblocks."):
            index, rest = key[len("transformer.resblocks."):].split(".", 1)
            layer = f"text_model.encoder.layers.{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight or bias
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3), strict=True):
                    out[f"{layer}self_attn.{proj}.{kind}"] = part.clone()
                continue
            module, leaf = rest.rsplit(".", 1)
            out[f"{layer}{names[module]}.{leaf}"] = tensor
        elif key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = tensor
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = tensor
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key.split(".", 1)[1]] = tensor
        elif key == "text_projection":
            out["text_projection.weight"] = tensor.t().contiguous()
    return out


def write_split(checkpoint: str | Path, home: str | Path, name: str) -> dict[str, Path]:
    """Write the weights of a checkpoint as ComfyUI's split files under `home`: diffusion_models/<name>.safetensors
    (the bare UNet), text_encoders/clip_l, clip_h or clip_g.safetensors (CLIP-L in Hugging Face naming, CLIP-H in
    OpenCLIP naming, CLIP-G in CLIPTextModelWithProjection naming, as ComfyUI's files ship) and
    vae/<name>.safetensors. Returns the paths by part ("unet", "vae", "clip_l", ...)."""
    from safetensors.torch import load_file

    sd = load_file(str(checkpoint))
    home = Path(home)
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}}
    for key, tensor in sd.items():
        if key.startswith("model.diffusion_model."):
            parts["unet"][key[len("model.diffusion_model."):]] = tensor
        elif key.startswith("first_stage_model."):
            parts["vae"][key[len("first_stage_model."):]] = tensor
        for prefix, encoder in _SPLIT_ENCODERS.items():
            if key.startswith(prefix):
                parts.setdefault(encoder, {})[key[len(prefix):]] = tensor
    if "clip_g" in parts:
        parts["clip_g"] = _openclip_to_hf(parts["clip_g"])
    folders = {"unet": ("diffusion_models", name), "vae": ("vae", name)}
    out: dict[str, Path] = {}
    for part, tensors in parts.items():
        folder, stem = folders.get(part, ("text_encoders", part))
        out[part] = home / folder / f"{stem}.safetensors"
        out[part].parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out[part]), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfymesh.diffusion.models.tiny_checkpoint",
        description="Write a tiny random-weight checkpoint in the single-file LDM layout.",
    )
    parser.add_argument("out", type=Path, help="output .safetensors path")
    parser.add_argument("--family", choices=FAMILIES, default="sd15")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="store float32 tensors (default float16)")
    parser.add_argument("--vpred", action="store_true", help="SDXL only: add the v_pred marker key")
    parser.add_argument("--full", action="store_true",
                        help="full-size architecture with random weights (sd15 only: ~1.07 G parameters, ~2 GB fp16)")
    parser.add_argument("--device", default="cpu", help="where to draw the random numbers (e.g. cuda)")
    parser.add_argument("--lora-for", type=Path, default=None, metavar="CKPT",
                        help="write a tiny kohya LoRA fitting CKPT instead of a checkpoint")
    parser.add_argument("--split", type=Path, default=None, metavar="DIR",
                        help="also write the checkpoint's weights as ComfyUI's split files under DIR "
                             "(diffusion_models/, text_encoders/, vae/)")
    args = parser.parse_args(argv)
    if args.lora_for is not None:
        make_tiny_lora(args.out, args.lora_for, seed=args.seed)
    else:
        make_tiny_checkpoint(args.out, args.family, args.seed, torch.float32 if args.fp32 else torch.float16,
                             vpred=args.vpred, full=args.full, device=args.device)
        if args.split is not None:
            for path in write_split(args.out, args.split, Path(args.out).stem).values():
                print(path)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
