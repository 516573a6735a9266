"""MiniLLM (Gu et al., ICLR 2024, arXiv 2306.08543): policy gradient on the sequence-level reverse KL.

Objective (paper §2.1): θ = argmin KL(q_θ ‖ p) = −E_{x, y~q_θ} log p(y|x)/q_θ(y|x). Its policy
gradient, with per-token rewards r_t = log p(y_t | y<t, x) − log q_θ(y_t | y<t, x), is optimised
with the three strategies of §2.2, each named after the paper's paragraph:

  Single-Step Decomposition: ∇L = (∇L)_Single + (∇L)_Long with
      (∇L)_Single = −E Σ_t ∇ E_{y_t~q_θ(t)}[r_t] = ∇ E Σ_t KL(q_θ(·|y<t,x) ‖ p(·|y<t,x)):
      the exact reverse KL over the vocabulary at every position, differentiated directly
      (low variance, it carries the one-step signal);
      (∇L)_Long = −E Σ_t R_{t+1} ∇ log q_θ(y_t | y<t, x),  R_{t+1} = Σ_{t'>t} r_t'.
  Length Normalization: R_{t+1} is replaced by R^Norm_{t+1} = R_{t+1} / (T − t), the mean of the
      rewards after t, so that short answers are not favoured; the advantages are then whitened over
      the batch's tokens (a baseline, as in the authors' code).
  Teacher-Mixed Sampling: responses are sampled from p̃ = α·p + (1−α)·q_θ (α = `method.mix_alpha`
      = 0.2), which keeps the student off degenerate text; the bias is corrected by importance
      weights, per token as the paper approximates them: w_t = q_θ(y_t|y<t,x) / p̃(y_t|y<t,x).
  PPO-style clipping (§2.3, training algorithm): the long-term surrogate is −A_t·ρ_t with
      ρ_t = q_θ(y_t)/q_old(y_t) · w_t = q_θ(y_t)/p̃(y_t), clipped to [1−ε, 1+ε] (ε = `method.clip_eps`):
      L_pg = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε)).
  Per step: L = mean_t [KL(q_θ‖p)_t + L_pg,t]  +  `lm_weight` · L_PT, the language-modelling loss on
  a plain-text corpus (`method.lm_data`, optional; no L_PT when unset).

Rollouts: every `method.ppo_epochs` steps each micro-batch's prompts are answered afresh by the
mixed sampler below (a token-by-token loop over both models' KV caches, no gradient, eval mode;
on CUDA static caches with a compiled decode step, and "every row ended?" read every 8 tokens);
in the steps between, the same rollouts are trained on again with p̃(y_t) fixed at sampling time,
so ρ_t = q_θ/p̃ drifts as q_θ moves and the clip bites. Rewards use q and p at sampling time (the
teacher is frozen). Divergence: reverse KL only, at temperature 1 (`method.temperature` does not
apply). `method.gen_temperature` tempers both models inside p̃ (the weights use the p̃ actually
sampled from, so they stay exact; 0 is read as 1, MiniLLM must sample); `method.top_p` is not used
(a truncated p̃ would break the weights).

Kept from the authors' code though the paper does not state them: whitened advantages and an
unweighted single-step term. Different from their code: no discount (γ = 1, the paper's R), R_{t+1}
excludes r_t (the single-step term covers it; their code adds r_t again), and L_PT is plain CE
(their pt_loss also mixes in word-level KD). The paper starts MiniLLM from a student fine-tuned on
the data (SFT), and so should you: train `method.name=sft` first and pass its `student/` directory
as student.path.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from okd.errors import OkdError
from okd.losses import chunked_pair_loss, token_divergence
from okd.methods.base import Method, Scored, ce_sum, head, scored_hidden
from okd.methods.rollout import autocast_for, batch_prompts, build_batch, per_token


# ----------------------------------------------------------------------------- sampling from p̃

EOS_CHECK_EVERY = 8  # the sampler asks the device "has every row ended?" once per this many tokens


def _step(model, ids, mask, pos, cache):
    """One cached forward; the KV-cache argument is `cache` in recent transformers, `past_key_values` before."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{name: cache})
    try:
        out = model(**kwargs, logits_to_keep=1)
    except TypeError:  # a model without logits_to_keep
        out = model(**kwargs)
    return out.logits[:, -1], getattr(out, name)


