"""Gradient estimators for binary (two-way categorical) gates.

Both return, per example, the value of the "run" class of a hard one-hot sample in the forward
pass; they differ in the gradient they give the logits. ReinMax (Liu et al., 2023; HadSkip's
Algorithm 1) is second order (Heun's method); straight-through (STE) is first order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RUN = 1  # gate logits are ordered (skip, run)


def _hard(probs: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """One-hot D: a sample from `probs`, or (deterministic) its argmax, as inference uses."""
    if stochastic:
        index = torch.multinomial(probs.detach().reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
    else:
        index = probs.detach().argmax(-1)
    return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)


def reinmax(logits: torch.Tensor, tau: float = 1.0, sample: torch.Tensor | None = None,
            stochastic: bool = True) -> torch.Tensor:
    """ReinMax: forward = a one-hot D of softmax(logits); backward = Heun's estimate.

    pi_1 = (D + softmax(logits / tau)) / 2, re-attached to the logits' graph through
    softmax(sg(log pi_1 - logits) + logits); pi_2 = 2 pi_1 - softmax(logits) / 2;
    output = pi_2 - sg(pi_2) + D. The temperature enters the midpoint only: the -1/2 term is
    the untempered softmax, as in the reference estimator (microsoft/ReinMax); at tau = 1 this
    is HadSkip's Algorithm 1. D is a sample (`stochastic`, the ReinMax reference) or the argmax;
    `sample` fixes D (for tests).
    """
    if tau < 1.0:
        raise ValueError(f"ReinMax needs tau >= 1 (got {tau}); below 1 its estimate is unstable")
    probs = torch.softmax(logits, -1)
    hard = _hard(probs, stochastic) if sample is None else sample
    pi_1 = (hard + torch.softmax(logits / tau, -1)) / 2
    pi_1 = torch.softmax((torch.log(pi_1) - logits).detach() + logits, -1)
    pi_2 = 2 * pi_1 - probs / 2
    return (pi_2 - pi_2.detach() + hard)[..., RUN]


def straight_through(logits: torch.Tensor, tau: float = 1.0, sample: torch.Tensor | None = None,
                     stochastic: bool = True) -> torch.Tensor:
    """Straight-through: forward = a one-hot D (sample or argmax); backward = the softmax gradient."""
    probs = torch.softmax(logits / tau, -1)
    hard = _hard(torch.softmax(logits, -1), stochastic) if sample is None else sample
    return (probs - probs.detach() + hard)[..., RUN]


ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {"reinmax": reinmax, "ste": straight_through}
