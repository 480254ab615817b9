"""Sparse random walk vs the authors' dense matrix power, in one run on the same inputs.

    python benchmarks/bench_random_walk.py --size 64x64                  # ~1 min on 2 CPU cores
    python benchmarks/bench_random_walk.py --size 64x64 --size 96x72     # ~4 min
    python benchmarks/bench_random_walk.py --size 125x94                 # VOC 500x375: 10-30 min
    python benchmarks/bench_random_walk.py --size 160x120 --sparse-only  # COCO 640x480
    python benchmarks/bench_random_walk.py --size 125x94 --device cuda

Inputs are synthetic stride-4 maps: one ellipse per class, a blurred, off-centre CAM per class
(plus noise) and a boundary map from the ellipses' outlines (blurred, noisy). Both
implementations (``random_walk_dense_reference``: the authors' construction with dense
``n x n`` matrices and 8 squarings; ``random_walk``: 256 sparse steps) run on the same inputs,
each in a fresh subprocess so that its peak memory can be read: the peak resident set size
above the process's size before the call (``resource.getrusage``) on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA. The pseudo masks of both (image size 4h x 4w,
``pseudo_mask`` with the authors' 0.20 background threshold) are compared pixel by pixel.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from typing import Any

import numpy as np


def synthetic_inputs(h: int, w: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cam [k, h, w] float32 in [0, 1], edge [h, w] float32 in [0, 1]) of a toy scene."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    seg = np.zeros((h, w), np.int64)
    cams = np.zeros((k, h, w), np.float64)
    for c in range(k):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ay, ax = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        inside = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
        seg[inside] = c + 1
        # a CAM peaks on a discriminative part and fades before the object's outline
        py, px = cy + rng.uniform(-0.3, 0.3) * ay, cx + rng.uniform(-0.3, 0.3) * ax
        cams[c] = np.exp(-(((yy - py) / (0.8 * ay)) ** 2 + ((xx - px) / (0.8 * ax)) ** 2))
    cams += 0.05 * rng.random(cams.shape)
    cams /= cams.reshape(k, -1).max(axis=1)[:, None, None]
    boundary = np.zeros((h, w), np.float64)
    boundary[:-1] += seg[:-1] != seg[1:]
    boundary[:, :-1] += seg[:, :-1] != seg[:, 1:]
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])[None, None] / 16
    blurred = F.conv2d(torch.from_numpy(np.minimum(boundary, 1.0))[None, None].float(), kernel,
                       padding=1)[0, 0].numpy()
    edge = np.clip(1.6 * blurred + 0.1 * rng.random((h, w)), 0.0, 1.0)
    return cams.astype(np.float32), edge.astype(np.float32)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(impl: str, h: int, w: int, k: int, seed: int, device: str, threads: int,
           budget_mb: float, conn: Any) -> None:
    import torch

    from qaclims.irn.random_walk import random_walk, random_walk_dense_reference

    torch.set_num_threads(threads)
    cam, edge = synthetic_inputs(h, w, k, seed)
    if device == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    t0 = time.perf_counter()
    if impl == "dense":
        rw = random_walk_dense_reference(cam, edge, device=device)
    else:
        rw = random_walk(cam, edge, device=device, method="sparse", memory_budget_mb=budget_mb)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    gpu_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    repeat = None
    if impl == "sparse":  # second call: index structure cached, no first-call overheads
        t0 = time.perf_counter()
        random_walk(cam, edge, device=device, method="sparse", memory_budget_mb=budget_mb)
        if device == "cuda":
            torch.cuda.synchronize()
        repeat = time.perf_counter() - t0
    conn.send({"rw": rw, "seconds": seconds, "repeat": repeat, "peak_rss": peak_rss,
               "gpu_peak": gpu_peak})
    conn.close()


def run_impl(impl: str, args: argparse.Namespace, h: int, w: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    threads = args.dense_threads if impl == "dense" else args.threads
    p = ctx.Process(target=_child, args=(impl, h, w, args.classes, args.seed, args.device,
                                         threads, args.budget_mb, child))
    p.start()
    child.close()
    out = parent.recv()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{impl} run failed with exit code {p.exitcode}")
    return out


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:9.1f} MB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", action="append", default=None,
                    help="stride-4 map size HxW (repeatable; default 64x64)")
    ap.add_argument("--classes", type=int, default=3, help="CAM planes K' (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads of the sparse walk (default 1: its steps are too "
                         "small to share; run images in parallel processes instead)")
    ap.add_argument("--dense-threads", type=int, default=os.cpu_count() or 1,
                    help="torch CPU threads of the dense reference (default: all cores)")
    ap.add_argument("--budget-mb", type=float, default=2048.0,
                    help="memory budget of the sparse walk")
    ap.add_argument("--sparse-only", action="store_true",
                    help="skip the dense reference (COCO-sized maps)")
    args = ap.parse_args(argv)

    import torch

    from qaclims.irn.random_walk import plan_random_walk, pseudo_mask

    print(f"python {platform.python_version()}, torch {torch.__version__}, device {args.device}, "
          f"threads sparse {args.threads} / dense {args.dense_threads}, {os.cpu_count()} cpu(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    for size in args.size or ["64x64"]:
        h, w = (int(v) for v in size.lower().split("x"))
        n = h * w
        plan = plan_random_walk(h, w, args.classes, memory_budget_mb=args.budget_mb,
                                method="sparse")
        print(f"\n== {h}x{w} stride-4 map (image {4 * h}x{4 * w}), n={n}, K'={args.classes}")
        print(f"   dense: {2 * 8 * n**3 / 1e12:.2f} TFLOP, one n x n float32 matrix "
              f"{4 * n * n / 2**20:.0f} MB | sparse: {plan.flops / 1e9:.2f} GFLOP, "
              f"estimated peak {plan.est_bytes / 2**20:.1f} MB")
        results = {"sparse": run_impl("sparse", args, h, w)}
        if not args.sparse_only:
            results["dense"] = run_impl("dense", args, h, w)
        for impl, r in results.items():
            rep = f" (repeat {r['repeat']:.3f} s)" if r["repeat"] is not None else ""
            print(f"   {impl:6s} time {r['seconds']:9.3f} s{rep}   peak RSS above start "
                  f"{_mb(r['peak_rss'])}   GPU peak {_mb(r['gpu_peak'])}")
        if "dense" in results:
            a, b = results["sparse"]["rw"], results["dense"]["rw"]
            rel = float(np.abs(a - b).max() / np.abs(b).max())
            keys = list(range(1, args.classes + 1))
            ma = pseudo_mask(a, keys, (4 * h, 4 * w))
            mb = pseudo_mask(b, keys, (4 * h, 4 * w))
            agree = float((ma == mb).mean())
            print(f"   max |rw_sparse - rw_dense| / max|rw_dense| = {rel:.2e}; stride-4 argmax "
                  f"agreement {(a.argmax(0) == b.argmax(0)).mean():.5f}; pseudo-mask pixel "
                  f"agreement {agree:.5f} ({int((ma != mb).sum())} of {ma.size} differ)")
            speed = results["dense"]["seconds"] / results["sparse"]["seconds"]
            mem = results["dense"]["peak_rss"] / max(results["sparse"]["peak_rss"], 1)
            print(f"   sparse is {speed:.1f}x faster and peaks {mem:.1f}x lower (RSS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
