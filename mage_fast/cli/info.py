"""`mage-fast info`: versions, GPU, extension build and op backends: what a bug report needs."""
from ..files import to_json


def register(sub):
    p = sub.add_parser("info", help="versions, GPU, extension build and op backends (paste into bug reports)",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def collect() -> dict:
    from ..backends import backend_report
    from ..telemetry import nvml_snapshot, versions
    return {**versions(), "nvml": nvml_snapshot(), "ops": backend_report()}


def run(args):
    info = collect()
    if args.json:
        print(to_json(info, indent=2, default=str))
        return
    ext = info["extension"]
    print(f"python       {info['python']} ({info['platform']})")
    print(f"torch        {info['torch']} (CUDA {info['torch_cuda'] or 'none'})")
    print(f"triton       {info['triton'] or 'not available'}")
    print(f"numpy        {info['numpy']}")
    print("extension    " + ("not built" if not ext["built"] else
                            f"built: cpu={ext['cpu']} cuda={ext['cuda']} (against torch {ext.get('torch')})"))
    print(f"cuda device  {info['cuda_device'] or 'none'}")
    nvml = info["nvml"]
    if "error" in nvml:
        print(f"nvml         {nvml['error']}")
    else:
        print(f"driver       {nvml['driver']}")
        for g in nvml["gpus"]:
            print(f"gpu {g['index']}        {g['name']}, {g['memory_used_gib']}/{g['memory_total_gib']} GiB, "
                  f"SM {g['sm_clock_mhz']}/{g['sm_clock_max_mhz']} MHz, mem {g['mem_clock_mhz']} MHz, "
                  f"{g['power_w']} W, {g['temperature_c']} C")
    print("ops:" if info["ops"] else "ops:         none registered (everything runs on the PyTorch reference)")
    for name, op in info["ops"].items():
        print(f"  {name:22s} {op['implementation']:12s} {op['reason']}")
