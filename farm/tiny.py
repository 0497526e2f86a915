"""The built-in tiny models: random-weight pipelines shaped like the real ones.

No machine here can download weights, so `tiny` (a Stable-Diffusion-1.x-shaped pipeline),
`tiny-xl` (an SDXL-shaped one), `tiny-xl-refiner` (an SDXL-refiner-shaped one, sharing
tiny-xl's VAE and second text encoder as the real pair do) and `tiny-vae` (a second VAE for swap
tests) are built from
configs, the way diffusers' own tests do, saved in diffusers format into a cache folder on
first use, and from then on loaded through exactly the same `from_pretrained` path as any local
diffusers folder. The pictures are noise.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

VERSION = 1  # bump when a builder changes: the folder name changes and models are rebuilt
MAX_TOKENS = 77  # CLIP's context length


def cache_dir() -> Path:
    """$FARM_CACHE, else $XDG_CACHE_HOME/farm, else ~/.cache/farm."""
    if os.environ.get("FARM_CACHE"):
        return Path(os.environ["FARM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "farm"


def ensure(name: str) -> Path:
    """The folder of built-in model `name`, building it on first use."""
    build = BUILDERS[name]
    target = cache_dir() / "tiny" / f"{name}-v{VERSION}"
    if (target / ".complete").exists():
        return target
    from farm import libraries

    libraries.quiet()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(staging)
        (staging / ".complete").touch()
        try:
            os.rename(staging, target)  # atomic; another process may have won the race
        except OSError:
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet, each char alone and word-final, plus CLIP's specials.

    With no merges, CLIP's BPE splits any text into bytes, so every prompt tokenizes offline.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def _tokenizer():
    """CLIP's tokenizer over the byte vocabulary, built locally."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=MAX_TOKENS)
    except TypeError:  # transformers 4 reads its vocabulary and merges from files only
        with tempfile.TemporaryDirectory() as folder:
            vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
            vocab.write_text(json.dumps(_byte_vocab()), encoding="utf-8")
            merges.write_text("#version: 0.2\n", encoding="utf-8")
            return CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_TOKENS)


