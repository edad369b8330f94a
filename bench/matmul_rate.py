"""The machine's fp32 matrix-multiply rate: the ceiling a CPU back end can approach.

Times ``torch.mm`` of two N x N float32 matrices (2 N^3 floating-point operations) on a
fixed number of threads, after warm-up, and reports the median rate in GFLOP/s (and GMAC/s,
half of it: one multiply-add is one MAC). bench/backends_default.py divides a model's
achieved GMAC/s by this to say how close the model runs to the hardware limit.

    .venv/bin/python bench/matmul_rate.py                 # 2 threads, N = 1024
    .venv/bin/python bench/matmul_rate.py --threads 1 --size 2048
"""
import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple


def matmul_runner(size: int = 1024) -> Tuple[Callable[[], None], float]:
    """(a call that multiplies two fixed N x N float32 matrices, its FLOPs = 2 N^3), so that
    other benches can time it in turn with their models. Threads: torch's intra-op pool."""
    import torch
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator, dtype=torch.float32)
    b = torch.randn(size, size, generator=generator, dtype=torch.float32)
    out = torch.empty(size, size, dtype=torch.float32)

    def run() -> None:
        torch.mm(a, b, out=out)
    return run, 2.0 * size ** 3


def matmul_gflops(threads: int = 2, size: int = 1024, repeats: int = 20, warmup: int = 3
                  ) -> Dict[str, float]:
    """{"gflops": median, "gflops_best": fastest run, "gmacs": median / 2} of an fp32
    N x N matrix product on ``threads`` threads."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run, flops = matmul_runner(size)
        for _ in range(warmup):
            run()
        seconds: List[float] = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    median = flops / statistics.median(seconds) / 1e9
    return {"gflops": median, "gflops_best": flops / min(seconds) / 1e9, "gmacs": median / 2.0,
            "threads": float(threads), "size": float(size)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024, help="N of the N x N matrices")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rate = matmul_gflops(args.threads, args.size, args.repeats)
    print("fp32 %dx%d matmul on %d thread(s): %.1f GFLOP/s median (%.1f best) = %.1f GMAC/s"
          % (args.size, args.size, args.threads, rate["gflops"], rate["gflops_best"],
             rate["gmacs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
