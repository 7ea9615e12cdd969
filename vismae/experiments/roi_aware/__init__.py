"""The ROI-aware experiment of the ROI paper: per-view, per-ROI-presence classifiers, their
merged predictions, and the baselines an honest report needs beside them (see experiment.py)."""
