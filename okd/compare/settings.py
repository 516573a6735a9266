"""A plan's evaluation settings: what run_eval is given (`eval_config`) and the stamp an evaluation
JSON carries (`eval_settings`: a later run with other settings evaluates again)."""

from __future__ import annotations

from okd.compare.grid import Plan
from okd.eval.config import EvalConfig, ExposureConfig

# Settings added in the stamp of an evaluation only where they differ from okd eval's defaults, so
# evaluations stamped before these keys existed still count as done.
_EXTRA_SETTINGS = {False: ("temperature", "top_p", "top_k", "dtype", "rouge_tokenizer"), True: ("max_length", "dtype")}


def eval_settings(plan: Plan, exposure: bool) -> dict:
    """The settings an evaluation was made with (stamped into its JSON; a change re-evaluates)."""
    ev = plan.spec.eval
    template = ev.template or plan.runs[0].cfg.data.template
    s = dict(data=list(ev.data), split=ev.split, seeds=ev.seeds, greedy=ev.greedy, template=template,
             max_new_tokens=ev.max_new_tokens, max_prompt_length=ev.max_prompt_length, limit=ev.limit,
             batch_size=ev.batch_size)
    if exposure:
        ex = ev.exposure
        s = dict(data=[ex.data or ev.data[0]], split=ev.split, template=template, teacher=ex.teacher or plan.teacher,
                 prompts=ex.prompts, samples=ex.samples, max_len=ex.max_len, length=ex.length,
                 max_prompt_length=ev.max_prompt_length, batch_size=ev.batch_size)
    defaults = EvalConfig()
    s.update({k: getattr(ev, k) for k in _EXTRA_SETTINGS[exposure] if getattr(ev, k) != getattr(defaults, k)})
    return s


def eval_config(plan: Plan, exposure: bool) -> EvalConfig:
    """What okd.eval.run_eval is given: the ROUGE-L pass over seeds, or the exposure pass (one greedy
    answer per exposure prompt, cheap, then exposure bias and teacher-forced stats)."""
    ev = plan.spec.eval
    common = dict(split=ev.split, template=ev.template or plan.runs[0].cfg.data.template,
                  max_prompt_length=ev.max_prompt_length, max_length=ev.max_length, batch_size=ev.batch_size,
                  dtype=ev.dtype)
    if not exposure:
        return EvalConfig(**common, seeds=ev.seeds, greedy=ev.greedy, temperature=ev.temperature, top_p=ev.top_p,
                          top_k=ev.top_k, max_new_tokens=ev.max_new_tokens, limit=ev.limit,
                          rouge_tokenizer=ev.rouge_tokenizer)
    ex = ev.exposure
    return EvalConfig(**common, greedy=True, max_new_tokens=min(ev.max_new_tokens, 16), limit=ex.prompts,
                      exposure=ExposureConfig(samples=ex.samples, max_len=ex.max_len, length=ex.length))


def exposure_oracle_run(plan: Plan) -> str | None:
    """The grid run whose model is exposure bias's oracle: the tuned teacher (teacher_from), unless
    eval.exposure.teacher names another model."""
    ev = plan.spec.eval
    return plan.spec.teacher_from if ev is not None and ev.exposure is not None and ev.exposure.teacher is None \
        else None


def exposure_runs(plan: Plan) -> set[str]:
    ev = plan.spec.eval
    if ev is None or ev.exposure is None:
        return set()
    if ev.exposure.runs is None:
        return {r.name for r in plan.runs}
    wanted = set(ev.exposure.runs)  # run names, or groups (a run before its seeds expanded it)
    return {r.name for r in plan.runs if r.name in wanted or r.group in wanted}
