"""Peak memory and time of the chunked vs the naive forward-KL distillation loss, forward + backward.

Naive: full [tokens, vocab] logits for both models, then token_divergence over all of them.
Chunked: okd.losses.chunked_kd_loss, which never holds more than one chunk of logits.

Each measurement runs in a fresh subprocess. Peak memory is ru_maxrss (the process's resident
high-water mark) after one forward + backward, minus ru_maxrss right after allocating the inputs,
so it counts everything the loss itself needs (logits, intermediates, gradients). Time is the
median of --repeats further iterations, as wall-clock and as process CPU time (all threads), the
latter being less disturbed when other processes share the cores.

    python benchmarks/bench_losses.py                       # 8 x 512 tokens, vocab 49,152, hidden 576
    python benchmarks/bench_losses.py --batch 2 --seq 128   # smaller
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def worker(args):
    import torch

    from okd.losses import chunked_kd_loss, token_divergence

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, v, h = args.batch * args.seq, args.vocab, args.hidden
    hs = torch.randn(n, h).requires_grad_()
    ws = (torch.randn(v, h) * h**-0.5).requires_grad_()
    ht = torch.randn(n, h)
    wt = torch.randn(v, h) * h**-0.5

    def step():
        hs.grad = ws.grad = None
        if args.variant == "naive":
            zs = hs @ ws.T
            with torch.no_grad():
                zt = ht @ wt.T
            loss = token_divergence("fkl", zs, zt).sum()
        else:
            loss = chunked_kd_loss("fkl", hs, ws, ht, wt, chunk_size=args.chunk_size)
        loss.backward()
        return loss.item()

    base = maxrss_mb()
    t0 = time.perf_counter()
    value = step()
    first = time.perf_counter() - t0
    peak = maxrss_mb() - base
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(json.dumps(dict(peak_mb=peak, median_s=statistics.median(times), cpu_s=statistics.median(cpu),
                          first_s=first, times=times, loss=value, grad_norm=ws.grad.norm().item())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--chunk-sizes", default="256,512,1024", help="comma-separated chunk sizes to try")
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per variant (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one measurement
    ap.add_argument("--chunk-size", type=int, default=512, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return worker(args)

    common = [f"--batch={args.batch}", f"--seq={args.seq}", f"--vocab={args.vocab}", f"--hidden={args.hidden}",
              f"--repeats={args.repeats}", f"--threads={args.threads}"]
    runs = [("naive", None)] + [("chunked", int(c)) for c in args.chunk_sizes.split(",")]
    results = []
    for variant, chunk in runs:
        cmd = [sys.executable, __file__, f"--variant={variant}", *common]
        if chunk:
            cmd.append(f"--chunk-size={chunk}")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append((variant, chunk, json.loads(out.strip().splitlines()[-1])))
        print(f"  done: {variant} {chunk or ''}", file=sys.stderr, flush=True)

    naive = results[0][2]
    n = args.batch * args.seq
    print(f"\nfkl, forward + backward, {args.batch} x {args.seq} = {n} tokens, vocab {args.vocab}, "
          f"hidden {args.hidden}, fp32, CPU; full logits of one model = {n * args.vocab * 4 / 2**20:.0f} MiB\n")
    print("| variant | chunk | extra peak memory (MiB) | vs naive | median wall time (s) | vs naive "
          "| min wall (s) | median CPU time (s) | vs naive | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant, chunk, r in results:
        print(f"| {variant} | {chunk or '-'} | {r['peak_mb']:.0f} | {r['peak_mb'] / naive['peak_mb']:.0%} | "
              f"{r['median_s']:.2f} | {r['median_s'] / naive['median_s']:.2f}x | {min(r['times']):.2f} | "
              f"{r['cpu_s']:.2f} | {r['cpu_s'] / naive['cpu_s']:.2f}x | {r['loss']:.2f} |")


if __name__ == "__main__":
    main()
