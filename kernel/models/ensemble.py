"""Fold ensembles: several trained models as one, averaging their probabilities.

Averaging logits is not averaging probabilities (softmax is not linear), and competitors average
probabilities. :class:`FoldEnsemble` therefore returns logits whose activation *is* the mean of the
members' probabilities: ``log(mean p)`` for softmax (``softmax(log q) = q`` when ``q`` sums to 1)
and ``logit(mean p)`` for sigmoid. Everything downstream (top-k, thresholds, argmax, flip TTA on
probabilities) then works on an ensemble exactly as on one model. The sums run in float64 and the
probabilities are kept inside [1e-12, 1 - 1e-12], so no logit is infinite (a bilinear resize of an
infinite logit would give NaN); the round trip changes a probability by less than 1e-7. Outputs that are
values, not logits (regression, activation ``identity``), are averaged as they are.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "mean_probabilities", "probabilities_to_logits", "FoldEnsemble"]

ACTIVATIONS = ("softmax", "sigmoid", "identity")  # identity: outputs that are values (regression), averaged as they are
_EPS = 1e-12


def _probs(logits: Tensor, activation: str) -> Tensor:
    logits = logits.double()
    if activation == "identity":
        return logits
    return logits.softmax(dim=1) if activation == "softmax" else torch.sigmoid(logits)


def mean_probabilities(logits: Sequence[Tensor], activation: str) -> Tensor:
    """The mean over models of their probabilities: each logits (N, C, ...) -> (N, C, ...) float64."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    return torch.stack([_probs(z, activation) for z in logits]).mean(dim=0)


def probabilities_to_logits(probs: Tensor, activation: str) -> Tensor:
    """Logits (float32) whose ``activation`` gives ``probs`` back: log p (softmax), logit p (sigmoid), the values
    themselves (identity)."""
    if activation == "identity":
        return probs.float()
    p = probs.double().clamp(_EPS, 1.0 - _EPS)
    return (p.log() if activation == "softmax" else torch.logit(p)).float()


class FoldEnsemble(nn.Module):
    """Models of the same task and classes whose forward is their averaged probabilities, as logits."""

    def __init__(self, models: List[nn.Module], activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
        self.members = nn.ModuleList(models)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> logits (N, C, ...) of the mean probability."""
        return probabilities_to_logits(mean_probabilities([m(x).float() for m in self.members], self.activation),
                                       self.activation)
