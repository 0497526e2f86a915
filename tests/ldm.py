"""Write a tiny SD-1.x diffusers folder as one original-layout (LDM) .safetensors file.

Real single-file checkpoints use the original Stable Diffusion key names; diffusers'
`from_single_file` converts them on load. This writes the inverse, for tests only, so that a
tiny checkpoint can go through exactly the path a shared 2-7 GB checkpoint takes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import load_file, save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
          "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                 "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return f"{head}.{tail}" if tail else head


def unet_to_ldm(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per = config["layers_per_block"] + 1
    attention_in_up = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, l, rest = int(m[1]), int(m[2]), m[3]
            out[f"input_blocks.{1 + b * per + l}.0.{_rename(rest, RESNET)}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_rename(m[3], RESNET)}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            u = int(m[1])
            out[f"output_blocks.{u * per + per - 1}.{2 if attention_in_up[u] else 1}.conv.{m[2]}"] \
                = value
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def vae_to_ldm(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
                               key):
            i = int(m[3]) if m[2] == "down" else blocks - 1 - int(m[3])
            rest = m[5].replace("conv_shortcut", "nin_shortcut")
            out[f"{m[1]}.{m[2]}.{i}.block.{m[4]}.{rest}"] = value
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            out[f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            if value.ndim == 2:  # diffusers' linear layers were 1x1 convolutions
                value = value[:, :, None, None]
            out[f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"] = value
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
    return {f"first_stage_model.{k}": v for k, v in out.items()}


def write_single_file(folder: Path, target: Path) -> None:
    """One .safetensors with the UNet, VAE and text encoder of an SD-1.x diffusers folder."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    state = {
        **unet_to_ldm(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
                      unet_config),
        **vae_to_ldm(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                     vae_config),
        **{f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
           for k, v in load_file(folder / "text_encoder" / "model.safetensors").items()},
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
