"""Where the time of one fkd step goes, from the teacher cache and from the live teacher (torch.profiler).

    python benchmarks/profile_cache_step.py          # SmolLM2-135M-Instruct -> 8-layer student, k = 64, fp32

Builds a small cache (16 training examples), then profiles one step of each after a warm-up step and
prints the operators by self CPU time (benchmarks/README.md, "Teacher cache", reads it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_cache as bc  # noqa: E402 - the benchmark's set-up, loading and step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random models (seconds)")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--rows", type=int, default=18, help="operators printed per step")
    args = p.parse_args(argv)
    from okd.data import Collator
    from okd.models.loading import load_model

    torch.set_num_threads(1)
    setup = argparse.Namespace(tiny=args.tiny, train_limit=16, teacher_steps=40 if args.tiny else 0, seed=0,
                               batch_size=4)
    work = Path(tempfile.mkdtemp(prefix="profile-cache-"))
    cfg, tok, teacher, train, valid = bc.load(bc.setup(setup, work))
    data = [Collator(tok.pad_token_id)(b) for b in bc.batches(train, 4, 2)]
    cache, _ = bc.build(cfg, tok, teacher, train, valid[:4], min(args.top_k, len(tok)), work / "cache")
    for name, c in (("cached", cache), ("live", None)):
        student = load_model(cfg.student).train()
        step = bc.step_fn(bc.method_for(cfg, tok, teacher, student, c), student,
                          torch.optim.AdamW(student.parameters(), lr=1e-4))
        step(data[0])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.process_time()
            step(data[1])
            print(f"{name}: {time.process_time() - t0:.2f} CPU s (under the profiler)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