def _text_config():
    """A two-layer, 32-wide CLIP text encoder config over the byte vocabulary."""
    from transformers import CLIPTextConfig

    vocab = _byte_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, projection_dim=32,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _seeded(seed: int, make: Callable):
    """Build a module from a fixed seed without touching the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    # Four blocks, three downsamples: 8x smaller latents per side, 4 channels, like SD's VAE.
    return _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        sample_size=512, scaling_factor=0.18215,
    ))


def build_tiny(folder: Path) -> None:
    """A Stable-Diffusion-1.x-shaped pipeline with random weights, saved in diffusers format."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _tokenizer()
    text_encoder = _seeded(0, lambda: CLIPTextModel(_text_config()))
    unet = _seeded(0, lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), norm_num_groups=32, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    ))
    # SD 1.x's own scheduler settings, so that every sampler sees a realistic noise schedule.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(0), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_inpaint(folder: Path) -> None:
    """An SD-1.x-shaped inpainting checkpoint: tiny's text encoder and VAE, a UNet of 9 input
    channels (the noisy latents, the mask, the masked image's latents), random weights."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    tiny = ensure("tiny")
    base = StableDiffusionInpaintPipeline.from_pretrained(tiny, safety_checker=None,
                                                          requires_safety_checker=False)
    base.unet = _seeded(3, lambda: UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), norm_num_groups=32, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    ))
    base.register_modules(unet=base.unet)
    base.save_pretrained(folder, safe_serialization=True)


def build_tiny_xl_inpaint(folder: Path) -> None:
    """An SDXL-shaped inpainting checkpoint (as diffusers' stable-diffusion-xl-1.0-inpainting):
    tiny-xl's text encoders and VAE, a UNet of 9 input channels, random weights."""
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    base = StableDiffusionXLInpaintPipeline.from_pretrained(ensure("tiny-xl"))
    config = {**base.unet.config, "in_channels": 9}
    unet = _seeded(4, lambda: UNet2DConditionModel.from_config(config))
    base.register_modules(unet=unet)
    base.save_pretrained(folder, safe_serialization=True)


def build_tiny_xl(folder: Path) -> None:
    """An SDXL-shaped pipeline with random weights: two text encoders (the second with a
    projection, for the pooled embedding), a UNet with SDXL's size/crop conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = _text_config()
    unet = _seeded(0, lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), norm_num_groups=32, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop numbers + pooled
    ))
    vae = _tiny_vae(0)
    vae.register_to_config(force_upcast=True)  # as SDXL's VAE: decode in float32
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet,
        text_encoder=_seeded(0, lambda: CLIPTextModel(config)),
        text_encoder_2=_seeded(1, lambda: CLIPTextModelWithProjection(config)),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        scheduler=EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_xl_refiner(folder: Path) -> None:
    """An SDXL-refiner-shaped img2img pipeline with random weights: only the second text
    encoder (tiny-xl's own weights), a UNet conditioned on the aesthetic score as well as the
    sizes, and tiny-xl's VAE."""
    from diffusers import (EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModelWithProjection

    unet = _seeded(2, lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), norm_num_groups=32, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # the second encoder's hidden states only
        transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=5 * 8 + 32,  # sizes, crop, aesthetic + pooled
    ))
    vae = _tiny_vae(0)
    vae.register_to_config(force_upcast=True)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, unet=unet, text_encoder=None, tokenizer=None,
        text_encoder_2=_seeded(1, lambda: CLIPTextModelWithProjection(_text_config())),
        tokenizer_2=_tokenizer(),
        scheduler=EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


T5_PIECES = ["<pad>", "</s>", "<unk>", "\u2581"] + [chr(c) for c in range(33, 127)]


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer over printable ASCII, each character a piece (with or without
    the word-start mark), built locally: every prompt tokenizes offline."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers import models as pieces
    from transformers import T5TokenizerFast

    vocab = T5_PIECES + ["\u2581" + p for p in T5_PIECES[4:]]
    tokenizer = Tokenizer(pieces.Unigram([(p, 0.0 if i < 3 else -1.0)
                                          for i, p in enumerate(vocab)], unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                       prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory() as folder:  # read back as transformers 4 and 5 both can
        tokenizer.save(str(Path(folder) / "tokenizer.json"))
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
            "unk_token": "<unk>", "extra_ids": 0, "model_max_length": 512}))
        return T5TokenizerFast.from_pretrained(folder)


def _t5_encoder(seed: int):
    """A two-layer, 32-wide T5 encoder over the tiny T5 vocabulary."""
    from transformers import T5Config, T5EncoderModel

    return _seeded(seed, lambda: T5EncoderModel(T5Config(
        vocab_size=2 * len(T5_PIECES) - 4, d_model=32, d_ff=37, d_kv=8, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).eval())


def _flow_vae(seed: int):
    """An 8x VAE with 16 latent channels, shifted and scaled, as SD3's and Flux's are."""
    from diffusers import AutoencoderKL

    return _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        sample_size=512, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False))


