"""Tables and plots of the ResNet comparison from ``bench_resnet.py``'s JSON results.

    python benchmarks/plot_resnet.py [benchmarks/results/resnet.json]

Writes ``benchmarks/results/resnet_conv_*.png`` and ``resnet_train.png`` (images/s and speedup
against batch size, one line per engine, one row of panels per thread setting) and replaces the
generated part of ``benchmarks/results/resnet.md`` (between the ``generated`` markers; the
text around it is kept).

Reductions: a figure is the best over repeats. A torch figure is the faster of the plain and
the tuned-malloc run (the issue's fairness rule; the tables mark which won: ``t`` = tuned
malloc). Speedup is images/s divided by PyTorch's native path (oneDNN off) with as many threads
as cores, at the same batch size. streamq's pinned workers do not oversubscribe, so its one
measurement is drawn in every thread setting.
"""

from __future__ import annotations

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MD = os.path.join(RESULTS, "resnet.md")
BEGIN, END = "<!-- generated:start -->", "<!-- generated:end -->"
LABELS = {"streamq": "streamq", "torch": "PyTorch oneDNN", "torch-native": "PyTorch native"}
COMMAND = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_resnet.py"


def _key(res: dict) -> tuple:
    spec = res["spec"]
    return spec["engine"], spec.get("factor")


def best_rows(results: list[dict], fields: tuple[str, ...]) -> dict:
    """{(engine, factor, *fields): (best img_s or ms, malloc, load)} over repeats and mallocs.

    Rates (``img_s``) keep the largest value, times (``ms``) the smallest.
    """
    out: dict = {}
    for res in results:
        if "error" in res:
            continue
        engine, factor = _key(res)
        for row in res["rows"]:
            key = (engine, factor) + tuple(row[f] for f in fields)
            rate = "img_s" in row
            value = row["img_s"] if rate else row["ms"]
            old = out.get(key)
            if old is None or (value > old[0] if rate else value < old[0]):
                out[key] = (value, res["spec"]["malloc"], row.get("load"))
    return out


def factors_of(results: list[dict]) -> list[int]:
    """The torch thread factors measured (1 = threads equal cores)."""
    return sorted({res["spec"]["factor"] for res in results
                   if "error" not in res and res["spec"].get("factor") is not None})


def lookup(best: dict, engine: str, factor, *rest):
    """A best value; streamq ignores the thread factor; None if not measured."""
    hit = best.get((engine, None if engine == "streamq" else factor) + rest)
    return hit


def _fmt(hit, digits=1) -> str:
    if hit is None:
        return "-"
    value, malloc, _ = hit
    return f"{value:.{digits}f}" + (" t" if malloc == "tuned" else "")


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or not b[0] else f"{a[0] / b[0]:.2f}"


def _loads(results: list[dict]) -> str:
    vals = [v for r in results if "error" not in r for v in (r.get("load_before"), r.get("load_after"))
            if v is not None]
    return f"{min(vals):.1f}-{max(vals):.1f}" if vals else "?"


def rate_table(results, best, factor, batches, rest=()) -> list[str]:
    """Markdown rows: batch | images/s per engine | streamq / each torch engine."""
    lines = ["| batch | streamq img/s | PyTorch oneDNN img/s | PyTorch native img/s | streamq / oneDNN | "
             "streamq / native |", "|---|---|---|---|---|---|"]
    for n in batches:
        s = lookup(best, "streamq", factor, *rest, n)
        t = lookup(best, "torch", factor, *rest, n)
        nat = lookup(best, "torch-native", factor, *rest, n)
        lines.append(f"| {n} | {_fmt(s)} | {_fmt(t)} | {_fmt(nat)} | {_ratio(s, t)} | {_ratio(s, nat)} |")
    return lines


