"""bench.json -> bench.md: one markdown table per section of benchmarks/gpu/bench.py."""

from __future__ import annotations


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("-" if v is None else str(v) for v in r) + " |" for r in rows]
    return out


def _pct(x) -> str | None:
    return None if x is None else f"{100 * x:.2f}%"


def markdown(data: dict) -> str:
    env, mm = data.get("env", {}), data.get("matmul", {})
    where = env.get("gpu") or env.get("cpu") or env.get("device", "?")
    lines = [f"# okd GPU benchmark: {where}{' (tiny)' if env.get('tiny') else ''}", "",
             f"{env.get('started', '')}; commit {env.get('commit')}; torch {env.get('torch')}, transformers "
             f"{env.get('transformers')}, trl {env.get('trl')}; budget {env.get('budget_s')} s, "
             f"elapsed {env.get('elapsed_s', '(running)')} s.", ""]
    if mm:
        lines += [f"Dense {mm.get('dtype')} matmul ({mm.get('size')}³) in this run: "
                  f"**{mm.get('tflops_per_s')} TFLOP/s** (the MFU reference; {mm.get('note')}).", ""]
    lines += ["## Ops and syncs per step", "",
              "One eager step (train.compile=off) under benchmarks/count_ops.py: every dispatched aten op, the view "
              "ops among them, and the ops that make the host wait for the device.", ""]
    lines += _table(["method", "shape", "ops", "non-view ops", "syncs", "syncing ops"],
                    [[r["method"], r["shape"], r["ops"], r["ops"] - r["views"], r["syncs"],
                      ", ".join(f"{k.removeprefix('aten.')} {v}" for k, v in r["by_sync"].items()) or "-"]
                     for r in data.get("ops", [])])
    lines += ["", "## Step time, tokens/s and MFU (okd's training step)", "",
              "Median wall s per step (device synchronised around each step), tokens/s over the timed steps, dense "
              "matmul FLOPs per step / time / the matmul reference; gkd λ=0.5 counts the sampler's forward too.", ""]
    lines += _table(["method", "shape", "s/step", "mean s", "tokens/step", "tokens/s", "generated/step",
                     "TFLOP/s", "MFU", "peak MB"],
                    [[r["method"], r["shape"], r["s_per_step"], r["mean_s"], r["tokens_per_step"], r["tokens_per_s"],
                      r.get("generated_per_step"), r.get("tflops_per_s"), _pct(r.get("mfu")), r.get("peak_mb")]
                     for r in data.get("steps", [])])
    lines += ["", "## TRL GKDTrainer (same data and shapes)", ""]
    lines += _table(["config", "shape", "s/step", "mean s", "tokens/step", "tokens/s", "peak MB"],
                    [[r["method"], r["shape"], r["s_per_step"], r["mean_s"], r["tokens_per_step"], r["tokens_per_s"],
                      r.get("peak_mb")] for r in data.get("trl", [])])
    lines += ["", "## Sampler", "",
              "Tokens generated per second of steady state (median of the calls after the first); the first call "
              "includes compilation where there is one.", ""]
    lines += _table(["sampler", "batch", "prompt tokens", "new tokens", "first call s", "s", "tokens/s"],
                    [[r["sampler"], r["batch"], r["prompt_tokens"], r["new_tokens"], r["first_call_s"], r["s"],
                      r["tokens_per_s"]] for r in data.get("sampler", [])])
    lines += ["", "## Skipped and failed", ""]
    skipped = [f"- skipped {s['section']} {s['what']}: {s['reason']}" for s in data.get("skipped", [])]
    failed = [f"- FAILED {e['section']} {e['what']}: {e['error']}" for e in data.get("errors", [])]
    lines += (skipped + failed) or ["- nothing"]
    return "\n".join(lines) + "\n"
