"""`make extras`: the optional packages pinned to the installed torch (never replacing it), and
torchvision from the release line made for that torch."""
import re
from pathlib import Path

import pytest

from mage_fast import extras

REQUIRES = ["torch>=2.4", "numpy", "pytest; extra == \"test\"", "matplotlib; extra == \"plot\"",
            "torch-fidelity; extra == \"fid\"", "torchvision; extra == \"fid\"",
            "timm<2,>=1.0.29; extra == 'finetune'", "torchvision; extra == 'finetune'"]


@pytest.mark.parametrize("torch_version, torchvision, index", [
    ("2.13.0", "torchvision==0.28.*", None), ("2.14.1", "torchvision==0.29.*", None),
    ("2.6.0", "torchvision==0.21.*", None),
    # PyTorch's own builds: the same build of torchvision, from the same index (PyPI's CUDA
    # torchvision 0.28.0 beside torch 2.13.0+cpu fails to import: "operator torchvision::nms
    # does not exist").
    ("2.13.0+cpu", "torchvision==0.28.0+cpu", "https://download.pytorch.org/whl/cpu"),
    ("2.4.1+cu121", "torchvision==0.19.1+cu121", "https://download.pytorch.org/whl/cu121"),
    ("2.5.1+rocm6.2", "torchvision==0.20.1+rocm6.2", "https://download.pytorch.org/whl/rocm6.2")])
def test_torchvision_follows_the_torch_release(torch_version, torchvision, index):
    assert extras.torchvision_for(torch_version) == (torchvision, index)


@pytest.mark.parametrize("torch_version", [
    "2.7.0a0+git1234abc", "2.6.0+git1234abc", "2.6.0.dev20250101", "1.13.1", "2.3.1", "3.0.0"])
def test_a_torch_without_a_known_torchvision_is_a_clear_message(torch_version):
    with pytest.raises(ValueError, match=f"no torchvision release is known to match torch {re.escape(torch_version)} .*"
                                         "install the torchvision built for it by hand"):
        extras.torchvision_for(torch_version)


def test_the_plan_constrains_torch_to_the_installed_build():
    requirements, constraints, index = extras.plan(["finetune", "fid", "plot"], REQUIRES,
                                                   {"torch": "2.13.0+cpu", "torchvision": None})
    assert constraints == ["torch==2.13.0+cpu"] and index == "https://download.pytorch.org/whl/cpu"
    assert requirements == ["timm<2,>=1.0.29", "torchvision==0.28.0+cpu", "torch-fidelity", "matplotlib"]
    # A torchvision already there is kept as it is, like torch.
    assert extras.plan(["fid"], REQUIRES, {"torch": "2.13.0", "torchvision": "0.28.0"}) == (
        ["torch-fidelity", "torchvision"], ["torch==2.13.0", "torchvision==0.28.0"], None)
    assert extras.plan(["plot"], REQUIRES, {"torch": "2.7.0a0+git", "torchvision": None}) == (
        ["matplotlib"], ["torch==2.7.0a0+git"], None)   # no torchvision needed: no release to match
    with pytest.raises(ValueError, match="unknown extra gpu: mage-fast has fid, finetune, plot, test"):
        extras.plan(["gpu"], REQUIRES, {"torch": "2.13.0"})


def test_the_installed_package_declares_torchvision_where_its_extras_need_it():
    """pyproject's extras, as make extras reads them (timm and torch-fidelity import torchvision)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    for extra in ("finetune", "fid"):
        assert "torchvision" in project["optional-dependencies"][extra]


def test_dry_run_names_the_installed_torch(capsys, monkeypatch):
    monkeypatch.setattr(extras.importlib.metadata, "requires", lambda name: REQUIRES)
    monkeypatch.setattr(extras, "installed_version", {"torch": "2.13.0+cpu", "torchvision": None}.get)
    extras.main(["--dry-run", "finetune"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "constraints: torch==2.13.0+cpu"
    assert out[1].endswith("-m pip install --constraint " + out[1].split("--constraint ")[1].split()[0]
                           + " 'timm<2,>=1.0.29' torchvision==0.28.0+cpu"
                           " --extra-index-url https://download.pytorch.org/whl/cpu")
    monkeypatch.setattr(extras, "installed_version", {"torch": "2.7.0a0+git", "torchvision": None}.get)
    with pytest.raises(SystemExit, match="^extras: no torchvision release is known to match torch 2.7.0a0"):
        extras.main(["finetune"])