def static_supported(model) -> bool:
    """transformers' cache-position-free API (5.x): a `cache` argument and a StaticCache that counts
    its own length. Older versions keep the dynamic cache."""
    try:
        from transformers import StaticCache  # noqa: F401
    except ImportError:
        return False
    params = inspect.signature(model.forward).parameters
    prepare = getattr(model, "prepare_inputs_for_generation", None)
    return ("cache" in params and "cache_position" not in params and prepare is not None
            and "is_first_iteration" in inspect.signature(prepare).parameters)


class _Decoder:
    """One model's cached forward inside the sampler.

    Dynamic (CPU, today's path): the KV cache and the 2-D mask grow by one token per step.
    Static (CUDA): a StaticCache of prompt width + max_new_tokens and one full-length mask that the
    caller fills in place, so every decode step has the same shapes; the inputs are prepared as
    `generate` prepares them (4-D mask built outside the model) and the decode forward runs through
    transformers' `get_compiled_call` (torch.compile, CUDA graphs) when `compiled`. The prefill runs
    eagerly, as in `generate`."""

    def __init__(self, model, *, static: bool, compiled: bool, length: int):
        self.model, self.static, self.cache = model, static, None
        if static:
            from transformers import StaticCache

            from okd.generation import compile_config

            self.cache = StaticCache(config=model.config, max_cache_len=length)
            self.decode = model.get_compiled_call(compile_config()) if compiled else model.__call__

    def __call__(self, ids, mask, pos, first: bool):
        if not self.static:
            logits, self.cache = _step(self.model, ids, mask, pos, self.cache)
            return logits
        inputs = self.model.prepare_inputs_for_generation(ids, cache=self.cache, attention_mask=mask,
                                                          position_ids=pos, use_cache=True, logits_to_keep=1,
                                                          is_first_iteration=first)
        if first:
            return self.model(**inputs).logits[:, -1]
        # a copy: a CUDA-graph replay (the other model's, the next step's) may reuse the output's memory
        return self.decode(**inputs).logits[:, -1].clone()


