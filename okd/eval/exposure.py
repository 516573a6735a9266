"""Exposure bias as ExAccErr (Arora et al., Findings of ACL 2022), teacher p as oracle, student q.

    R(l)        = Σ_{t≤l} E_{y<t ~ q} KL(p(·|y<t) ‖ q(·|y<t))        prefixes sampled from the student
    l·ε(l)      = Σ_{t≤l} E_{y<t ~ p} KL(p(·|y<t) ‖ q(·|y<t))        prefixes sampled from the teacher
    ExAccErr(l) = (R(l) − l·ε(l)) / (l·ε(l)) × 100 %

The KL at each step is exact over the (shared) vocabulary, from one teacher-forced forward pass of
both models over each sampled sequence; the prefixes are Monte Carlo: `samples` sequences per prompt
from each model, sampled at temperature 1, top-p 1, top-k off, at most `max_len` new tokens.

Conventions (tested in tests/test_eval.py):
- Finished sequences. A sequence that emits EOS at step e contributes the KL of steps 1..e (the EOS
  step included) and 0 at every later step: once generation has stopped, both models continue
  deterministically (nothing more is generated), so they agree. Every step's expectation is thus an
  average over *all* sampled sequences, alive or not, and R(l) is the expected error accumulated over
  the first l steps of the stopped process. `alive_*` in the result gives the fraction of sequences
  still generating at each step, so a short-answering student is visible.
- Student = teacher. Then every KL is 0, R(l) = l·ε(l) = 0, and ExAccErr(l) is defined as 0 (no
  excess error). More generally, if l·ε(l) ≤ 1e-9·l nats, ExAccErr(l) is 0 when R(l) is also below
  that tolerance and None (undefined, shown as "n/a") otherwise; never NaN or inf.
- Default lengths: the curve runs to l = 64 (`max_len`) and the headline value is at l = 32
  (`length`), short enough that most sampled answers are still alive at l.
"""

from __future__ import annotations

import torch

from okd.generation import generate, model_device, pad_id, eos_ids
from okd.losses import token_divergence

TOL_NATS_PER_STEP = 1e-9


def shared_vocab(student, teacher, vocab_size: int | None = None) -> int:
    """Width of the logits both models can be compared on (a padded head is sliced off)."""
    from okd.models.loading import output_weight

    sizes = [output_weight(m).shape[0] for m in (student, teacher)]
    if vocab_size:
        sizes.append(int(vocab_size))
    return min(sizes)


def forward_logits(model, input_ids, attention_mask, keep: int | None = None) -> torch.Tensor:
    """Logits of a (possibly left-padded) batch; with `keep`, only the last `keep` positions.

    Position ids come from the attention mask so left padding does not shift positions.
    """
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=keep or 0).logits
    except TypeError:  # a model without logits_to_keep: compute all and slice
        logits = model(**kwargs).logits
    return logits[:, -keep:] if keep else logits