def build_tiny_sd3(folder: Path) -> None:
    """An SD3-shaped pipeline with random weights: an MMDiT transformer over 16-channel
    latents, two CLIP text encoders with projections and a T5 encoder, and SD3's own
    flow-matching Euler scheduler (shift 3)."""
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection

    pipe = StableDiffusion3Pipeline(
        transformer=_seeded(0, lambda: SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=32, pooled_projection_dim=64)),  # the two CLIPs' pooled
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_flow_vae(0),
        text_encoder=_seeded(0, lambda: CLIPTextModelWithProjection(_text_config())),
        tokenizer=_tokenizer(),
        text_encoder_2=_seeded(1, lambda: CLIPTextModelWithProjection(_text_config())),
        tokenizer_2=_tokenizer(),
        text_encoder_3=_t5_encoder(2), tokenizer_3=_t5_tokenizer())
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_tiny_flux(folder: Path, distilled: bool) -> None:
    """A Flux.1-shaped pipeline with random weights: a double- and a single-stream transformer
    block over 16-channel latents packed 2x2, a CLIP and a T5 text encoder, and Flux's own
    flow-matching Euler scheduler with dynamic shifting. `distilled`: Flux.1-dev's guidance
    embedding (a distilled guidance input); without it, Flux.1-schnell's shape."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    pipe = FluxPipeline(
        transformer=_seeded(0, lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=distilled)),
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0 if distilled else 1.0,  # as the published
            use_dynamic_shifting=distilled,  # dev and schnell configs
            base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        vae=_flow_vae(0),
        text_encoder=_seeded(0, lambda: CLIPTextModel(_text_config())), tokenizer=_tokenizer(),
        text_encoder_2=_t5_encoder(2), tokenizer_2=_t5_tokenizer())
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_flux(folder: Path) -> None:
    _build_tiny_flux(folder, distilled=True)


def build_tiny_flux_schnell(folder: Path) -> None:
    _build_tiny_flux(folder, distilled=False)


def _build_tiny_controlnet(folder: Path, base: str, seed: int) -> None:
    """A ControlNet made from a built-in checkpoint's UNet, as diffusers' from_unet makes one to
    train. A fresh ControlNet's output convolutions are zeros (it changes nothing until
    trained): here they get small random weights, so that its image visibly steers."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(ensure(base) / "unet", use_safetensors=True)

    def made():
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        _steering(net, torch)
        return net

    _seeded(seed, made).save_pretrained(folder, safe_serialization=True)


def build_tiny_xl_controlnet_union(folder: Path) -> None:
    """A union ControlNet (ControlNetUnionModel: one model, several control types, as xinsir's
    controlnet-union-sdxl) shaped from tiny-xl's UNet, its output layers not zero."""
    import inspect

    import torch
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(ensure("tiny-xl") / "unet", use_safetensors=True)
    shape = ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False).config
    allowed = inspect.signature(ControlNetUnionModel.__init__).parameters
    config = {k: v for k, v in shape.items() if k in allowed}
    width = unet.config.block_out_channels[0]  # its control-type attention works at that width
    config.update(num_trans_channel=width, num_trans_head=2, num_proj_channel=width,
                  conditioning_embedding_out_channels=(8, 8, 16, 16))

    def made():
        net = ControlNetUnionModel(**config)
        _steering(net, torch)
        torch.nn.init.normal_(net.spatial_ch_projs.weight, std=0.3)
        return net

    _seeded(9, made).save_pretrained(folder, safe_serialization=True)


def _steering(net, torch) -> None:
    """A fresh ControlNet's output layers (zeros) made random, and its conditioning embedding
    made to keep the map's scale, so that its image visibly steers."""
    embedding = net.controlnet_cond_embedding
    for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    with torch.no_grad():
        embedding.conv_out.weight *= 8
    for conv in [net.controlnet_mid_block, *net.controlnet_down_blocks]:
        torch.nn.init.normal_(conv.weight, std=0.3)


def build_tiny_controlnet(folder: Path) -> None:
    _build_tiny_controlnet(folder, "tiny", 7)


def build_tiny_xl_controlnet(folder: Path) -> None:
    _build_tiny_controlnet(folder, "tiny-xl", 8)


def build_tiny_vae(folder: Path) -> None:
    """A second tiny VAE with other random weights: same latents, other pixels."""
    _tiny_vae(1).save_pretrained(folder, safe_serialization=True)


# Real architectures with random weights: Stable Diffusion 1.5 and SDXL as published (their
# UNet, VAE and text encoder sizes), for measuring time and memory at the real cost without
# downloading weights. The tokenizer is the byte-level one (its ids fit the real vocabulary).