def _rng(device: torch.device, state=None):
    """The state of the generator that sampling on `device` draws from (get, or set when given)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device) if state is None else torch.cuda.set_rng_state(state, device)
    return torch.get_rng_state() if state is None else torch.set_rng_state(state)


def _draw(zs, zt, *, vocab_size, temperature, log_a, log_1ma, device):
    """log p̃ (the sampling distribution), log q and log p at temperature 1, and one draw from p̃."""
    log_q1 = F.log_softmax(zs[:, :vocab_size].float(), -1)
    log_p1 = F.log_softmax(zt[:, :vocab_size].float().to(device), -1)
    log_qT = log_q1 if temperature == 1.0 else F.log_softmax(zs[:, :vocab_size].float() / temperature, -1)
    log_pT = log_p1 if temperature == 1.0 else F.log_softmax(zt[:, :vocab_size].float().to(device) / temperature, -1)
    if log_a is None:
        log_m = log_qT
    elif log_1ma is None:
        log_m = log_pT
    else:
        log_m = torch.logaddexp(log_pT + log_a, log_qT + log_1ma)
    return log_m, log_q1, log_p1, torch.multinomial(log_m.exp(), 1).squeeze(1)


def _first_ended(flags: list[torch.Tensor]) -> int | None:
    """Index of the first step whose 'every row ended' flag is set (one device read for all)."""
    read = torch.stack(flags).tolist()
    return read.index(True) if True in read else None


@torch.no_grad()
def mixed_sample(student, teacher, prompts: list[list[int]], *, alpha: float, max_new_tokens: int,
                 eos_ids: list[int], pad_id: int, vocab_size: int, temperature: float = 1.0,
                 check_every: int = EOS_CHECK_EVERY, static_cache: bool | None = None,
                 compile: bool | None = None, pad_multiple: int | None = None, synced: bool = False):
    """Sample responses from p̃ = α·p + (1−α)·q, token by token, both models with KV caches.

    Returns (targets, log_mix, log_q, log_p): per prompt the sampled tokens up to and including the
    first EOS, and per token log p̃(y_t) (the sampling distribution), log q(y_t) and log p(y_t) at
    temperature 1. Models in eval mode while sampling; modes restored after.

    Whether every row has ended is read from the device once per `check_every` tokens, not per
    token; the tokens drawn past that point are dropped and the RNG is set back to where it stood
    right after the last needed draw, so the results and the RNG stream equal a per-token check.
    `static_cache` (None: on CUDA, where transformers supports it), `compile` (None: on CUDA) and
    `pad_multiple` (None: 64 with the static cache on CUDA, else 1) as in okd.generation.generate.
    `synced` (sharded models on several processes, where every forward is a collective): a process whose
    rows have all ended keeps joining the forwards, without drawing, until every process's have (one
    all-reduce per check, at the same steps on every process); its results and RNG are those it would
    have alone.
    """
    from okd.generation import default_pad_multiple, left_pad, model_device, static_cache_for

    device = model_device(student)
    static = all(static_cache_for(m, static_cache) and static_supported(m) for m in (student, teacher))
    multiple = default_pad_multiple(device, static) if pad_multiple is None else pad_multiple
    enc = left_pad(prompts, pad_id, device, multiple)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n, width = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # left padding must not shift positions
    if static:  # the whole length at once; step t's input token is switched on in place
        mask = torch.cat([mask, mask.new_zeros(n, max_new_tokens)], 1)
    compiled = device.type == "cuda" if compile is None else compile
    s_dec, t_dec = (_Decoder(m, static=static, compiled=compiled, length=width + max_new_tokens)
                    for m in (student, teacher))
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    logs = dict(log_a=(math.log(alpha) if alpha > 0 else None), log_1ma=(math.log1p(-alpha) if alpha < 1 else None))
    toks, lmix, lq, lp, alive, ended, states = [], [], [], [], [], [], []
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    idle = False  # this process's rows have all ended; it only joins the other processes' forwards
    try:
        for t in range(max_new_tokens):
            zs, zt = s_dec(ids, mask, pos, t == 0), t_dec(ids, mask, pos, t == 0)
            if idle:
                if ((t + 1) % check_every == 0 or t == max_new_tokens - 1) and _everyone_done(True, device):
                    break
                ids, pos = torch.full_like(ids, pad_id), pos + 1
                mask = _grown(mask, static, width + t)
                continue
            log_m, log_q1, log_p1, y = _draw(zs, zt, vocab_size=vocab_size, temperature=temperature, device=device,
                                             **logs)
            y = torch.where(done, torch.full_like(y, pad_id), y)
            pick = y[:, None]
            toks.append(y), alive.append(~done)
            lmix.append(log_m.gather(1, pick).squeeze(1))
            lq.append(log_q1.gather(1, pick).squeeze(1))
            lp.append(log_p1.gather(1, pick).squeeze(1))
            done = done | torch.isin(y, eos)
            ended.append(done.all()), states.append(_rng(device))
            if len(ended) == check_every or t == max_new_tokens - 1:
                first = _first_ended(ended)
                if first is not None:  # every row had ended at step t - len(ended) + 1 + first
                    keep = t - len(ended) + 2 + first
                    for x in (toks, lmix, lq, lp, alive):
                        del x[keep:]
                    _rng(device, states[first])
                    if not synced or _everyone_done(True, device):
                        break
                    idle = True
                elif synced:
                    _everyone_done(False, device)  # the check every process makes at this step
                ended, states = [], []
            ids, pos = pick, pos[:, -1:] + 1
            mask = _grown(mask, static, width + t)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return _per_row(n, toks, lmix, lq, lp, alive)


def _grown(mask, static: bool, column: int):
    """The mask with the step's token switched on: in place at `column` (static), else one column more."""
    if static:
        mask[:, column] = 1
        return mask
    return torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


