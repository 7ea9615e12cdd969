"""Where the ROI-aware experiment keeps its files: the run folder's names, shared by the code
that writes them (experiment.py) and the code that reads them back (report.py).

    output_dir/
      config.yaml          the resolved experiment config (compared when a run is continued)
      data.json            the rows' composition
      seed_<s>/            one seed's models, predictions.csv and outcome.json
      report/              results.md, results.csv, results.json, roc.png ...
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
PREDICTIONS_FILE = "predictions.csv"
OUTCOME_FILE = "outcome.json"
REPORT_DIR = "report"


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    return Path(output_dir) / f"seed_{seed}"