CLIP_VOCAB = 49408  # the real CLIP vocabulary size: the embedding tables have their real size


def _clip_config(hidden: int, layers: int, heads: int, intermediate: int, act: str,
                 projection: int):
    from transformers import CLIPTextConfig

    vocab = _byte_vocab()
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=MAX_TOKENS,
        hidden_act=act, projection_dim=projection, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])


def _sd_vae(xl: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024 if xl else 512,
        scaling_factor=0.13025 if xl else 0.18215, force_upcast=xl)


def random_sd15_parts() -> dict:
    """SD 1.5's UNet, VAE and text encoder (CLIP ViT-L/14's), randomly initialised."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return {
        "unet": UNet2DConditionModel(sample_size=64, cross_attention_dim=768,
                                     attention_head_dim=8),  # diffusers' defaults are SD 1.x's
        "vae": _sd_vae(xl=False),
        "text_encoder": CLIPTextModel(_clip_config(768, 12, 12, 3072, "quick_gelu", 768)),
    }


def random_sdxl_parts() -> dict:
    """SDXL's UNet, VAE and two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG's, the second
    with its projection), randomly initialised."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {
        "unet": UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816),
        "vae": _sd_vae(xl=True),
        "text_encoder": CLIPTextModel(_clip_config(768, 12, 12, 3072, "quick_gelu", 768)),
        "text_encoder_2": CLIPTextModelWithProjection(
            _clip_config(1280, 32, 20, 5120, "gelu", 1280)),
    }


def _sd_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")


def build_random_sd15(folder: Path, seed: int = 0) -> None:
    """random-sd15, saved in float16 (about 2 GB; a worker loads it in the job's dtype)."""
    import torch
    from diffusers import StableDiffusionPipeline

    parts = _seeded(seed, random_sd15_parts)
    pipe = StableDiffusionPipeline(
        **parts, tokenizer=_tokenizer(), scheduler=_sd_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)


def build_random_sdxl(folder: Path, seed: int = 0) -> None:
    """random-sdxl, saved in float16 (about 7 GB)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    parts = _seeded(seed, random_sdxl_parts)
    pipe = StableDiffusionXLPipeline(**parts, tokenizer=_tokenizer(), tokenizer_2=_tokenizer(),
                                     scheduler=_sd_scheduler())
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)


# SD 3.5 Large's and Flux.1-dev's published transformers and T5-XXL (their configs); the random
# builds keep their widths but fewer blocks (RANDOM_BLOCKS), to fit a machine's memory
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                  attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                  caption_projection_dim=2432, pooled_projection_dim=2048,
                  pos_embed_max_size=192, qk_norm="rms_norm")
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
RANDOM_BLOCKS = {"sd35": {"num_layers": 4}, "flux": {"num_layers": 2, "num_single_layers": 4},
                 "t5": {"num_layers": 2}}  # of 38; 19 and 38; 24


def random_flow_parts(kind: str, full: bool = False) -> dict:
    """SD 3.5 Large's (`sd35`) or Flux.1-dev's (`flux`) transformer, VAE and text encoders at
    their published widths, randomly initialised; the transformer and T5 with RANDOM_BLOCKS of
    their blocks unless `full`."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def fewer(config: dict, part: str) -> dict:
        return config if full else {**config, **RANDOM_BLOCKS[part]}

    clip_l = _clip_config(768, 12, 12, 3072, "quick_gelu", 768)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, use_quant_conv=False,
        use_post_quant_conv=False, scaling_factor=1.5305 if kind == "sd35" else 0.3611,
        shift_factor=0.0609 if kind == "sd35" else 0.1159)
    t5 = T5EncoderModel(T5Config(**fewer(T5_XXL, "t5")))
    if kind == "flux":
        return {"transformer": FluxTransformer2DModel(**fewer(FLUX_DEV, "flux")), "vae": vae,
                "text_encoder": CLIPTextModel(clip_l), "text_encoder_2": t5}
    return {"transformer": SD3Transformer2DModel(**fewer(SD35_LARGE, "sd35")), "vae": vae,
            "text_encoder": CLIPTextModelWithProjection(clip_l),
            "text_encoder_2": CLIPTextModelWithProjection(
                _clip_config(1280, 32, 20, 5120, "gelu", 1280)),
            "text_encoder_3": t5}