def step_kls(student, teacher, prompts: list[list[int]], responses: list[list[int]],
             finished: list[bool], *, max_len: int, pad_token_id: int, vocab_size: int,
             batch_size: int = 16, temperature: float = 1.0) -> torch.Tensor:
    """KL(p‖q) at each response step of each sequence: a float64 tensor [n, max_len].

    Step t (1-based) is the distribution of response token t given prompt + y<t. A sequence that
    finished (EOS after its `responses` tokens) is scored through the EOS step; later steps are 0.
    """
    out = torch.zeros(len(prompts), max_len, dtype=torch.float64)
    with torch.no_grad():
        for b in range(0, len(prompts), batch_size):
            ps, rs = prompts[b:b + batch_size], [r[:max_len] for r in responses[b:b + batch_size]]
            pw, rw = max(len(p) for p in ps), max(len(r) for r in rs)
            # prompts left-padded so every response starts at column pw; responses right-padded
            ids = torch.full((len(ps), pw + rw), pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (p, r) in enumerate(zip(ps, rs)):
                ids[i, pw - len(p):pw + len(r)] = torch.tensor(p + r, dtype=torch.long)
                mask[i, pw - len(p):pw + len(r)] = 1
            # the rw + 1 last columns predict response tokens 1..rw+1 (the last one: EOS)
            zs = forward_logits(student, ids, mask, rw + 1)[..., :vocab_size]
            zt = forward_logits(teacher, ids, mask, rw + 1)[..., :vocab_size].to(zs.device)
            kl = token_divergence("fkl", zs, zt, temperature=temperature).double().cpu()
            for i, r in enumerate(rs):
                n = min(len(r) + (1 if finished[b + i] else 0), max_len)
                out[b + i, :n] = kl[i, :n]
    return out


def exacc_err(R: float, l_eps: float, length: int) -> float | None:
    """(R − l·ε) / (l·ε) × 100 with the zero conventions of the module doc."""
    tol = TOL_NATS_PER_STEP * length
    if l_eps <= tol:
        return 0.0 if R <= tol else None
    return 100.0 * (R - l_eps) / l_eps


def exacc_err_curve(kl_student_prefix, kl_teacher_prefix) -> dict:
    """ExAccErr for l = 1..L from per-step expected KLs (index t−1 holds step t).

    kl_student_prefix[t−1] = E_{y<t~q} KL(p‖q) at step t; kl_teacher_prefix likewise under p.
    Returns lists over l: `curve` (ExAccErr %, None where undefined), `R`, `eps` (= ε(l), per step).
    """
    a = torch.as_tensor(kl_student_prefix, dtype=torch.float64)
    b = torch.as_tensor(kl_teacher_prefix, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("per-step KL lists must be 1-D and of equal length")
    R, l_eps = a.cumsum(0).tolist(), b.cumsum(0).tolist()
    curve = [exacc_err(r, le, l) for l, (r, le) in enumerate(zip(R, l_eps), start=1)]
    return {"curve": curve, "R": R, "eps": [le / l for l, le in enumerate(l_eps, start=1)]}


def exposure_bias(student, teacher, prompts_ids: list[list[int]], *, tokenizer, samples: int = 4,
                  max_len: int = 64, length: int = 32, seed: int = 0, batch_size: int = 16,
                  vocab_size: int | None = None, progress: bool = False) -> dict:
    """ExAccErr of `student` against oracle `teacher` on the given prompts (see the module doc).

    Returns: curve (ExAccErr % for l = 1..max_len), at_l (ExAccErr at l = `length`), length,
    R and eps (curves over l), R_at_l, eps_at_l, per-step expected KLs under each sampler
    (kl_student_prefix, kl_teacher_prefix), alive fractions, and the sampling sizes.
    """
    if not 1 <= length <= max_len:
        raise ValueError(f"exposure length {length} must be between 1 and max_len {max_len}")
    if samples < 1 or not prompts_ids:
        raise ValueError("exposure bias needs at least one prompt and one sample per prompt")
    V = shared_vocab(student, teacher, vocab_size)
    pad = pad_id(tokenizer, eos_ids(student, tokenizer))
    reps = [p for p in prompts_ids for _ in range(samples)]
    common = dict(max_new_tokens=max_len, temperature=1.0, top_p=1.0, top_k=0, batch_size=batch_size,
                  vocab_limit=V, progress=progress)
    per_step, alive = {}, {}
    for name, sampler, s in (("student", student, seed), ("teacher", teacher, seed + 1)):
        gen = generate(sampler, tokenizer, reps, seed=s, **common)
        kl = step_kls(student, teacher, reps, gen.sequences, gen.finished, max_len=max_len,
                      pad_token_id=pad, vocab_size=V, batch_size=batch_size)
        per_step[name] = kl.mean(0).tolist()
        lengths = torch.tensor([len(r) + (1 if f else 0) for r, f in zip(gen.sequences, gen.finished)])
        # alive at step t = still generating when token t is drawn
        alive[name] = [(lengths >= t).double().mean().item() for t in range(1, max_len + 1)]
    res = exacc_err_curve(per_step["student"], per_step["teacher"])
    return {
        **res,
        "at_l": res["curve"][length - 1],
        "length": length,
        "R_at_l": res["R"][length - 1],
        "eps_at_l": res["eps"][length - 1],
        "kl_student_prefix": per_step["student"],
        "kl_teacher_prefix": per_step["teacher"],
        "alive_student": alive["student"],
        "alive_teacher": alive["teacher"],
        "prompts": len(prompts_ids),
        "samples": samples,
        "max_len": max_len,
        "vocab_size": V,
    }
