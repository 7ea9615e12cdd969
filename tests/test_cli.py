"""The `vismae` command and the repository's pretrain.py and finetune.py: one parser per command,
shared by both entry points, which run the same function; one real tiny `vismae pretrain` run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

from vismae import cli
from vismae.commands import finetune as finetune_command
from vismae.commands import pretrain as pretrain_command
from vismae.shipped_configs import shipped_config

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"pretrain": pretrain_command, "finetune": finetune_command}
ARGUMENTS = {
    "pretrain": ["--config", "a.yaml", "--allow-config-change", "train.max_steps=20", "data.manifests=[x.csv,y.csv]"],
    "finetune": ["--config", "b.yaml", "--folds", "5", "init=random:tiny", "train.epochs=2"],
}


def repository_script(name: str):
    """The repository's <name>.py, imported from its path (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_script_and_the_subcommand_parse_alike_and_run_the_same_function(name, monkeypatch):
    received = []

    def record(args):
        received.append(args)
        return 0

    # Parsers are built per call, so both pick up the recording stand-in for the command's run.
    monkeypatch.setattr(COMMANDS[name], "run", record)
    assert cli.main([name, *ARGUMENTS[name]]) == 0
    assert repository_script(name).main(ARGUMENTS[name]) == 0
    through_cli, through_script = (vars(args) for args in received)
    assert through_cli == through_script
    assert through_cli["func"] is record and through_cli["command"] == name
    if name == "pretrain":
        assert through_cli["allow_config_change"] is True and through_cli["config"] == "a.yaml"
        assert through_cli["overrides"] == ["train.max_steps=20", "data.manifests=[x.csv,y.csv]"]
    else:
        assert through_cli["folds"] == 5 and through_cli["overrides"] == ["init=random:tiny", "train.epochs=2"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_both_entry_points_report_bad_input_in_one_line(name, tmp_path, capsys):
    missing = str(tmp_path / "missing.yaml")
    for main, prefix in ((cli.main, f"vismae {name}"), (repository_script(name).main, name)):
        assert main([name, "--config", missing] if main is cli.main else ["--config", missing]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"{prefix}: error: ") and "missing.yaml" in error and error.count("\n") == 1


def test_pretrain_py_runs_as_a_script():
    result = subprocess.run([sys.executable, str(REPO / "pretrain.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: pretrain.py" in result.stdout and "--allow-config-change" in result.stdout


@pytest.mark.slow
def test_vismae_pretrain_trains_and_pretrain_py_resumes_the_same_run(pretrain_cache, tmp_path):
    run_dir = tmp_path / "run"
    config = str(shipped_config("pretrain", "tiny-test.yaml"))
    overrides = [f"output_dir={run_dir}", f"data.manifests=[{pretrain_cache}]", "log.recon_every_epochs=0"]
    try:
        assert cli.main(["pretrain", "--config", config, *overrides, "train.max_steps=2"]) == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "stopped at train.max_steps" and metrics["step"] == 2
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        assert repository_script("pretrain").main(["--config", config, *overrides, "train.max_steps=3"]) == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["step"] == 3 and [record["step"] for record in metrics["history"]] == [1, 2, 3]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
