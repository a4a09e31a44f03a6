"""`make extras`: the optional dependencies (pyproject's extras: finetune's timm, fid's
torch-fidelity, plot's matplotlib) installed into this environment without replacing its torch.

`pip install -e ".[finetune]"` lets pip choose torch anew: timm and torch-fidelity need
torchvision, the newest torchvision pins the newest torch, and pip replaces the torch the
extension was built against (a CPU build by a CUDA one and its wheels). Here pip gets a
constraint that torch (and a torchvision already there) stays the installed version, and
torchvision is pinned to the release built for that torch: from PyPI for a torch from PyPI, from
PyTorch's index for its CPU or CUDA builds (2.13.0+cpu), since PyPI's torchvision does not load
beside those. After the install, torchvision is imported beside torch to check.

    python -m mage_fast.extras [--dry-run] [--index-url URL] [finetune] [fid] [plot]
"""
import argparse
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

DEFAULT_EXTRAS = ("finetune", "fid", "plot")
# torch 2.N.P is released with torchvision 0.(N + 15).P (2.4.1 with 0.19.1, 2.13.0 with 0.28.0),
# and each torchvision wheel requires its torch exactly.
TORCHVISION_MINOR_OFFSET = 15
# PyTorch's own index holds its CPU, CUDA and ROCm builds, the local label naming which
# (2.13.0+cpu); PyPI's torchvision is built against PyPI's torch and does not load beside them.
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
BUILD_LABEL = re.compile(r"cpu|cu\d+|rocm[\d.]+")
EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")


def torchvision_for(torch_version: str) -> Tuple[str, Optional[str]]:
    """(requirement, index) of the torchvision built for torch_version: PyPI's release line for
    a torch from PyPI ("2.13.0" -> "torchvision==0.28.*", None), the same build from PyTorch's
    index for one from there ("2.13.0+cpu" -> "torchvision==0.28.0+cpu", its URL). A ValueError
    saying what to do for any other torch (a pre-release or a source build has no release)."""
    m = re.fullmatch(r"2\.(\d+)\.(\d+)(?:\+([\w.]+))?", torch_version)
    if not m or int(m[1]) < 4 or (m[3] and not BUILD_LABEL.fullmatch(m[3])):
        raise ValueError(f"no torchvision release is known to match torch {torch_version} (a released torch "
                         ">= 2.4 has one): install the torchvision built for it by hand, then run this again "
                         "(an installed torchvision is kept)")
    minor = int(m[1]) + TORCHVISION_MINOR_OFFSET
    if m[3]:
        return f"torchvision==0.{minor}.{m[2]}+{m[3]}", PYTORCH_INDEX + m[3]
    return f"torchvision==0.{minor}.*", None


def extra_requirements(requires: List[str], extras: List[str]) -> List[str]:
    """The requirements of `extras` among a distribution's Requires-Dist lines (without their
    markers), in order and once each."""
    known: Dict[str, List[str]] = {}
    for line in requires:
        m = EXTRA_MARKER.search(line)
        if m:
            known.setdefault(m[1], []).append(line.split(";")[0].strip())
    unknown = [e for e in extras if e not in known]
    if unknown:
        raise ValueError(f"unknown extra {', '.join(unknown)}: mage-fast has {', '.join(sorted(known))}")
    return list(dict.fromkeys(r for e in extras for r in known[e]))


def requirement_name(requirement: str) -> str:
    return re.match(r"[\w.-]+", requirement)[0].lower().replace("_", "-")


def plan(extras: List[str], requires: List[str], installed: Dict[str, Optional[str]]):
    """(requirements, constraints, index) for pip: torch constrained to its installed version,
    as is torchvision where installed; where it is not and an extra needs it, the torchvision
    built for the installed torch, and the index that holds it (None: PyPI)."""
    requirements = extra_requirements(requires, extras)
    constraints, index = [f"torch=={installed['torch']}"], None
    if installed.get("torchvision"):
        constraints.append(f"torchvision=={installed['torchvision']}")
    elif any(requirement_name(r) == "torchvision" for r in requirements):
        pinned, index = torchvision_for(installed["torch"])
        requirements = [pinned if requirement_name(r) == "torchvision" else r for r in requirements]
    return requirements, constraints, index


def loads_beside_torch() -> Optional[str]:
    """None where torch and torchvision import together in a fresh interpreter; else the error."""
    proc = subprocess.run([sys.executable, "-c", "import torch, torchvision"], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mage_fast.extras", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("extras", nargs="*", default=list(DEFAULT_EXTRAS),
                        help=f"which extras (default: {' '.join(DEFAULT_EXTRAS)})")
    parser.add_argument("--index-url", help="also look here (for a torch from another index than PyTorch's or PyPI)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command and constraints only")
    args = parser.parse_args(argv)
    installed = {name: installed_version(name) for name in ("torch", "torchvision")}
    try:
        if not installed["torch"]:
            raise ValueError("torch is not installed here: install mage-fast first (make install)")
        requirements, constraints, index = plan(args.extras, importlib.metadata.requires("mage-fast") or [],
                                                installed)
    except (ValueError, importlib.metadata.PackageNotFoundError) as e:
        raise SystemExit(f"extras: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "constraints.txt")
        with open(path, "w") as f:
            f.write("\n".join(constraints) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--constraint", path, *requirements]
        for url in dict.fromkeys(u for u in (index, args.index_url) if u):
            cmd += ["--extra-index-url", url]
        print(f"constraints: {', '.join(constraints)}\n{shlex.join(cmd)}", flush=True)
        if args.dry_run:
            return
        if subprocess.run(cmd).returncode:
            raise SystemExit(f"extras: pip could not install {' '.join(requirements)} beside {constraints[0]}")
    error = installed_version("torchvision") and loads_beside_torch()
    if error:
        raise SystemExit(f"extras: torchvision {installed_version('torchvision')} does not load beside torch "
                         f"{installed['torch']} ({error}); uninstall it and install the build made for this torch")


if __name__ == "__main__":
    main()
