"""Build a teacher cache for a training config: the trainer's tokenisation and order of features, the
config's teacher, run once (`okd teacher cache` and `okd compare`'s shared caches both call this)."""

from __future__ import annotations

from pathlib import Path

from okd.config import Config
from okd.errors import OkdError


def build_teacher_cache(cfg: Config, output: str | Path, *, top_k: int | str, temperatures=(), dtype: str = "float16",
                        batch_size: int = 8, shard_examples: int | None = None, device=None,
                        progress: bool = True) -> dict:
    """Score cfg.data.train (and data.valid) with cfg.teacher into `output`; returns the manifest.
    top_k: a number of tokens or 'all'. method.temperature is always among the stored tail temperatures."""
    from okd.models.loading import check_embeddings, check_same_vocab, load_model, load_tokenizer
    from okd.models.teacher_cache import SHARD_EXAMPLES, build_cache, check_top_k, describe_config
    from okd.train.setup import load_split  # the trainer's tokenisation and order of features

    if not cfg.teacher.path:
        raise OkdError("teacher.path is not set: the cache stores that teacher's predictions")
    if not cfg.data.train:
        raise OkdError("data.train is not set; give the training data the cache is for")
    if cfg.method.cross_tokenizer != "off":
        tokenizer, splits, depends_on, shared = _cross_tokenizer_splits(cfg, progress)
    else:
        tokenizer = load_tokenizer(cfg.student if cfg.student.path else cfg.teacher)  # the trainer's tokenizer
        if cfg.student.path:
            check_same_vocab(load_tokenizer(cfg.teacher), tokenizer)
        splits = {"train": load_split(cfg, cfg.data.train, "train", tokenizer, cfg.data.train_limit, progress)[1]}
        if cfg.data.valid:
            splits["valid"] = load_split(cfg, cfg.data.valid, "valid", tokenizer, cfg.data.valid_limit, False)[1]
        depends_on, shared = describe_config(cfg, tokenizer), None
    vocab = len(tokenizer)
    top_k = check_top_k(vocab if top_k == "all" else top_k, vocab)
    teacher = load_model(cfg.teacher)
    teacher.requires_grad_(False)
    check_embeddings(teacher, tokenizer, "teacher")
    return build_cache(output, teacher=teacher, tokenizer=tokenizer, splits=splits, depends_on=depends_on,
                       vocab_size=vocab, top_k=top_k, temperatures=[cfg.method.temperature, *temperatures],
                       value_dtype=dtype, batch_size=batch_size, shard_examples=shard_examples or SHARD_EXAMPLES,
                       device=device, progress=progress, shared=shared)


def _cross_tokenizer_splits(cfg: Config, progress: bool):
    """(teacher tokenizer, {"train": the teacher's side of the paired features}, depends_on, the shared
    vocabulary's teacher ids): a cache on the teacher's own tokens for a method.cross_tokenizer run (its
    validation scores the student alone: no valid split)."""
    from okd.crosstok.data import pair_vocab, teacher_side, teacher_template
    from okd.models.fingerprints import tokenizer_sha256
    from okd.models.loading import load_tokenizer
    from okd.models.teacher_cache import describe_config
    from okd.train.setup import load_split

    if not cfg.student.path:
        raise OkdError("a cache for method.cross_tokenizer needs student.path: the teacher's tokens are aligned with "
                       "the student's")
    t_tok, s_tok = load_tokenizer(cfg.teacher), load_tokenizer(cfg.student)
    feats = load_split(cfg, cfg.data.train, "train", s_tok, cfg.data.train_limit, progress, teacher_tokenizer=t_tok)[1]
    depends_on = describe_config(cfg, t_tok)
    depends_on["data"].pop("valid", None)
    depends_on.update(template=teacher_template(cfg, t_tok), cross_tokenizer={
        "student_tokenizer_sha256": tokenizer_sha256(s_tok), "student_template": cfg.data.template})
    return t_tok, {"train": teacher_side(feats)}, depends_on, pair_vocab(t_tok, s_tok).teacher