def _everyone_done(done: bool, device) -> bool:
    """True when every process's rows have ended (one all-reduce: the minimum of the flags)."""
    import torch.distributed as dist

    flag = torch.tensor([int(done)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _per_row(n: int, *columns):
    """Per prompt: the tokens drawn while the row was alive (its EOS included), and their log-probs."""
    cols = [torch.stack(x, 1).tolist() for x in columns]
    targets, log_mix, log_q, log_p = [], [], [], []
    for i in range(n):
        k = sum(cols[4][i])
        targets.append(cols[0][i][:k]), log_mix.append(cols[1][i][:k])
        log_q.append(cols[2][i][:k]), log_p.append(cols[3][i][:k])
    return targets, log_mix, log_q, log_p


# ----------------------------------------------------------------------------- advantages and loss

def normalised_returns(rewards: list[float]) -> list[float]:
    """R^Norm_{t+1} = (1/(T−t)) Σ_{t'>t} r_t' for t = 1..T (0-based: mean of rewards[t+1:]); 0 at the end."""
    out, acc = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        out[t] = acc / (len(rewards) - 1 - t) if t < len(rewards) - 1 else 0.0
        acc += rewards[t]
    return out


def token_objective(zs, zt, y, log_mix, adv, clip_eps: float):
    """Per scored token: (single-step KL(q_θ‖p), clipped PPO term) from student/teacher logits.

    zs carries the gradient; zt, log_mix = log p̃(y) at sampling and adv are constants.
    """
    single = token_divergence("rkl", zs, zt)  # Σ_y q (log q − log p), exact, differentiable in q
    logq = torch.log_softmax(zs.float(), -1).gather(-1, y[:, None]).squeeze(-1)
    ratio = torch.exp(logq - log_mix)  # (q_θ/q_old)·w_t with w_t = q_old/p̃: q_old cancels
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps))
    return single, pg


