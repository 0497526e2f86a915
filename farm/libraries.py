"""diffusers and transformers, made quiet: they log and draw progress bars per load, and a farm
loads often. Imported by the modules that load or build models, never by planning."""

from __future__ import annotations


def quiet() -> None:
    """Silence the libraries' per-load logging and progress bars (idempotent)."""
    import warnings

    import transformers  # before diffusers, whose imports trigger transformers' warnings

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated")
    # peft says so each time a second LoRA joins a model: farm keeps several loaded on purpose
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
