from pathlib import Path

from farm import hashes, models, tiny


def weight_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): models.file_hash(p)
            for p in folder.rglob("*.safetensors")}


def test_tiny_is_built_once_in_the_cache(farm_cache):
    folder = tiny.ensure("tiny")
    assert folder.is_relative_to(farm_cache)
    assert (folder / "model_index.json").is_file()
    stamp = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert tiny.ensure("tiny") == folder
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tiny-")]


def test_building_twice_gives_identical_weights(tmp_path):
    tiny.build_tiny(tmp_path / "a")
    tiny.build_tiny(tmp_path / "b")
    a, b = weight_hashes(tmp_path / "a"), weight_hashes(tmp_path / "b")
    assert set(a) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                      "vae/diffusion_pytorch_model.safetensors"}
    assert a == b
    assert hashes.folder_hash(tmp_path / "a") == hashes.folder_hash(tmp_path / "b")


def test_tiny_vae_differs_from_the_checkpoints_own_vae():
    own = models.file_hash(tiny.ensure("tiny") / "vae" / "diffusion_pytorch_model.safetensors")
    swap = models.file_hash(tiny.ensure("tiny-vae") / "diffusion_pytorch_model.safetensors")
    assert own != swap


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FARM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FARM_CACHE")
    assert tiny.cache_dir() == tmp_path / "xdg" / "farm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tiny.cache_dir() == Path.home() / ".cache" / "farm"


def test_the_byte_level_tokenizer_reads_any_text():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny.ensure("tiny") / "tokenizer")
    ids = tokenizer("a red fox, 名前 🦊!").input_ids
    unknown = tokenizer.convert_tokens_to_ids(tokenizer.unk_token)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert unknown not in ids[1:-1] and len(ids) > 10


def test_the_random_real_architectures_have_the_published_sizes():
    """random-sd15 and random-sdxl, built on the meta device (no memory, no weights): their
    parameter counts are those of Stable Diffusion 1.5's and SDXL's published models."""
    import torch

    from farm import libraries, tiny

    libraries.quiet()
    with torch.device("meta"):
        sd15 = {k: sum(p.numel() for p in m.parameters())
                for k, m in tiny.random_sd15_parts().items()}
        sdxl = {k: sum(p.numel() for p in m.parameters())
                for k, m in tiny.random_sdxl_parts().items()}
    assert sd15 == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert sdxl == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                    "text_encoder_2": 694_659_840}


def test_the_random_flow_architectures_are_the_published_ones_with_fewer_blocks():
    """random-sd35 and random-flux: SD 3.5 Large's and Flux.1-dev's transformers and T5-XXL,
    whole (on the meta device) of their published sizes; built with fewer blocks, as wide."""
    import torch

    from farm import libraries

    libraries.quiet()

    def counts(kind: str, full: bool) -> dict[str, int]:
        with torch.device("meta"):
            return {k: sum(p.numel() for p in m.parameters())
                    for k, m in tiny.random_flow_parts(kind, full).items()}

    sd35, flux = counts("sd35", True), counts("flux", True)
    assert sd35["transformer"] == 8_056_627_520 and flux["transformer"] == 11_901_408_320
    assert sd35["text_encoder_3"] == flux["text_encoder_2"] == 4_762_310_656  # T5-XXL's encoder
    assert sd35["text_encoder_2"] == 694_659_840  # OpenCLIP ViT-bigG, as SDXL's
    small = counts("flux", False)
    assert 1e9 < small["transformer"] < 2e9 and small["vae"] == flux["vae"]
