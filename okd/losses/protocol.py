"""What okd.losses.chunked.chunked_pair_loss evaluates on each chunk of logits: one protocol,
`ChunkLoss`, with two kinds (as Liger's fused distillation base has one base and a subclass per divergence):
  - `AutogradLoss`: `per_token(zs, zt, y) -> (student [n], teacher [n] | None)`, differentiated by autograd;
  - `ClosedFormLoss`: `with_grads(zs, zt, y, need) -> (student, teacher | None, d student_sum/d zs | None,
    d teacher_sum/d zt | None)`, analytic gradients (okd.losses.closed_form.KDClosedForm, okd.losses.topk).
A plain function fn(zs, zt, y) -> (student, teacher | None) is taken as an AutogradLoss.
"""


class ChunkLoss:
    """The per-token losses of one chunk of logits; subclass AutogradLoss or ClosedFormLoss."""


class AutogradLoss(ChunkLoss):
    """Per-token losses whose logit gradients autograd computes."""

    def __init__(self, fn=None):
        self.fn = fn

    def per_token(self, zs, zt, y):
        return self.fn(zs, zt, y)


class ClosedFormLoss(ChunkLoss):
    """Per-token losses that return their own logit gradients (no autograd graph)."""

    def with_grads(self, zs, zt, y, need=(True, True)):
        raise NotImplementedError


def as_chunk_loss(fn) -> ChunkLoss:
    return fn if isinstance(fn, ChunkLoss) else AutogradLoss(fn)
