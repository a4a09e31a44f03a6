"""What a benchmark run leaves: a table on the terminal, and <device>-<date>[-name].{json,md,png}."""
import glob
import json
import logging
import math
import os
import warnings
from typing import Dict, List, Optional

import numpy as np

from ..files import write_json

log = logging.getLogger("mage_fast")

# A row whose p20-p80 spans more than this fraction of its median (or whose baseline's does) is
# marked noisy: its speed-up is the ratio of two medians that another run could move by that much.
NOISY_SPREAD = 0.2
NOISY = " (noisy)"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _median_key(row: Dict) -> Optional[str]:
    """The column holding a row's median ms: median_ms (model workloads, whose "ms" lists every
    repeat) or ms (the kernel scripts, with ms_p20 and ms_p80 beside it)."""
    return "median_ms" if "median_ms" in row else "ms" if isinstance(row.get("ms"), float) else None


def _wide(row: Optional[Dict]) -> bool:
    key = row and _median_key(row)
    return bool(key) and row.get("ms_p80") is not None and (row["ms_p80"] - row["ms_p20"]) > NOISY_SPREAD * row[key]


def _baseline_row(row: Dict, rows: List[Dict]) -> Optional[Dict]:
    """The row a row's speed-up is taken over: a model workload's baseline names its
    implementation ("workload: implementation" where another workload's); a kernel row's is the
    implementation of the same case (the fields before "impl")."""
    name = row.get("baseline")
    if not name or not ("implementation" in row or "impl" in row):
        return None
    if "implementation" in row:
        workload, _, impl = name.rpartition(": ")
        return next((r for r in rows if r.get("workload") == (workload or row["workload"])
                     and r.get("implementation") == impl), None)
    case = list(row.items())[:list(row).index("impl")]
    return next((r for r in rows if r.get("impl") == name and list(r.items())[:len(case)] == case), None)


def with_spread(rows: List[Dict]) -> List[Dict]:
    """Copies of rows with ms_p20 and ms_p80 (a model workload's from its repeats) and noisy:
    whether its p20-p80, or its baseline's, is wide (NOISY_SPREAD)."""
    out = []
    for r in rows:
        r = dict(r)
        if isinstance(r.get("ms"), list) and r["ms"]:
            r["ms_p20"], r["ms_p80"] = (float(v) for v in np.percentile(r["ms"], [20, 80]))
        out.append(r)
    for r in out:
        r["noisy"] = _wide(r) or _wide(_baseline_row(r, out))
    return out


def _cells(rows: List[Dict], columns: List[str]):
    """(header, string cells) of a table: p20-p80 after the median's column, and the speed-up of
    a noisy row marked."""
    rows = with_spread(rows)
    spread_after = next((c for c in ("median_ms", "ms") if c in columns and any(r.get("ms_p80") for r in rows)), None)
    header = [h for c in columns for h in ([c, "p20-p80"] if c == spread_after else [c])]

    def cell(r, c):
        if c == "p20-p80":
            return f"{_fmt(r.get('ms_p20'))}-{_fmt(r.get('ms_p80'))}" if r.get("ms_p80") is not None else "-"
        return _fmt(r.get(c)) + (NOISY if c == "speedup" and r["noisy"] and r.get(c) is not None else "")
    return header, [[cell(r, c) for c in header] for r in rows]