def build_random_sd35(folder: Path, seed: int = 0) -> None:
    """random-sd35: SD 3.5 Large's shape with 4 of its 38 blocks and 2 of T5-XXL's 24 (2.2B
    parameters of 13.7B), in bfloat16 (about 4.5 GB)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    parts = _seeded(seed, lambda: random_flow_parts("sd35"))
    pipe = StableDiffusion3Pipeline(
        **parts, tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), tokenizer_3=_t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    pipe.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)


def build_random_flux(folder: Path, seed: int = 0) -> None:
    """random-flux: Flux.1-dev's shape with 2 of its 19 double and 4 of its 38 single blocks
    and 2 of T5-XXL's 24 (2.0B parameters of 16.9B), in bfloat16 (about 4 GB)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    parts = _seeded(seed, lambda: random_flow_parts("flux"))
    pipe = FluxPipeline(
        **parts, tokenizer=_tokenizer(), tokenizer_2=_t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096))
    pipe.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)


# Scorers (farm/scorers.py) with random weights: a CLIP model, LAION's aesthetic MLP on it, and
# Stable Diffusion's safety checker, each as small as its architecture allows -----------------

SCORER_IMAGE = 32  # the tiny scorers' input side: images are resized to it


def _clip_model(seed: int):
    from transformers import CLIPConfig, CLIPModel

    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                  num_hidden_layers=2, image_size=SCORER_IMAGE, patch_size=8)
    config = CLIPConfig(text_config=_text_config().to_dict(), vision_config=vision,
                        projection_dim=16)
    return _seeded(seed, lambda: CLIPModel(config))


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": SCORER_IMAGE},
                              crop_size={"height": SCORER_IMAGE, "width": SCORER_IMAGE})


def build_tiny_clip(folder: Path) -> None:
    """A CLIP model (text and vision towers, 16-wide projections) with its tokenizer and image
    processor, saved as transformers saves one."""
    _clip_model(seed=20).save_pretrained(folder, safe_serialization=True)
    _tokenizer().save_pretrained(folder)
    _image_processor().save_pretrained(folder)


def build_tiny_aesthetic(folder: Path) -> None:
    """LAION's aesthetic predictor shaped small: a CLIP model folder plus the MLP's weights
    (layers.N, linear layers chaining the 16-wide embedding to one score) in
    aesthetic.safetensors."""
    import torch
    from safetensors.torch import save_file

    _clip_model(seed=21).save_pretrained(folder, safe_serialization=True)
    _tokenizer().save_pretrained(folder)
    _image_processor().save_pretrained(folder)
    generator = torch.Generator().manual_seed(22)
    widths = (16, 12, 8, 1)
    tensors = {}
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        tensors[f"layers.{2 * i}.weight"] = torch.randn(width_out, width_in,
                                                        generator=generator) / width_in ** 0.5
        tensors[f"layers.{2 * i}.bias"] = torch.zeros(width_out)
    tensors[f"layers.{2 * (len(widths) - 2)}.bias"] += 5.0  # scores around the scale's middle
    save_file(tensors, str(folder / "aesthetic.safetensors"))


