"""Layer 3: divergences for knowledge distillation, exact (`divergence`), in closed form
(`closed_form`), chunked over tokens for training (`chunked`), and against a cached top-k teacher (`topk`)."""

from okd.config import DIVERGENCES
from okd.losses.chunked import CHUNK_SIZE, chunked_pair_loss
from okd.losses.closed_form import KDClosedForm, chunked_kd_loss
from okd.losses.divergence import reduce_tokens, token_ce, token_divergence
from okd.losses.protocol import AutogradLoss, ChunkLoss, ClosedFormLoss

__all__ = ["CHUNK_SIZE", "DIVERGENCES", "AutogradLoss", "ChunkLoss", "ClosedFormLoss", "KDClosedForm",
           "chunked_kd_loss", "chunked_pair_loss", "reduce_tokens", "token_ce", "token_divergence"]
