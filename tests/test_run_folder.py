"""The run folder: the saved config and its neutral keys, input digests, checkpoint rotation,
and the lock (a live holder refuses, a killed one does not, one process may nest its holds)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vismae import run_folder
from vismae.config import ConfigError
from vismae.io import absolute_path, input_digest

REPO = Path(__file__).resolve().parents[1]

SAVED = {"output_dir": "/runs/a", "train": {"epochs": 10, "lr": 0.001, "betas": [0.9, 0.95]}, "data": {"num_workers": 4}}


def saved_folder(tmp_path: Path, config: dict = SAVED) -> Path:
    folder = tmp_path / "run"
    run_folder.save_config(folder, config)
    return folder


# --- the saved config ----------------------------------------------------------------------


def test_the_saved_config_is_the_resolved_config_as_yaml(tmp_path):
    folder = saved_folder(tmp_path)
    assert yaml.safe_load((folder / "config.yaml").read_text()) == SAVED
    assert list(yaml.safe_load((folder / "config.yaml").read_text())) == ["output_dir", "train", "data"]  # order kept


def test_neutral_keys_may_change_and_others_are_refused_with_old_and_new_values(tmp_path):
    folder = saved_folder(tmp_path)
    moved = {**SAVED, "output_dir": "/elsewhere", "data": {"num_workers": 0}}
    run_folder.check_config(folder, moved, neutral=("output_dir", "data"))  # a key or any key under it

    changed = {**moved, "train": {"epochs": 10, "lr": 0.1, "betas": (0.9, 0.95)}}  # a tuple equals its list
    with pytest.raises(ConfigError) as error:
        run_folder.check_config(folder, changed, neutral=("output_dir",), what="a sweep", remedy="pick another folder")
    message = str(error.value)
    assert message.startswith(f"{folder} holds a sweep with another config (")
    assert "train.lr: 0.001 -> 0.1" in message and "data.num_workers: 4 -> 0" in message
    assert "output_dir" not in message and "betas" not in message
    assert message.endswith("; pick another folder")

    run_folder.check_config(folder, changed, neutral=("output_dir",), allow_change=True)  # allowed explicitly
    run_folder.check_config(tmp_path / "empty", changed)  # nothing saved: nothing to compare


def test_a_key_added_since_at_its_default_changes_nothing_but_a_removed_one_does(tmp_path):
    folder = saved_folder(tmp_path)
    defaults = {"train": {"clip_grad": None, "epochs": 800}}
    newer = {**SAVED, "train": {**SAVED["train"], "clip_grad": None}}
    run_folder.check_config(folder, newer, defaults=defaults)
    with pytest.raises(ConfigError, match=r"train.clip_grad: '\(absent\)' -> 1.0"):
        run_folder.check_config(folder, {**SAVED, "train": {**SAVED["train"], "clip_grad": 1.0}}, defaults=defaults)
    with pytest.raises(ConfigError, match=r"data.num_workers: 4 -> '\(absent\)'"):
        run_folder.check_config(folder, {key: value for key, value in SAVED.items() if key != "data"}, defaults=defaults)


# --- digests and paths ---------------------------------------------------------------------


def test_the_digest_identifies_the_input_and_not_its_row_order():
    rows = pd.DataFrame({"image_id": ["b", "a", "c"], "split": ["train", "val", "test"], "target": [1, 0, 1]})
    digest = input_digest(rows, ["image_id", "split", "target"])
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert input_digest(rows.iloc[::-1], ["image_id", "split", "target"]) == digest
    assert input_digest(rows.assign(target=[1, 1, 1]), ["image_id", "split", "target"]) != digest
    assert input_digest(rows.assign(target=[1, 1, 1]), ["image_id", "split"]) == input_digest(rows, ["image_id", "split"])
    # The values that run folders saved before the digest was shared: they must still match.
    assert digest == hashlib.sha256(b"image_id,split,target\na,val,0\nb,train,1\nc,test,1\n").hexdigest()[:16]
    assert input_digest(["x.png", "y.png"]) == "6b7ad41fb0c98144"  # lists of strings, in order (image paths)
    assert input_digest(["y.png", "x.png"]) != input_digest(["x.png", "y.png"])


def test_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_path("runs/a") == str(tmp_path / "runs" / "a")
    assert absolute_path(None) is None and absolute_path("") is None
    assert absolute_path("~/x") == str(Path.home() / "x")


# --- checkpoints ---------------------------------------------------------------------------


def fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / run_folder.checkpoint_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / run_folder.STATE_FILE).write_text("{}")
    return path


def test_checkpoints_are_listed_by_step_and_incomplete_ones_ignored(tmp_path):
    fake_checkpoint(tmp_path, 120)
    fake_checkpoint(tmp_path, 9)
    fake_checkpoint(tmp_path, 1000, complete=False)  # no trainer state: never finished
    (tmp_path / ".tmp-step_0000200").mkdir()
    (tmp_path / "notes").mkdir()
    assert [step for step, _ in run_folder.list_checkpoints(tmp_path)] == [9, 120]
    assert run_folder.newest_checkpoint(tmp_path).name == "step_0000120"
    assert run_folder.newest_checkpoint(tmp_path / "absent") is None


def test_prune_keeps_the_newest_and_temporaries_are_removed(tmp_path):
    for step in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, step)
    run_folder.temporary_checkpoint(tmp_path, 5).mkdir()
    run_folder.prune_checkpoints(tmp_path, keep=2)
    run_folder.remove_temporaries(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step_0000003", "step_0000004"]


# --- the lock ------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from vismae import run_folder
    run_folder.FolderLock(sys.argv[1]).acquire()
    print("holding", flush=True)
    time.sleep(600)
    """
)


