"""farm: a declarative batch render farm for diffusion text-to-image models."""

__version__ = "0.1.0"
