"""The one reading of ``random:<preset>`` encoder sources."""

from pathlib import Path

import pytest

from vismae.models.random_init import random_preset


@pytest.mark.parametrize(
    "source, preset",
    [("random:tiny", "tiny"), ("random:vismae", "vismae"), ("random:", ""), ("runs/x/encoder.safetensors", None),
     (Path("random/encoder.safetensors"), None), ("my-random:tiny", None)],
)  # fmt: skip
def test_random_preset_names_the_preset_or_none_for_a_path(source, preset):
    assert random_preset(source) == preset


def test_configs_keep_random_sources_and_make_paths_absolute(tmp_path, monkeypatch):
    from vismae.engine.finetune_config import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    assert FinetuneConfig().for_run("random:tiny", "classify", "run").init == "random:tiny"
    assert FinetuneConfig().for_run("weights.safetensors", "classify", "run").init == str(tmp_path / "weights.safetensors")