def build_tiny_nsfw(folder: Path) -> None:
    """Stable Diffusion's safety checker on a tiny CLIP vision tower, with random concept
    embeddings and thresholds where about half of all noise images are flagged."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                 num_hidden_layers=2)
    config = CLIPConfig(text_config=small, vision_config={
        **small, "image_size": SCORER_IMAGE, "patch_size": 8}, projection_dim=16)
    checker = _seeded(23, lambda: StableDiffusionSafetyChecker(config))
    generator = torch.Generator().manual_seed(24)
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(checker.concept_embeds.shape,
                                                 generator=generator))
        checker.special_care_embeds.copy_(torch.randn(checker.special_care_embeds.shape,
                                                      generator=generator))
        checker.concept_embeds_weights.fill_(0.27)
        checker.special_care_embeds_weights.fill_(0.5)
    checker.save_pretrained(folder, safe_serialization=True)
    _image_processor().save_pretrained(folder)


def build_instant(folder: Path) -> None:
    """farm's measuring pipeline (instant.py): a model index naming it, and the byte-level
    tokenizer, so that prompts are planned as for any checkpoint. No weights."""
    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer().save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "InstantPipeline", "tokenizer": ["transformers", "CLIPTokenizer"]}))


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny": build_tiny, "tiny-xl": build_tiny_xl, "tiny-xl-refiner": build_tiny_xl_refiner,
    "tiny-sd3": build_tiny_sd3, "tiny-flux": build_tiny_flux,
    "tiny-flux-schnell": build_tiny_flux_schnell, "tiny-vae": build_tiny_vae,
    "random-sd15": build_random_sd15, "random-sdxl": build_random_sdxl,
    "random-sd35": build_random_sd35, "random-flux": build_random_flux,
    "tiny-clip": build_tiny_clip, "tiny-aesthetic": build_tiny_aesthetic,
    "tiny-nsfw": build_tiny_nsfw, "instant": build_instant,
    "tiny-controlnet": build_tiny_controlnet, "tiny-xl-controlnet": build_tiny_xl_controlnet,
    "tiny-inpaint": build_tiny_inpaint, "tiny-xl-inpaint": build_tiny_xl_inpaint,
    "tiny-xl-controlnet-union": build_tiny_xl_controlnet_union}
ROLES: dict[str, str] = {"tiny": "checkpoint", "tiny-xl": "checkpoint",
                         "tiny-xl-refiner": "checkpoint", "tiny-sd3": "checkpoint",
                         "tiny-flux": "checkpoint", "tiny-flux-schnell": "checkpoint",
                         "tiny-vae": "vae",
                         "random-sd15": "checkpoint", "random-sdxl": "checkpoint",
                         "random-sd35": "checkpoint", "random-flux": "checkpoint",
                         "tiny-clip": "scorer", "tiny-aesthetic": "scorer", "tiny-nsfw": "scorer",
                         "instant": "checkpoint", "tiny-controlnet": "controlnet",
                         "tiny-xl-controlnet": "controlnet", "tiny-inpaint": "checkpoint",
                         "tiny-xl-controlnet-union": "controlnet", "tiny-xl-inpaint": "checkpoint"}


# LoRA files in the layouts people share, made from a tiny pipeline's own layers ------------------

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def _sgm(name: str, layers_per_block: int) -> str:
    """A diffusers UNet module name as the original (SGM) code names it, which kohya's SDXL
    LoRAs use: down_blocks.1.attentions.0 -> input_blocks.4.1."""
    parts = name.split(".")
    step = layers_per_block + 1
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        head = f"input_blocks.{1 + int(parts[1]) * step + int(parts[3])}.1"
    elif parts[0] == "up_blocks" and parts[2] == "attentions":
        head = f"output_blocks.{int(parts[1]) * step + int(parts[3])}.1"
    elif parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block.1", *parts[3:]])
    else:
        return name
    return ".".join([head, *parts[4:]])


def _write_kohya_flux_lora(config, path: Path, seed: int, rank: int, scale: float) -> Path:
    """A Flux.1 LoRA as kohya's sd-scripts share them: Black Forest Labs' block names
    (double_blocks.N.img_attn.qkv, one matrix for q, k and v; single_blocks.N.linear2), with
    alpha."""
    import torch
    from safetensors.torch import save_file

    inner = config.num_attention_heads * config.attention_head_dim
    mlp = int(inner * 4.0)  # Flux's MLP ratio
    shapes = {}  # kohya name -> (in, out)
    for i in range(config.num_layers):
        for stream in ("img", "txt"):
            shapes[f"double_blocks_{i}_{stream}_attn_qkv"] = (inner, 3 * inner)
            shapes[f"double_blocks_{i}_{stream}_attn_proj"] = (inner, inner)
    for i in range(config.num_single_layers):
        shapes[f"single_blocks_{i}_linear2"] = (inner + mlp, inner)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (width_in, width_out) in shapes.items():
        key = f"lora_unet_{name}"
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, width_in,
                                                         generator=generator) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(width_out, rank,
                                                       generator=generator) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def write_lora(checkpoint: str, path: Path, layout: str = "kohya", seed: int = 1,
               rank: int = 4, scale: float = 0.1, text_encoders: bool = True) -> Path:
    """A LoRA for built-in checkpoint `checkpoint` (tiny, tiny-xl, tiny-flux; tiny-sd3: peft
    only) with random, non-zero up-weights (so it changes pixels), saved as safetensors in
    `layout`:
        kohya  sd-scripts' keys: lora_unet_.../lora_te_... (lora_te1_/lora_te2_ on SDXL, whose
               UNet keys use the original input_blocks/output_blocks names), with alpha
        peft   diffusers' own: unet.<module>.lora_A/lora_B (transformer.<module>... on SD3 and
               Flux.1), text_encoder(_2).text_model...
    On Flux.1 kohya's layout has Black Forest Labs' block names (_write_kohya_flux_lora).
    """
    import torch
    from safetensors.torch import save_file

    from farm import libraries

    libraries.quiet()
    import diffusers

    folder = ensure(checkpoint)
    if (folder / "transformer").is_dir():  # SD3, Flux.1: a transformer, and its CLIP encoder
        kind = json.loads((folder / "transformer" / "config.json").read_text())["_class_name"]
        unet = getattr(diffusers, kind).from_pretrained(folder, subfolder="transformer")
        parts = [("transformer", unet)]
        if layout == "kohya" and kind == "FluxTransformer2DModel":
            return _write_kohya_flux_lora(unet.config, path, seed, rank, scale)
        if layout != "peft":
            raise ValueError(f"{checkpoint}: LoRAs in the {layout} layout are not written for it")
    else:
        unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        parts = [("unet", unet)]
    if text_encoders:
        from transformers import CLIPTextModel

        names = ["text_encoder"] + (["text_encoder_2"] if checkpoint == "tiny-xl" else [])
        parts += [(n, CLIPTextModel.from_pretrained(folder, subfolder=n)) for n in names]
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for part, module in parts:
        for name, layer in module.named_modules():
            if not isinstance(layer, torch.nn.Linear) or not name.endswith(LORA_TARGETS):
                continue
            name = name.removeprefix("text_model.")  # transformers 4 nests CLIP's layers there
            down = torch.randn(rank, layer.in_features, generator=generator) * scale
            up = torch.randn(layer.out_features, rank, generator=generator) * scale
            if layout == "peft":
                prefix = f"{part}.{name}" if part in ("unet", "transformer") else \
                    f"{part}.text_model.{name}"
                tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = down, up
                continue
            if part == "unet":
                key = "lora_unet_" + (_sgm(name, unet.config.layers_per_block)
                                      if checkpoint == "tiny-xl" else name)
            else:
                te = {"text_encoder": "te", "text_encoder_2": "te2"}[part]
                te = "te1" if te == "te" and checkpoint == "tiny-xl" else te
                key = f"lora_{te}_text_model_{name}"
            key = key.replace(".", "_")
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            tensors[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