def table(rows: List[Dict], columns: List[str]) -> str:
    """A fixed-width text table (what the terminal shows)."""
    header, cells = _cells(rows, columns)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(header)]
    line = "  ".join(c.ljust(w) for c, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def markdown_table(rows: List[Dict], columns: List[str]) -> str:
    header, cells = _cells(rows, columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def print_warnings(caught: List[warnings.WarningMessage], what: str):
    """After the tables: each distinct warning raised while timing `what`, its first line once,
    with how often it came (a fallback's multi-line advice would otherwise land mid-table)."""
    counts = {}
    for w in caught:
        text = f"{w.category.__name__}: {(str(w.message).splitlines() or [''])[0]}"
        counts[text] = counts.get(text, 0) + 1
    if counts:
        print(f"\nwarnings while timing {what}:")
        for text, n in counts.items():
            print(f"  {text}" + (f" (x{n})" if n > 1 else ""))


def stem(record: dict, name: Optional[str] = None) -> str:
    device = record["device"].replace(" ", "_").replace("/", "_")
    return f"{device}-{record['date']}" + (f"-{name}" if name else "")


def write(out_dir: str, record: dict, sections: Dict[str, tuple], name: Optional[str] = None) -> str:
    """sections: title -> (rows, columns). Writes <stem>.json (the record, every row) and
    <stem>.md (the tables); returns the path stem."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem(record, name))
    write_json(path + ".json", {**record, "sections": {t: with_spread(rows) for t, (rows, _) in sections.items()},
                                "columns": {t: columns for t, (_, columns) in sections.items()}}, default=str)
    with open(path + ".md", "w") as f:
        f.write(f"# {record['device']}, {record['date']}\n\n{describe(record)}\n")
        for title, (rows, columns) in sections.items():
            f.write(f"\n## {title}\n\n{markdown_table(rows, columns)}\n")
    return path


def describe_nvml(nvml: dict) -> str:
    """Driver, clocks, power and temperature of each GPU, or why NVML could not say."""
    if "error" in nvml:
        return f"NVML: {nvml['error']}"
    return "; ".join(f"driver {nvml['driver']}, {g['name']}: SM {g['sm_clock_mhz']}/{g['sm_clock_max_mhz']} MHz, "
                     f"memory {g['mem_clock_mhz']} MHz, {g['power_w']} W, {g['temperature_c']} C"
                     for g in nvml.get("gpus", []))


def describe(record: dict) -> str:
    """One paragraph: versions, driver, clocks (NVML before the run), roofline."""
    v = record["versions"]
    parts = [f"torch {v['torch']} (CUDA {v['torch_cuda']}), triton {v['triton']}, python {v['python']}",
             describe_nvml(record.get("nvml") or {})]
    roof = record.get("roofline")
    parts.append(f"roofline: {roof['name']}, {roof['bf16_tflops']} TFLOP/s bf16, {roof['hbm_tbps']} TB/s"
                 if roof else "roofline: none known for this device (no MFU)")
    return "; ".join(p for p in parts if p) + "."


def speedup_bars(title: str, rows: List[Dict]) -> List[tuple]:
    """(label, speed-up) of each of our rows in a section, the label of a noisy row ending in
    NOISY. Model workloads name their implementation and baseline; the kernel scripts share a
    convention: the fields before "impl" name the case, our implementations' names begin with
    "mage_fast", and "speedup" is over the row's "baseline"."""
    bars = []
    for r in with_spread(rows):
        if not r.get("speedup"):
            continue
        mark = NOISY if r["noisy"] else ""
        if "implementation" in r:
            if r.get("baseline") != r["implementation"]:
                bars.append((f"{r['workload']} B{r['batch']}: {r['implementation']} vs {r['baseline']}{mark}",
                             r["speedup"]))
        elif r["impl"].startswith("mage_fast"):
            case = [str(v) for v in list(r.values())[:list(r).index("impl")]]
            bars.append((f"{' '.join([title, *case])}: {r['impl']} vs {r['baseline']}{mark}", r["speedup"]))
    return bars


def plot(path: str, sections: Dict[str, tuple], title: str = "") -> Optional[str]:
    """A bar chart of our speed-ups over the baselines, every section's, to path.png; None, with
    a one-line warning, when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no plot: matplotlib is not installed (`make extras` installs it into .venv)")
        return None
    bars = [bar for t, (rows, _) in sections.items() for bar in speedup_bars(t, rows)]
    if not bars:
        return None
    # Horizontal bars, top to bottom in the tables' order: long labels stay readable.
    labels, values = zip(*reversed(bars))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * len(bars)))
    # Bars from 1x to the speed-up: right of the line is faster than the baseline, left slower;
    # a noisy row's bar is grey, neither a win nor a loss.
    colors = ["#adb5bd" if label.endswith(NOISY) else "#2a9d8f" if v >= 1 else "#e76f51"
              for label, v in zip(labels, values)]
    ax.barh(range(len(values)), [v - 1 for v in values], left=1, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the baseline (x, log scale)")
    ax.set_title(title, fontsize=8, wrap=True)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x ", va="center", ha="left" if v >= 1 else "right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=120)
    plt.close(fig)
    return path + ".png"


# How a full run lists its sections; the model workloads' titles begin with these.
SECTION_ORDER = ("workloads", "train", "finetune", "sampler", "attention", "vq", "token_drop", "decode_step",
                 "mlm_loss")


def collect(out_dir: str, prefix: str) -> List[str]:
    """Merge the per-script results <prefix>-<name>.json (one device and date, e.g. a GPU
    session run in short stages) into <prefix>.{json,md,png}; returns the files written."""
    rank = {name: i for i, name in enumerate(SECTION_ORDER)}
    files = []
    for path in glob.glob(glob.escape(os.path.join(out_dir, prefix)) + "-*.json"):
        with open(path) as f:
            data = json.load(f)
        files += [(rank.get(title.split("-")[0], len(rank)), title, data) for title in data["sections"]]
    if not files:
        raise FileNotFoundError(f"no results {prefix}-*.json in {out_dir}")
    files.sort(key=lambda f: f[:2])
    # The record (device, versions, telemetry) of the first table: `mage-fast bench`'s, if it ran.
    record = {k: v for k, v in files[0][2].items() if k not in ("sections", "columns")}
    sections = {title: (data["sections"][title], data["columns"][title]) for _, title, data in files}
    path = write(out_dir, record, sections)
    return [path + ".json", path + ".md"] + [p for p in [plot(path, sections, describe(record)[:150])] if p]
