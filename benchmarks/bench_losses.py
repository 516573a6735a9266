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
    python benchmarks/bench_losses.py --closed-form --batch 2 --seq 384 --threads 1
        # autograd vs closed-form logit gradients (okd.losses.KDClosedForm), chunked, for the fkd
        # student loss, for the OKD pair (student + online-module loss, gradients to both sides) and for
        # the jsd student loss (beta 0.5: jsd, gkd)
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

    from okd.losses import KDClosedForm, chunked_kd_loss, chunked_pair_loss, token_ce, token_divergence

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, v, h = args.batch * args.seq, args.vocab, args.hidden
    hs = torch.randn(n, h).requires_grad_()
    ws = (torch.randn(v, h) * h**-0.5).requires_grad_()
    ht = torch.randn(n, h).requires_grad_(args.variant.startswith("okd"))
    wt = torch.randn(v, h) * h**-0.5
    labels = torch.randint(0, v, (n,))

    def okd_autograd(zs, zt, y):  # the OKD pair through autograd (okd.methods.okd's fallback)
        return (token_divergence("fkl", zs, zt),
                0.5 * token_divergence("rkl", zs, zt) + 0.5 * token_ce(zt, y))

    pair_fns = {"fkd-autograd": lambda zs, zt, y: (token_divergence("fkl", zs, zt), None),
                "fkd-closed": KDClosedForm("fkl"), "okd-autograd": okd_autograd,
                "okd-closed": KDClosedForm("fkl", module_alpha=0.5),
                "jsd-autograd": lambda zs, zt, y: (token_divergence("jsd", zs, zt, beta=0.5), None),
                "jsd-closed": KDClosedForm("jsd", beta=0.5)}

    def step():
        hs.grad = ws.grad = ht.grad = None
        if args.variant in pair_fns:
            s, t = chunked_pair_loss(pair_fns[args.variant], hs, ws, ht, wt, labels, chunk_size=args.chunk_size)
            loss = s if t is None else s + t
        elif args.variant == "naive":
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
    ap.add_argument("--closed-form", action="store_true",
                    help="compare autograd and closed-form logit gradients (fkd loss, OKD pair, jsd loss) instead")
    ap.add_argument("--rounds", type=int, default=3, help="--closed-form: alternating rounds of subprocesses")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one measurement
    ap.add_argument("--chunk-size", type=int, default=512, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return worker(args)

    common = [f"--batch={args.batch}", f"--seq={args.seq}", f"--vocab={args.vocab}", f"--hidden={args.hidden}",
              f"--repeats={args.repeats}", f"--threads={args.threads}"]
    if args.closed_form:
        return compare_closed_form(args, common)
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


def compare_closed_form(args, common):
    variants = ["fkd-autograd", "fkd-closed", "okd-autograd", "okd-closed", "jsd-autograd", "jsd-closed"]
    got = {v: {"cpu": [], "wall": [], "peak": [], "loss": None} for v in variants}
    for r in range(args.rounds):  # alternate, so drifts in machine load hit every variant alike
        for v in variants:
            cmd = [sys.executable, __file__, f"--variant={v}", *common, f"--chunk-size={args.chunk_size}"]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            got[v]["cpu"].append(res["cpu_s"])
            got[v]["wall"].append(res["median_s"])
            got[v]["peak"].append(res["peak_mb"])
            got[v]["loss"] = res["loss"]
        print(f"  round {r + 1} done", file=sys.stderr, flush=True)
    n = args.batch * args.seq
    print(f"\nchunked loss forward + backward, {n} tokens, vocab {args.vocab}, hidden {args.hidden}, fp32 CPU, "
          f"threads {args.threads or 'default'}; median over {args.rounds} processes x {args.repeats} repeats\n")
    print("| loss | gradients | median CPU s | vs autograd | median wall s | extra peak MiB | vs autograd | loss value |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for v in variants:
        g = got[v]
        base = got[v.split("-")[0] + "-autograd"]
        cpu, peak = statistics.median(g["cpu"]), statistics.median(g["peak"])
        row = dict(variant=v, cpu_s=cpu, wall_s=statistics.median(g["wall"]), peak_mb=peak,
                   cpu_ratio=cpu / statistics.median(base["cpu"]), peak_ratio=peak / statistics.median(base["peak"]),
                   loss=g["loss"])
        rows.append(row)
        print(f"| {v.split('-')[0]} | {v.split('-')[1]} | {cpu:.3f} | {row['cpu_ratio']:.2f}x | {row['wall_s']:.3f} | "
              f"{peak:.0f} | {row['peak_ratio']:.2f}x | {g['loss']:.4f} |")
    out = Path(__file__).parent / "results" / "bench_losses_closed_form.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
