"""Data: dataset readers, the manifest contract, pixel preparation, synthetic data, splits."""
