"""vismae: Swin masked-autoencoder pretraining and ROI-aware finetuning on mammograms."""

__version__ = "0.1.0"
