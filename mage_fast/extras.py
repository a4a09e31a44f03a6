"""`make extras`: the optional dependencies (pyproject's extras: finetune's timm, fid's
torch-fidelity, plot's matplotlib) installed into this environment without replacing its torch.

`pip install -e ".[finetune]"` lets pip choose torch anew: timm and torch-fidelity need
torchvision, the newest torchvision pins the newest torch, and pip replaces the torch the
extension was built against (a CPU build by a CUDA one and its wheels). Here pip gets a
constraint that torch (and a torchvision already there) stays the installed version, and
torchvision is pinned to the release line built for that torch.

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
from typing import Dict, List, Optional

DEFAULT_EXTRAS = ("finetune", "fid", "plot")
# torch 2.N is released with torchvision 0.(N + 15) (2.4 with 0.19, 2.13 with 0.28), and each
# torchvision wheel requires its torch exactly; pip picks the patch release that fits.
TORCHVISION_MINOR_OFFSET = 15
EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")


def torchvision_for(torch_version: str) -> str:
    """The torchvision requirement of the release line built for torch_version (a released
    2.x, local label allowed: "2.13.0+cpu" -> "torchvision==0.28.*"); a ValueError saying what
    to do for any other (a pre-release or a source build has no release to match)."""
    m = re.fullmatch(r"2\.(\d+)\.(\d+)(\+[\w.]+)?", torch_version)
    if not m or int(m[1]) < 4:
        raise ValueError(f"no torchvision release is known to match torch {torch_version} (a released torch "
                         ">= 2.4 has one): install the torchvision built for it by hand, then run this again "
                         "(an installed torchvision is kept)")
    return f"torchvision==0.{int(m[1]) + TORCHVISION_MINOR_OFFSET}.*"


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
    """(requirements, constraints) for pip: torch constrained to its installed version, as is
    torchvision where installed; where it is not and an extra needs it, the release line of the
    installed torch."""
    requirements = extra_requirements(requires, extras)
    constraints = [f"torch=={installed['torch']}"]
    if installed.get("torchvision"):
        constraints.append(f"torchvision=={installed['torchvision']}")
    elif any(requirement_name(r) == "torchvision" for r in requirements):
        pinned = torchvision_for(installed["torch"])
        requirements = [pinned if requirement_name(r) == "torchvision" else r for r in requirements]
    return requirements, constraints


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
    parser.add_argument("--index-url", help="also look here for torchvision (e.g. PyTorch's index of the CPU or CUDA "
                                            "builds your torch came from)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command and constraints only")
    args = parser.parse_args(argv)
    installed = {name: installed_version(name) for name in ("torch", "torchvision")}
    try:
        if not installed["torch"]:
            raise ValueError("torch is not installed here: install mage-fast first (make install)")
        requirements, constraints = plan(args.extras, importlib.metadata.requires("mage-fast") or [], installed)
    except (ValueError, importlib.metadata.PackageNotFoundError) as e:
        raise SystemExit(f"extras: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "constraints.txt")
        with open(path, "w") as f:
            f.write("\n".join(constraints) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--constraint", path, *requirements]
        cmd += ["--extra-index-url", args.index_url] if args.index_url else []
        print(f"constraints: {', '.join(constraints)}\n{shlex.join(cmd)}", flush=True)
        if not args.dry_run and subprocess.run(cmd).returncode:
            raise SystemExit(f"extras: pip could not install {' '.join(requirements)} beside {constraints[0]}")


if __name__ == "__main__":
    main()
