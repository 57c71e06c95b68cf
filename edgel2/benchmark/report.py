"""The benchmark report read at a glance: the machine it ran on, the table, the
``fastest:`` line and the chart."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from edgel2.variants import COLOR, MARKER, RING_SIZE, SHORT_NAME


def machine(load: float | None = None) -> dict:
    """CPU model, cores, clock, load and library versions."""
    from edgel2.backend import library_versions
    from edgel2.runtime.choices import cpu_model

    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":", 1)[1])
                break
    except (OSError, ValueError):
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "mhz": mhz, "load_1min_at_start": load,
            "platform": platform.platform(), "versions": library_versions()}


def format_table(report: dict) -> str:
    """The benchmark report as a table read at a glance.

    Args:
        report: What :func:`~edgel2.benchmark.benchmark` returned.

    Returns:
        One line per row: runtime, precision, size, top-1, latency percentiles, throughput per
        batch size and the speed-up against Keras fp32 in the same run (or the row's status
        and reason).

    Examples:
        >>> print(format_table(benchmark("runs/train/exp/model.keras")))    # doctest: +SKIP
    """
    sizes = report["batch_sizes"]
    several = _several(report)
    width = max([len(r["model"]) for r in report["rows"]] + [5]) if several else 0

    def model(r: dict) -> str:
        return f"{r['model']:<{width}} " if several else ""

    head = ((f"{'model':<{width}} " if several else "")
            + f"{'runtime':<13} {'prec':<7} {'size MB':>7} {'top-1 %':>7} {'p50 ms':>7} "
            f"{'p90 ms':>7} {'p99 ms':>7} " + " ".join(f"{'img/s b' + str(b):>10}" for b in sizes)
            + f" {'x Keras':>8}  status")
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        name = SHORT_NAME[r["format"]]
        if "throughput" not in r:
            lines.append(f"{model(r)}{name:<13} {r['precision']:<7} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {'-':>7} "
                         + " ".join(f"{'-':>10}" for _ in sizes) + f" {'-':>8}  {r['status']}: {r['reason']}")
            continue
        lat = r["latency_ms"]
        speed = r.get("speedup", {}).get(str(sizes[-1]))
        lines.append(
            f"{model(r)}{name:<13} {r['precision']:<7} {r['size_mb']:>7.2f} "
            f"{'-' if r['accuracy'] is None else format(100 * r['accuracy'], '.2f'):>7} "
            f"{lat['p50']:>7.2f} {lat['p90']:>7.2f} {lat['p99']:>7.2f} "
            + " ".join(f"{r['throughput'][str(b)]:>10.1f}" for b in sizes)
            + f" {'-' if speed is None else format(speed, '.2f') + 'x':>8}  {r['status']}"
            + (f": {r['reason']}" if r["reason"] else ""))
    lines.append(fastest_line(report))
    lines.extend(family_lines(report))
    lines.extend(unknown_cost_lines(report))
    m = report["machine"]
    lines.append(f"{m['cpu']}, {m['cores']} cores, {report['threads']} threads, load {_load_text(m)}; "
                 f"top-1 on {report['check_images']} {report['data']} test images; "
                 f"x Keras at batch {sizes[-1]}")
    return "\n".join(lines)


def fastest_line(report: dict) -> str:
    """Which exported row is fastest at batch-1 latency and at each batch size.

    Examples:
        >>> rows = [{"format": "onnx", "precision": "int8", "status": "ok",
        ...          "latency_ms": {"p50": 1.3}, "throughput": {"64": 1100.0}},
        ...         {"format": "openvino", "precision": "int8", "status": "ok",
        ...          "latency_ms": {"p50": 1.2}, "throughput": {"64": 1250.0}}]
        >>> fastest_line({"batch_sizes": [64], "rows": rows})
        'fastest: batch-1 p50 OpenVINO int8 1.20 ms; b64 OpenVINO int8 1250.0 img/s (1.14x the next engine)'
    """
    rows = [r for r in report["rows"] if r["status"] == "ok" and r["format"] != "keras"]
    if not rows:
        return "fastest: no exported file was measured"

    def name(r):
        return (f"{r['model']} " if _several(report) else "") + \
            f"{SHORT_NAME[r['format']]} {r['precision']}"

    quickest = min(rows, key=lambda r: r["latency_ms"]["p50"])
    parts = [f"batch-1 p50 {name(quickest)} {quickest['latency_ms']['p50']:.2f} ms"]
    for b in report["batch_sizes"]:
        ranked = sorted(rows, key=lambda r: -r["throughput"][str(b)])
        best = ranked[0]
        other = next((r for r in ranked if r["format"] != best["format"]), None)
        parts.append(f"b{b} {name(best)} {best['throughput'][str(b)]:.1f} img/s" + (
            f" ({best['throughput'][str(b)] / other['throughput'][str(b)]:.2f}x the next engine)"
            if other else ""))
    auto = report.get("auto") or {}
    if auto:
        parts.append(f"auto here ({auto['precision']}, remembered): batch-1 {auto['latency']}"
                     + "".join(f", b{b} {auto[str(b)]}" for b in report["batch_sizes"]
                               if str(b) in auto))
    return "fastest: " + "; ".join(parts)


def family_lines(report: dict) -> list[str]:
    r"""For several models: each model's cost, and how many times the costliest model's
    throughput (largest batch) and batch-1 speed each other model has, on the same runtime and
    precision.

    Examples:
        >>> def row(model, p50, speed):
        ...     return {"model": model, "format": "onnx", "precision": "int8", "status": "ok",
        ...             "latency_ms": {"p50": p50}, "throughput": {"64": speed}}
        >>> big = {"architecture": "resnet18", "parameters": 11173962, "multiply_adds": 555422720}
        >>> small = {"architecture": "resnet20", "parameters": 272474, "multiply_adds": 40813184}
        >>> report = {"batch_sizes": [1, 64],
        ...           "rows": [row("r18", 1.6, 700.0), row("r20", 0.4, 4900.0)],
        ...           "models": [{"model": "r18", "network": big},
        ...                      {"model": "r20", "network": small}]}
        >>> print(*family_lines(report), sep="\n")
        ... # doctest: +NORMALIZE_WHITESPACE
        r18: resnet18, 11.17M parameters, 555.4M multiply-adds per image
        r20: resnet20, 0.27M parameters, 40.8M multiply-adds per image; against r18: ONNX
        Runtime int8 7.00x b64 throughput, 4.00x batch-1 speed
    """
    if not _several(report):
        return []
    models = report["models"]
    costliest = max(models, key=lambda m: (m.get("network") or {}).get("multiply_adds", 0))
    largest = str(report["batch_sizes"][-1])
    ok = {(r["model"], r["format"], r["precision"]): r for r in report["rows"]
          if r["status"] == "ok" and "throughput" in r}
    lines = []
    for model in models:
        network = model.get("network")
        line = f"{model['model']}: " + (
            f"{network['architecture']}, {network['parameters'] / 1e6:.2f}M parameters, "
            f"{network['multiply_adds'] / 1e6:.1f}M multiply-adds per image" if network
            else "no network description in its files")
        ratios = []
        if model is not costliest:
            for (name, fmt, precision), r in ok.items():
                base = ok.get((costliest["model"], fmt, precision))
                if name != model["model"] or base is None or fmt == "keras":
                    continue
                ratios.append(f"{SHORT_NAME[fmt]} {precision} "
                              f"{r['throughput'][largest] / base['throughput'][largest]:.2f}x "
                              f"b{largest} throughput, "
                              f"{base['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x "
                              "batch-1 speed")
        if ratios:
            line += f"; against {costliest['model']}: " + "; ".join(ratios)
        lines.append(line)
    return lines


def _several(report: dict) -> bool:
    """Whether the report measured several models (a family)."""
    return len(report.get("models", [])) > 1


def unknown_cost_lines(report: dict) -> list[str]:
    """What the unknown score costs each row measured with ``unknown_cost``: the share of
    throughput at the largest batch size, and batch-1 latency, with and without it.

    Examples:
        >>> row = {"format": "onnx", "precision": "int8", "status": "ok",
        ...        "latency_ms": {"p50": 1.77}, "throughput": {"64": 725.0},
        ...        "without_unknown": {"latency_ms": {"p50": 1.71}, "throughput": {"64": 729.8}},
        ...        "unknown_cost": {"64": 0.0066}}
        >>> print(*unknown_cost_lines({"batch_sizes": [1, 64], "rows": [row]}))
        ... # doctest: +NORMALIZE_WHITESPACE
        unknown score: ONNX Runtime int8 costs 0.7 % of b64 throughput (725.0 against 729.8
        img/s without it), batch-1 p50 1.77 against 1.71 ms
    """
    largest = str(report["batch_sizes"][-1])
    return [f"unknown score: {SHORT_NAME[r['format']]} {r['precision']} costs "
            f"{100 * r['unknown_cost'][largest]:.1f} % of b{largest} throughput "
            f"({r['throughput'][largest]:.1f} against "
            f"{r['without_unknown']['throughput'][largest]:.1f} img/s without it), batch-1 p50 "
            f"{r['latency_ms']['p50']:.2f} against {r['without_unknown']['latency_ms']['p50']:.2f} ms"
            for r in report["rows"] if r.get("unknown_cost")]


def _load_text(machine_info: dict) -> str:
    load = machine_info["load_1min_at_start"]
    return "unknown" if load is None else f"{load:.2f}"


MIN_ACCURACY_SPAN = 2.0  # points: a 0.1-point gap must not fill the whole axis


def plot_report(report: dict, path: str | os.PathLike) -> Path:
    """Draw :func:`benchmark_figure` (accuracy against batch-1 latency) as a PNG; for several
    models, :func:`family_figure` (against latency and against multiply-adds).

    Args:
        report: What :func:`~edgel2.benchmark.benchmark` returned.
        path: The PNG to write (atomically).

    Returns:
        ``path``.

    Examples:
        >>> plot_report(report, "benchmark.png")     # doctest: +SKIP
    """
    from edgel2.plots import pyplot, save_figure

    figure = family_figure(report) if _several(report) else benchmark_figure(report)
    return save_figure(figure, pyplot(), path)


def benchmark_figure(report: dict):
    """Accuracy against batch-1 latency, one ring per measured row, titled with the model,
    data and machine; the legend sits outside the axes and the accuracy axis spans at least
    :data:`MIN_ACCURACY_SPAN` points."""
    from edgel2.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    measured = [r for r in report["rows"] if "latency_ms" in r and r["accuracy"] is not None]
    for r in measured:
        ax.scatter(r["latency_ms"]["p50"], 100 * r["accuracy"], s=RING_SIZE[r["format"]],
                   facecolors="none", edgecolors=COLOR[r["format"]], linewidths=1.6,
                   marker=MARKER[r["precision"]], label=f"{SHORT_NAME[r['format']]} {r['precision']}")
    if measured:
        accuracies = [100 * r["accuracy"] for r in measured]
        middle = (max(accuracies) + min(accuracies)) / 2
        half = max(MIN_ACCURACY_SPAN / 2, (max(accuracies) - min(accuracies)) / 2 + 0.25)
        ax.set_ylim(middle - half, middle + half)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    model = Path(next((r["file"] for r in measured if r.get("file")), report["source"])).stem
    rounds = f", median of {report['repeat']} rounds" if report.get("repeat", 1) > 1 else ""
    ax.set(xlabel="batch-1 latency p50 (ms, log scale)",
           ylabel=f"top-1 on {report['check_images']} {report['data']} test images (%)",
           title=f"{model.rsplit('-', 1)[0]}: accuracy against batch-1 latency\n"
                 f"{report['machine']['cpu']}, {report['threads']} threads{rounds}")
    _plain_log_axis(ax, plt)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def family_figure(report: dict):
    """Several models side by side: top-1 against batch-1 latency (left) and against
    multiply-adds per image (right), one point per model, runtime and precision; each model's
    points are labelled with its name and cost, so the trade-off is one picture."""
    from edgel2.plots import pyplot

    plt = pyplot()
    fig, (by_time, by_compute) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    measured = [r for r in report["rows"] if "latency_ms" in r and r["accuracy"] is not None]
    seen: set[str] = set()
    for r in measured:
        label = f"{SHORT_NAME[r['format']]} {r['precision']}"
        style = {"s": RING_SIZE[r["format"]], "facecolors": "none",
                 "edgecolors": COLOR[r["format"]], "linewidths": 1.6,
                 "marker": MARKER[r["precision"]]}
        by_time.scatter(r["latency_ms"]["p50"], 100 * r["accuracy"],
                        label=None if label in seen else label, **style)
        seen.add(label)
        if r.get("network"):
            by_compute.scatter(r["network"]["multiply_adds"] / 1e6, 100 * r["accuracy"], **style)
    for model in report.get("models", []):
        rows = [r for r in measured if r["model"] == model["model"]]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["accuracy"])
        network = model.get("network")
        name = model["model"] + (f"\n{network['parameters'] / 1e6:.2f}M params, "
                                 f"{network['multiply_adds'] / 1e6:.0f}M MACs" if network else "")
        by_time.annotate(name, (top["latency_ms"]["p50"], 100 * top["accuracy"]),
                         textcoords="offset points", xytext=(8, 6), fontsize=8)
        if network:
            by_compute.annotate(model["model"], (network["multiply_adds"] / 1e6,
                                                 100 * top["accuracy"]),
                                textcoords="offset points", xytext=(8, 6), fontsize=8)
    rounds = f", median of {report['repeat']} rounds" if report.get("repeat", 1) > 1 else ""
    by_time.set(xlabel="batch-1 latency p50 (ms, log scale)",
                ylabel=f"top-1 on {report['check_images']} {report['data']} test images (%)")
    by_compute.set(xlabel="multiply-adds per image (millions, log scale)")
    for ax in (by_time, by_compute):
        _plain_log_axis(ax, plt)
        ax.margins(x=0.3, y=0.15)  # room for the labels beside the outermost points
        ax.grid(alpha=0.3)
    if seen:
        by_compute.legend(*by_time.get_legend_handles_labels(), fontsize=8, loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"accuracy against cost: {', '.join(m['model'] for m in report['models'])}\n"
                 f"{report['machine']['cpu']}, {report['threads']} threads{rounds}")
    fig.tight_layout()
    return fig


def _plain_log_axis(ax, plt) -> None:
    """A log x axis with plain ticks ("2", "5", "10") rather than matplotlib's "2x10^0"."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.NullFormatter())