def plot_rates(results, best, batches, rest, title, path) -> None:
    """images/s and speedup over torch native (threads = cores) against batch size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    factors = factors_of(results)
    fig, axes = plt.subplots(len(factors), 2, figsize=(11, 3.6 * len(factors)), squeeze=False)
    for row, f in enumerate(factors):
        for engine, label in LABELS.items():
            pts = [(n, lookup(best, engine, f, *rest, n)) for n in batches]
            pts = [(n, h[0]) for n, h in pts if h is not None]
            base = {n: lookup(best, "torch-native", 1, *rest, n) for n in batches}
            sp = [(n, v / base[n][0]) for n, v in pts if base.get(n)]
            style = "o-" if engine == "streamq" else "s--" if engine == "torch" else "^:"
            if pts:
                axes[row][0].plot(*zip(*pts), style, label=label)
            if sp:
                axes[row][1].plot(*zip(*sp), style, label=label)
        axes[row][0].set_title(f"images/s, PyTorch threads = {f}x cores", fontsize=9)
        axes[row][1].set_title(f"speedup over PyTorch native (threads = cores); PyTorch threads = {f}x cores",
                               fontsize=9)
        for ax in axes[row]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_xlabel("batch size")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[row][0].set_ylabel("images/s")
        axes[row][1].set_ylabel("speedup")
    fig.suptitle(f"{title} (streamq: its pinned workers, one per core, in every row)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def conv_section(data: dict) -> list[str]:
    results = data["conv"]
    best = best_rows(results, ("layer", "batch"))
    layers = sorted({k[2] for k in best})
    batches = sorted({k[3] for k in best})
    out = [f"## (a) One conv2d layer, forward (load average during the runs: {_loads(results)})", ""]
    for layer in layers:
        png = f"resnet_conv_{_slug(layer)}.png"
        plot_rates(results, best, batches, (layer,), f"conv {layer}", os.path.join(RESULTS, png))
        for f in factors_of(results):
            out += [f"### {layer}, PyTorch threads = {f}x cores", ""]
            out += rate_table(results, best, f, batches, (layer,)) + [""]
        out += [f"![conv {layer}]({png})", ""]
    return out


def passes_section(data: dict) -> list[str]:
    results = data["passes"]
    best = best_rows(results, ("layer", "pass"))
    batch = next((r["rows"][0]["batch"] for r in results if "error" not in r and r["rows"]), "?")
    out = [f"## Convolution passes at batch {batch}, threads = cores (ms, best; load {_loads(results)})", "",
           "| layer | pass | streamq | PyTorch oneDNN | PyTorch native | oneDNN / streamq | native / streamq |",
           "|---|---|---|---|---|---|---|"]
    for layer in sorted({k[2] for k in best}):
        for p in ("forward", "backward_data", "backward_filter"):
            s, t, n = (lookup(best, e, 1, layer, p) for e in ("streamq", "torch", "torch-native"))
            out.append(f"| {layer} | {p} | {_fmt(s, 2)} | {_fmt(t, 2)} | {_fmt(n, 2)} | {_ratio(t, s)} | "
                       f"{_ratio(n, s)} |")
    return out + ["", "(ratio > 1: streamq is faster)", ""]


def train_section(data: dict) -> list[str]:
    results = data["train"]
    best = best_rows(results, ("batch",))
    batches = sorted({k[2] for k in best})
    plot_rates(results, best, batches, (), "ResNet-50 training 224x224", os.path.join(RESULTS, "resnet_train.png"))
    out = [f"## (b) ResNet-50 training, 224x224 (forward + backward + SGD step; load {_loads(results)})", ""]
    for f in factors_of(results):
        out += [f"### PyTorch threads = {f}x cores", ""] + rate_table(results, best, f, batches) + [""]
    out += ["![ResNet-50 training](resnet_train.png)", ""]
    s16, t16 = lookup(best, "streamq", 1, 16), lookup(best, "torch", 1, 16)
    t16x4 = lookup(best, "torch", 4, 16)
    if s16 and t16:
        out += ["Speed target (batch 16, threads = cores): streamq / PyTorch NCHW (faster malloc) = "
                f"**{s16[0] / t16[0]:.2f}x** (target >= 1.0)"
                + (f"; vs PyTorch with 4x threads = **{s16[0] / t16x4[0]:.2f}x** (target > 1.0)" if t16x4 else ""),
                ""]
    return out


def profile_section(data: dict) -> list[str]:
    results = [r for r in data["profile"] if "error" not in r]
    if not results:
        return []
    sq = next((r for r in results if r["spec"]["engine"] == "streamq"), None)
    torches = [r for r in results if r["spec"]["engine"] == "torch"]
    tq = min(torches, key=lambda r: r["wall_ms"]) if torches else None
    kinds: dict = {}
    for label, res in (("streamq", sq), ("torch", tq)):
        for kind, value in (res["ms"] if res else {}).items():
            kind = "conv bwd data+filter" if kind.startswith("conv bwd") else kind
            kinds.setdefault(kind, {})[label] = kinds.get(kind, {}).get(label, 0.0) + value
    batch = (sq or tq)["batch"]
    out = [f"## Where a ResNet-50 training step goes (batch {batch}, threads = cores)", "",
           "streamq: kernel time per op kind from the queue log; PyTorch oneDNN "
           f"({'tuned' if tq and tq['spec']['malloc'] == 'tuned' else 'plain'} malloc, the faster step): "
           "total CPU time of the outermost op of each kind from `torch.profiler` (PyTorch times a conv's "
           "data and filter gradients as one op). Load average when each run started: "
           + ", ".join(f"{r['spec']['engine']} ({r['spec']['malloc']}) {r.get('load_before')}" for r in results)
           + ".", "",
           "| op kind | streamq ms | streamq % | PyTorch ms | PyTorch % | streamq / PyTorch |",
           "|---|---|---|---|---|---|"]

    def row(kind, s, t):
        sp = f"{100 * s / sq['wall_ms']:.1f}" if s is not None and sq else "-"
        tp = f"{100 * t / tq['wall_ms']:.1f}" if t is not None and tq else "-"
        ratio = f"{s / t:.2f}" if s and t else "-"
        return (f"| {kind} | {'-' if s is None else f'{s:.1f}'} | {sp} | {'-' if t is None else f'{t:.1f}'} | "
                f"{tp} | {ratio} |")

    for kind in sorted(kinds, key=lambda k: -max(kinds[k].values())):
        out.append(row(kind, kinds[kind].get("streamq"), kinds[kind].get("torch")))
        if kind == "conv bwd data+filter" and sq:
            for part in ("conv bwd data", "conv bwd filter"):
                if part in sq["ms"]:
                    out.append(row(f"&nbsp;&nbsp;of which {part[5:]}", sq["ms"][part], None))
    if sq and tq:
        out.append(f"| **profiled step wall** | {sq['wall_ms']:.0f} | | {tq['wall_ms']:.0f} | | "
                   f"{sq['wall_ms'] / tq['wall_ms']:.2f} |")
        if "unprofiled_ms" in sq and "unprofiled_ms" in tq:
            out.append(f"| unprofiled step (best warm-up step) | {sq['unprofiled_ms']:.0f} | | "
                       f"{tq['unprofiled_ms']:.0f} | | {sq['unprofiled_ms'] / tq['unprofiled_ms']:.2f} |")
    return out + [""] + conv_shapes_table(sq, tq)


def conv_shapes_table(sq, tq) -> list[str]:
    """Per ResNet-50 convolution shape (all layers of that shape in one step): ms and GFLOP/s."""
    if not sq or "conv_shapes" not in sq:
        return []
    ts = (tq or {}).get("conv_shapes", {})
    batch = sq.get("batch", 16)
    out = ["### Convolutions of that step by shape (ms summed over the layers of the shape)", "",
           "GFLOP/s = 2·N·K·C·R·S·P·Q per pass / time (a ResNet-50 layer is identified by C->K, input "
           "HxW and filter RxS).", "",
           "| conv C->K HxW RxS | layers | streamq fwd | PyTorch fwd | streamq bwd data | streamq bwd filter | "
           "PyTorch bwd (both) | streamq GFLOP/s fwd / data / filter | streamq / PyTorch (fwd+bwd) |",
           "|---|---|---|---|---|---|---|---|---|"]

    def flops(key) -> float:
        cin_k, hw, rs = key.split()
        c, k = map(int, cin_k.split("->"))
        h = int(hw.split("x")[0])
        r = int(rs.split("x")[0])
        stride = 2 if key in STRIDED else 1
        pad = r // 2
        p = (h + 2 * pad - r) // stride + 1
        return 2.0 * batch * k * c * r * r * p * p

    def f(v):
        return "-" if v is None else f"{v:.1f}"

    def ms(d, kind):
        return d[kind]["ms"] if kind in d else None

    rows = sorted(sq["conv_shapes"].items(), key=lambda kv: -sum(c["ms"] for c in kv[1].values()))
    for key, d in rows:
        t = ts.get(key, {})
        fl = flops(key)
        gf = " / ".join("-" if kind not in d else f"{fl * d[kind]['calls'] / d[kind]['ms'] / 1e6:.0f}"
                        for kind in ("conv fwd", "conv bwd data", "conv bwd filter"))
        tot_s = sum(c["ms"] for c in d.values())
        tot_t = sum(c["ms"] for c in t.values()) if t else None
        layers = max(c["calls"] for c in d.values())
        out.append(f"| {key} | {layers} | {f(ms(d, 'conv fwd'))} | {f(ms(t, 'conv fwd'))} | "
                   f"{f(ms(d, 'conv bwd data'))} | {f(ms(d, 'conv bwd filter'))} | "
                   f"{f(ms(t, 'conv bwd data+filter'))} | {gf} | {'-' if not tot_t else f'{tot_s / tot_t:.2f}'} |")
    return out + ["", "(streamq / PyTorch > 1: streamq is slower)", ""]


#: ResNet-50 convolutions with stride 2 (v1.5: the 3x3 of each stage's first block, the shortcuts
#: of stages 2-4, and the 7x7 stem), by the key of ``conv_shapes``.
STRIDED = {"3->64 224x224 7x7", "128->128 56x56 3x3", "256->256 28x28 3x3", "512->512 14x14 3x3",
           "256->512 56x56 1x1", "512->1024 28x28 1x1", "1024->2048 14x14 1x1"}


def generated(data: dict) -> str:
    meta = data["meta"]
    blas = ", ".join(f"{b['internal_api']} {b.get('version') or ''} {b.get('architecture') or ''} "
                     f"({b['num_threads']} threads)" for b in meta.get("blas", []))
    kind = "--quick" if meta["quick"] else "full"
    lines = [f"Generated by `plot_resnet.py` from `resnet.json` ({meta['date']}, {kind} run, "
             f"{meta['cores']} cores, load average {meta['load_start']} at the start, "
             f"{meta.get('load_end')} at the end). BLAS (threadpoolctl): {blas}."
             + "".join(f" Re-run later with `--only {' '.join(r['experiments'])}`: {r['date']}, load "
                       f"{r['load_start']} -> {r.get('load_end')}." for r in meta.get("reruns", [])), "",
             "Cells: best images/s (or ms) over repeats; torch cells are the faster of plain and "
             "tuned malloc, `t` marks tuned. streamq runs its pinned workers (one per core) in every "
             "thread setting.", ""]
    for name, fn in (("conv", conv_section), ("passes", passes_section), ("train", train_section),
                     ("profile", profile_section)):
        if data.get(name):
            lines += fn(data)
    errors = [r for k in ("conv", "passes", "train", "profile") for r in data.get(k, []) if "error" in r]
    if errors:
        lines += ["## Failed runs", ""] + [f"- {r['spec'] if 'spec' in r else r.get('engine')}: "
                                           f"{r['error'].splitlines()[-1] if r['error'] else '?'}" for r in errors]
    return "\n".join(lines).rstrip() + "\n"


def write_md(text: str, path: str = MD) -> None:
    """Replace the generated block of ``path`` (or create the file with a header)."""
    if os.path.exists(path):
        with open(path) as fh:
            old = fh.read()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            new = head + BEGIN + "\n" + text + END + tail
        else:
            new = old.rstrip() + "\n\n" + BEGIN + "\n" + text + END + "\n"
    else:
        new = (f"# ResNet comparison: streamq vs PyTorch CPU\n\nRegenerate (a few minutes with `--quick`):\n\n"
               f"    {COMMAND} [--quick]\n\n{BEGIN}\n{text}{END}\n")
    with open(path, "w") as fh:
        fh.write(new)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(RESULTS, "resnet.json")
    with open(path) as fh:
        data = json.load(fh)
    write_md(generated(data))
    print(f"wrote {MD} and the PNGs in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
