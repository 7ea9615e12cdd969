"""The shipped configs live in the package (vismae/configs/, shown as configs/ at the repository
root), are package data of the wheel, and are found through importlib.resources."""

import tomllib
from pathlib import Path

import pytest

from vismae.shipped_configs import shipped_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vismae"


def test_the_root_configs_folder_is_the_packages():
    assert (REPO / "configs").resolve() == (PACKAGE / "configs").resolve()


def test_every_shipped_config_is_package_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vismae"]
    shipped = {path.relative_to(PACKAGE) for path in (PACKAGE / "configs").rglob("*") if path.is_file()}
    packaged = {path.relative_to(PACKAGE) for pattern in patterns for path in PACKAGE.glob(pattern)}
    assert shipped and not shipped - packaged, f"not package data: {sorted(map(str, shipped - packaged))}"


@pytest.mark.parametrize(
    "parts",
    [("pretrain", "demo.yaml"), ("finetune", "demo-classify.yaml"), ("finetune", "demo-segment.yaml"),
     ("roi_aware", "demo.yaml"), ("sweep", "demo.yaml")],  # fmt: skip
)
def test_the_demo_configs_are_found_in_the_package(parts):
    path = shipped_config(*parts)
    assert path.is_file() and path == PACKAGE.joinpath("configs", *parts)


def test_a_missing_config_names_what_there_is():
    with pytest.raises(FileNotFoundError, match=r"configs/pretrain/nope.yaml; that folder has: demo.yaml, .*tiny-test.yaml"):
        shipped_config("pretrain", "nope.yaml")
    assert shipped_config("finetune").is_dir()
