"""``edgel2 benchmark``: every format and precision side by side on this machine.

For a ``.keras`` model (exporting what is missing) or an export folder, each row (Keras fp32 as
the baseline; ONNX Runtime fp32/fp16/int8/dynamic; LiteRT fp32/fp16/dynamic/int8) is measured
in its own process, so one runtime cannot slow another: file size, top-1 on held-out test
images, batch-1 latency p50/p90/p99, and throughput at each batch size after a warm-up, over a
fixed time per cell. With ``repeat`` > 1 every row is measured again in each of several rounds,
one row after another, and each cell reports its median over the rounds: a virtual machine's
speed drifts by tens of percent over minutes, and interleaving spreads that drift over every
row instead of charging it to whichever row ran in the slow minute. Results: a table, JSON (with
a machine description and each round's figures) and a PNG chart.

Examples:
    >>> report = benchmark("runs/train/exp/model.keras", seconds=1.0)   # doctest: +SKIP
    >>> print(format_table(report))                                       # doctest: +SKIP
"""
from __future__ import annotations

from edgel2.benchmark.child import time_cells
from edgel2.benchmark.report import (
                                     benchmark_figure,
                                     fastest_line,
                                     format_table,
                                     machine,
                                     plot_report,
)
from edgel2.benchmark.run import benchmark, default_formats, file_of, remember_choices

__all__ = ["benchmark", "benchmark_figure", "default_formats", "fastest_line", "file_of",
           "format_table", "machine", "plot_report", "remember_choices",
           "time_cells"]
