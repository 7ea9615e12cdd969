"""vismae: Swin masked-autoencoder pretraining and ROI-aware finetuning on mammograms."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str):
    # Imported on first use, so that `import vismae` (and `vismae --help`) does not pull in torch.
    if name == "load_encoder":
        from vismae.models.weights import load_encoder

        return load_encoder
    raise AttributeError(f"module 'vismae' has no attribute {name!r}")