@dataclass(eq=False)
class MiniLLM(Method):
    name = "minillm"

    def __post_init__(self):
        m = self.cfg.method
        if m.ppo_epochs < 1:
            raise OkdError("method.ppo_epochs must be >= 1")
        self.rollouts: dict[int, dict] = {}  # micro-batch index -> rollout, reused for ppo_epochs steps
        self._step, self._micro = -1, 0
        self.lm_blocks = self._lm_blocks() if m.lm_data else []
        self.lm_cursor = 0

    # -- optional language-modelling data
    def _lm_blocks(self) -> list[list[int]]:
        path = Path(self.cfg.method.lm_data).expanduser()
        if not path.is_file():
            raise OkdError(f"method.lm_data {str(path)!r} not found; give a plain-text file (or leave it unset)")
        text = path.read_text(errors="replace")
        ids = self.models.tokenizer(text, add_special_tokens=False)["input_ids"]
        size = self.cfg.data.max_length
        blocks = [ids[i:i + size] for i in range(0, len(ids), size)]
        blocks = [b for b in blocks if len(b) >= 2]
        if not blocks:
            raise OkdError(f"method.lm_data {str(path)!r} holds fewer than 2 tokens of text")
        return blocks

    def _lm_batch(self, device) -> dict:
        rows = []
        for _ in range(self.cfg.train.batch_size):
            rows.append(self.lm_blocks[self.lm_cursor % len(self.lm_blocks)])
            self.lm_cursor += 1
        batch = build_batch([[]] * len(rows), rows, pad_id=self.models.tokenizer.pad_token_id,
                            max_length=self.cfg.data.max_length, device=device)
        return {f"lm_{k}": v for k, v in batch.items() if k != "prompt_len"}

    # -- rollouts
    def rollout(self, batch: dict) -> dict:
        m, tok = self.cfg.method, self.models.tokenizer
        prompts = batch_prompts(batch, self.cfg.data.max_prompt_length, tok.bos_token_id)
        from okd.generation import collective, eos_ids, ready_to_generate

        with ready_to_generate(self.models.student) as student, ready_to_generate(self.models.teacher) as teacher, \
                autocast_for(self.cfg, batch["input_ids"].device):
            targets, log_mix, log_q, log_p = mixed_sample(
                student, teacher, prompts, alpha=m.mix_alpha, max_new_tokens=m.max_new_tokens,
                eos_ids=eos_ids(student, tok) or [tok.eos_token_id], pad_id=tok.pad_token_id,
                vocab_size=self.models.vocab_size, temperature=m.gen_temperature or 1.0,
                synced=collective(student) or collective(teacher))
        self.metrics["generated_tokens"] = self.metrics.get("generated_tokens", 0) + sum(map(len, targets))
        device = batch["input_ids"].device
        out = build_batch(prompts, targets, pad_id=tok.pad_token_id, max_length=self.cfg.data.max_length,
                          device=device)
        width = out["input_ids"].shape[1]
        rewards = [[a - b for a, b in zip(p_, q_)] for p_, q_ in zip(log_p, log_q)]  # r_t = log p − log q
        adv = per_token([normalised_returns(r) for r in rewards], prompts, width, device)
        scored = out["labels"] != -100
        if scored.any():  # whiten over the batch's tokens (baseline + scale), as the authors' code
            vals = adv[scored]
            adv = torch.where(scored, (adv - vals.mean()) * torch.rsqrt(vals.var(unbiased=False) + 1e-8), 0.0)
        out.update(log_mix=per_token(log_mix, prompts, width, device), advantages=adv)
        n_tok = max(1, sum(map(len, rewards)))
        self.metrics.update(reward=sum(map(sum, rewards)) / n_tok,  # −(per-token reverse-KL estimate)
                            mean_response_len=sum(map(len, targets)) / max(1, len(targets)))
        return out

    def prepare(self, batch, step):
        if step != self._step:
            self._step, self._micro = step, 0
        i = self._micro
        self._micro += 1
        fresh = step % self.cfg.method.ppo_epochs == 0 or i not in self.rollouts
        if fresh:
            self.rollouts[i] = self.rollout(batch)
        device = batch["input_ids"].device
        prepared = {k: v.to(device) for k, v in self.rollouts[i].items()}
        if self.lm_blocks:
            prepared.update(self._lm_batch(device))
        return prepared

    def losses(self, batch, norm):
        models, m = self.models, self.cfg.method
        scored = Scored.from_labels(batch["labels"])
        pick = lambda k: scored.pick(batch[k])  # noqa: E731 - per-token constants at scored positions
        y, mix, adv = scored.targets, pick("log_mix"), pick("advantages")
        with torch.no_grad():
            h_t = scored_hidden(models.teacher, batch, scored)
        h_s = scored_hidden(models.student, batch, scored)
        stats = {"single": 0.0, "pg": 0.0}

        def fn(zs, zt, idx):  # "labels" are token indices, to reach the per-token constants
            single, pg = token_objective(zs, zt, y[idx], mix[idx], adv[idx], m.clip_eps)
            stats["single"] += float(single.detach().sum())
            stats["pg"] += float(pg.detach().sum())
            return single + pg, None

        idx = torch.arange(len(y), device=y.device)
        loss, _ = chunked_pair_loss(fn, h_s, head(models.student, models.vocab_size),
                                    h_t, head(models.teacher, models.vocab_size).detach(),
                                    labels=idx, chunk_size=self.cfg.train.loss_chunk_size)
        total = loss / norm
        self.metrics["single_step_kl"] = stats["single"] / max(1, len(y))
        self.metrics["pg_loss"] = stats["pg"] / max(1, len(y))
        if "lm_labels" in batch:
            lm = {k[3:]: v for k, v in batch.items() if k.startswith("lm_")}
            ce, n_lm = ce_sum(models.student, lm, models.vocab_size, self.cfg.train.loss_chunk_size)
            # its own token mean per micro-batch, averaged over the step's micro-batches
            lm_loss = ce / max(1, n_lm) / self.cfg.train.grad_accum
            self.metrics["lm_loss"] = float(lm_loss.detach()) * self.cfg.train.grad_accum
            total = total + m.lm_weight * lm_loss
        return {"student": total}

    def state_dict(self):
        rollouts = {str(k): {n: t.cpu() for n, t in r.items()} for k, r in self.rollouts.items()}
        return {"rollouts": rollouts, "step": self._step,
                "micro": self._micro, "lm_cursor": self.lm_cursor}

    def load_state_dict(self, state):
        if not state:
            return
        self.rollouts = {int(k): v for k, v in state["rollouts"].items()}
        self._step, self._micro, self.lm_cursor = state["step"], state["micro"], state["lm_cursor"]
