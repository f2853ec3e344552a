"""Skinny products of the UNet's convolutions on CUDA: cuBLAS, the batched split-K and the Triton kernel.

    python benchmarks/bench_skinny_matmul.py [--rows 4,16] [--dtypes float32,bfloat16,int8] [--quick]

For each weight shape (N, K) of the UNet, row count M and dtype, times ``F.linear`` (``cublas``),
``unet1d_fast._linear(split_k=True)`` (``splitk``), ``skinny_linear`` with the default config
(``skinny``: kernel, slice sum and bias), ``skinny_linear_finished`` (``skinny-finished``: the same in
one launch, the eager path's product) and a sweep of launch configs of the kernel alone
(``skinny-partials``). Each time is the median over replays of a CUDA graph of ``--launches``
launches (no launch overhead) that cycle through copies of the weight totalling at least
``--footprint-mb``, so that weights come from HBM rather than L2, as they do in a whole UNet.
``int8``: int8 weights with row scales and bf16 inputs (``cublas`` then multiplies bf16 weights of the
same shape; no ``splitk``).
Prints one JSON object per row, then a JSON summary: the best config per (dtype, shape).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # time this checkout's code, whatever is installed

from dp_core.models.skinny_matmul import (
    CONFIGS,
    LaunchConfig,
    _launch_shape,
    quantize_rows,
    skinny_linear,
    skinny_linear_finished,
    skinny_partials,
    skinny_supported,
)
from dp_core.models.unet1d_fast import _linear

SHAPES = [(256, 1280), (512, 2560), (1024, 5120), (1024, 10240), (512, 5120)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
# Launch configs swept per dtype, besides the default of CONFIGS.
SWEEP = {
    torch.bfloat16: [LaunchConfig(64, 128, 4, 4), LaunchConfig(64, 64, 4, 6), LaunchConfig(64, 256, 4, 3),
                     LaunchConfig(128, 128, 4, 3), LaunchConfig(32, 256, 4, 3)],
    torch.float32: [LaunchConfig(64, 64, 4, 3, "ieee"), LaunchConfig(64, 32, 4, 4, "ieee"),
                    LaunchConfig(64, 32, 4, 4, "tf32x3"), LaunchConfig(32, 64, 4, 4, "tf32x3"),
                    LaunchConfig(64, 64, 8, 3, "tf32x3"), LaunchConfig(128, 32, 4, 4, "tf32x3")],
    torch.int8: [LaunchConfig(32, 256, 4, 4), LaunchConfig(64, 128, 4, 4), LaunchConfig(64, 256, 4, 3),
                 LaunchConfig(32, 512, 4, 3), LaunchConfig(16, 256, 4, 4), LaunchConfig(32, 256, 8, 4)],
}
SPLIT_SCALES = (0.5, 1.0, 2.0)  # multiples of the default split for the config


def time_us(make: Callable[[int], Callable[[], object]], copies: int, launches: int, replays: int) -> float:
    """Median microseconds per launch of ``make(i)()`` (``i`` cycling over ``copies``) in a CUDA graph."""
    fns = [make(i) for i in range(copies)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:  # compile and warm up outside capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(launches):
            fns[i % copies]()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / launches)
    del graph
    return statistics.median(times)


def bench_shape(dtype_name: str, n: int, k: int, m: int, args: argparse.Namespace) -> dict:
    """Times every path on one shape, printing each row; returns the shape's summary."""
    dev, dtype = torch.device("cuda"), DTYPES[dtype_name]
    nbytes = n * k * dtype.itemsize
    copies = max(1, min(args.launches, round(args.footprint_mb * 2**20 / nbytes)))
    int8 = dtype == torch.int8
    act = torch.bfloat16 if int8 else dtype
    if int8:
        ws, scales = zip(*(quantize_rows(torch.randn(n, k, device=dev)) for _ in range(copies)))
    else:
        ws, scales = [torch.randn(n, k, device=dev).to(dtype) for _ in range(copies)], [None] * copies
    dense = [w.to(act) for w in ws] if int8 else ws  # cuBLAS's operand
    b = torch.randn(n, device=dev).to(act)
    x = torch.randn(m, k, device=dev).to(act)
    assert skinny_supported(x, ws[0])
    shape = {"M": m, "N": n, "K": k}

    def report(path: str, config: dict | None, make: Callable[[int], Callable[[], object]]) -> dict:
        us = time_us(make, copies, args.launches, args.replays)
        row = {"dtype": dtype_name, **shape, "path": path, "config": config, "us": round(us, 2),
               "weight_GBps": round(nbytes / us / 1e3, 1)}
        print(json.dumps(row), flush=True)
        return row

    rows = {"cublas": report("cublas", None, lambda i: lambda: F.linear(x, dense[i], b))}
    if not int8:
        rows["splitk"] = report("splitk", None, lambda i: lambda: _linear(x, ws[i], b, split_k=True))
    rows["skinny"] = report("skinny", None, lambda i: lambda: skinny_linear(x, ws[i], b, scale=scales[i]))
    rows["skinny_finished"] = report("skinny-finished", None,
                                     lambda i: lambda: skinny_linear_finished(x, ws[i], b, scales[i]))
    configs = [CONFIGS[dtype]] if args.quick else list(dict.fromkeys([CONFIGS[dtype], *SWEEP[dtype]]))
    sweep = []
    for launch in configs:
        auto, _ = _launch_shape(x, ws[0], None, launch)
        splits = [auto] if args.quick else sorted({max(1, round(auto * s)) for s in SPLIT_SCALES})
        for split in splits:
            config = {**launch._asdict(), "split": split}
            default = launch == CONFIGS[dtype] and split == auto
            sweep.append(report("skinny-partials", {**config, "default": default},
                                lambda i, c=config: lambda: skinny_partials(x, ws[i], scale=scales[i], **c)))
    top = min(sweep, key=lambda r: r["us"])
    default = next(r for r in sweep if r["config"]["default"])
    return {"dtype": dtype_name, **shape, "best": top["config"], "best_us": top["us"], "best_GBps": top["weight_GBps"],
            "default_partials_us": default["us"], **{f"{p}_us": r["us"] for p, r in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="4,16", help="comma-separated row counts M")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8")
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--footprint-mb", type=float, default=160.0, help="weight copies per graph, in total")
    parser.add_argument("--quick", action="store_true", help="default configs only, no sweep")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_skinny_matmul: no CUDA device, nothing to time", file=sys.stderr)
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    info = {"device": props.name, "torch": torch.__version__, "sms": props.multi_processor_count}
    print(json.dumps(info), flush=True)
    summary = [bench_shape(dtype_name, n, k, m, args)
               for dtype_name, (n, k), m in itertools.product(args.dtypes.split(","), SHAPES,
                                                              [int(r) for r in args.rows.split(",")])]
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