def start_holder(folder: Path) -> subprocess.Popen:
    """A second process that takes ``folder`` and keeps it until killed."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=environment)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_folder_that_a_live_process_holds_is_refused_at_once_naming_it(tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        with pytest.raises(run_folder.FolderInUseError) as error:
            run_folder.FolderLock(folder).acquire()
        message = str(error.value)
        assert str(folder) in message and f"process {holder.pid} on {socket.gethostname()}" in message
        assert "started 20" in message  # the holder's start time
        with pytest.raises(ValueError):  # the commands report it in one line, like other bad input
            with run_folder.hold(folder):
                pass
        details = json.loads((folder / run_folder.LOCK_FILE).read_text())
        assert details["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (folder / run_folder.LOCK_FILE).is_file()  # the file stays; the lock went with the process
    with run_folder.hold(folder) as lock:
        assert lock.held
        assert json.loads((folder / run_folder.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_one_process_may_hold_a_folder_again_and_folders_inside_it(tmp_path):
    folder = tmp_path / "sweep"
    with run_folder.hold(folder):
        with run_folder.hold(folder):  # the same folder again: nested, not refused
            with run_folder.hold(folder / "runs" / "a"):  # a run inside it
                pass
        # The inner hold's release keeps the outer one: another process is still refused.
        with pytest.raises(subprocess.CalledProcessError) as refused:
            subprocess.run(
                [sys.executable, "-c", "import sys; from vismae import run_folder; run_folder.FolderLock(sys.argv[1]).acquire()", str(folder)],
                env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True,
            )  # fmt: skip
        assert "FolderInUseError" in refused.value.stderr and f"process {os.getpid()}" in refused.value.stderr
    # Released: another process may take it now.
    holder = start_holder(folder)
    holder.kill()
    holder.wait()


def test_clearing_a_folder_keeps_its_lock(tmp_path):
    folder = tmp_path / "run"
    with run_folder.hold(folder), run_folder.hold(folder, name=f"{run_folder.LOCK_FILE}-shard-0-of-2"):
        assert run_folder.holds_only_its_lock(folder)
        (folder / "checkpoints" / "step_0000001").mkdir(parents=True)
        (folder / "history.csv").write_text("epoch\n")
        assert not run_folder.holds_only_its_lock(folder)
        run_folder.clear_folder(folder)
        assert sorted(path.name for path in folder.iterdir()) == [".lock", ".lock-shard-0-of-2"]
