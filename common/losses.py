"""Training losses: ArcFace margin head, focal loss, contrastive losses, class weights.

Backbone, head and loss stay apart, as in InsightFace's arcface_torch: `ArcMarginProduct` owns
the class centres and turns embeddings into scaled logits; cross-entropy or `FocalLoss` is then
applied to those logits; `ContrastiveLoss` works on two embedding batches for Siamese training;
`SourceContrastiveLoss` ties each distorted photo to the clean photo it came from;
`RelationalDistillationLoss` makes a batch's similarities follow a teacher's.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ArcMarginProduct", "FocalLoss", "ContrastiveLoss", "SourceContrastiveLoss",
           "RelationalDistillationLoss", "class_weights"]

# Floor for 1 - cos^2 before the square root: bounds the sqrt gradient near cos = +-1 (and a
# rounding error can never make the argument negative) while moving sin(theta) by <= 1e-6.
_SIN2_EPS = 1e-12


class ArcMarginProduct(nn.Module):
    """Additive angular margin head (ArcFace, Deng et al. 2019) returning scaled logits.

    The target logit becomes `s * cos(theta + m)`, pushing each embedding at least `m` radians
    closer to its class centre than to any other. Feed the output to cross-entropy or
    `FocalLoss`. At inference (`labels=None`) it returns plain `s * cos(theta)`.

    Args:
        in_features: Embedding size D.
        out_features: Number of classes (identities) C.
        s: Logit scale; the norm the normalised embeddings are projected onto.
        m: Angular margin in radians.
        easy_margin: If True apply the margin only where cos > 0; otherwise, past
            theta > pi - m (where cos(theta + m) stops being monotonic) use the linear
            fallback `cos - sin(pi - m) * m` as in the reference implementation.

    Example:
        >>> head = ArcMarginProduct(512, 100)
        >>> logits = head(torch.randn(8, 512), torch.randint(0, 100, (8,)))  # (8, 100)
    """

    def __init__(self, in_features: int, out_features: int, s: float = 30.0, m: float = 0.50,
                 easy_margin: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.s = s
        self.m = m
        self.easy_margin = easy_margin
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.cos_m = math.cos(m)
        self.sin_m = math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"s={self.s}, m={self.m}, easy_margin={self.easy_margin}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine between normalised embeddings `(B, D)` and normalised centres -> `(B, C)`."""
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return cos.clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits `(B, C)`; the margin is added to the target class only when labels given.

        Args:
            embeddings: `(B, D)` embeddings, normalised here (any norm is fine).
            labels: `(B,)` int64 class indices, or None for inference logits.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_features:
            raise ValueError(f"ArcMarginProduct expects embeddings of shape "
                             f"(B, {self.in_features}), got {tuple(embeddings.shape)}")
        cos = self.cosine(embeddings)
        if labels is None:
            return self.s * cos
        sin = torch.sqrt((1.0 - cos * cos).clamp(_SIN2_EPS, 1.0))
        phi = cos * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        else:
            phi = torch.where(cos > self.th, phi, cos - self.mm)
        one_hot = F.one_hot(labels.long(), self.out_features).bool()
        return self.s * torch.where(one_hot, phi, cos)


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits (Lin et al. 2017), with class weights and label smoothing.

    Per sample the loss is `-sum_c q_c * alpha_c * (1 - p_c)^gamma * log p_c`, where q is the
    (optionally smoothed) one-hot target. Down-weighting easy examples helps when the minority
    class (female in Task A) is swamped by easy majority samples. With `gamma=0` it is exactly
    `F.cross_entropy(logits, target, weight=alpha, label_smoothing=label_smoothing)`, including
    the weighted-mean normalisation (divide by the summed target weights).

    Args:
        gamma: Focusing parameter; 0 disables focusing.
        alpha: Optional `(C,)` per-class weights (see `class_weights`), or None.
        label_smoothing: Fraction of target mass spread uniformly over the C classes.
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"FocalLoss reduction={reduction!r}; use 'mean', 'sum' or 'none'")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"FocalLoss label_smoothing={label_smoothing}; use a value in [0, 1)")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.register_buffer("alpha", None if alpha is None
                             else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss for `(B, C)` logits and `(B,)` int class targets."""
        num_classes = logits.shape[1]
        log_p = F.log_softmax(logits.float(), dim=1)
        q = F.one_hot(target.long(), num_classes).float()
        if self.label_smoothing:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        focal = (1.0 - log_p.exp()).pow(self.gamma) if self.gamma else 1.0
        terms = -q * focal * log_p
        if self.alpha is not None:
            terms = terms * self.alpha.to(logits.device)
        loss = terms.sum(dim=1)
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        if self.alpha is None:
            return loss.mean()
        return loss.sum() / self.alpha.to(logits.device)[target.long()].sum()


class ContrastiveLoss(nn.Module):
    """Contrastive loss for Siamese pairs (Hadsell et al. 2006).

    `mean(y * d^2 + (1 - y) * max(0, margin - d)^2)` with d the Euclidean distance and y = 1
    for a same-identity pair: same pairs are pulled together, different pairs pushed beyond
    `margin`. With L2-normalised embeddings d lies in [0, 2].
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """Mean loss for `(B, D)` embedding pairs and `(B,)` targets (1 = same, 0 = different)."""
        d2 = (emb_a - emb_b).pow(2).sum(dim=1)
        # Distance via a floored sqrt: d = 0 would give an infinite gradient otherwise.
        d = torch.sqrt(d2.clamp_min(1e-12))
        y = target.to(d2.dtype)
        return (y * d2 + (1.0 - y) * F.relu(self.margin - d).pow(2)).mean()


class SourceContrastiveLoss(nn.Module):
    """InfoNCE over two views of each source photo (e.g. clean and a distorted copy).

    Identity classes cannot teach a model to match a photo whose face a distortion erased (the
    "sunny" glare): the cues left are hair, clothes and background, which differ between photos
    of one person. This term pulls every view onto the other views of the same source photo and
    pushes it from photos of other identities in the batch. Other photos of the same identity
    are masked out (neither positive nor negative), so it never contradicts ArcFace.

    Args:
        temperature: Softmax temperature on cosine similarities.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, sources: torch.Tensor,
                identities: torch.Tensor) -> torch.Tensor:
        """Mean loss over the 2B views of `(B, D)` batches `emb_a`, `emb_b` (row k of each is a
        view of source photo `sources[k]` of identity `identities[k]`, both `(B,)` ints)."""
        z = F.normalize(torch.cat([emb_a, emb_b]).float(), dim=1)
        source = torch.cat([sources, sources])
        identity = torch.cat([identities, identities])
        self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
        positive = (source[:, None] == source[None, :]) & ~self_mask
        ignored = (identity[:, None] == identity[None, :]) & ~positive
        logits = (z @ z.T / self.temperature).masked_fill(ignored, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        return (-log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()


class RelationalDistillationLoss(nn.Module):
    """KL(teacher || student) between each row's softmax over its similarities to the rest of
    the batch (Park et al.'s relational distillation in its softmax form).

    The student learns the teacher's geometry, which identities look alike and which do not,
    rather than its coordinates, so the two embeddings may have different sizes. In Task B the
    teacher is a face-trained descriptor of the clean photo and the student sees distorted
    copies: it learns to recognise faces the way the teacher does, through the distortion.

    Args:
        temperature: Softmax temperature, the same for both cosine-similarity matrices.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean KL over the rows of `(N, D)` student and `(N, T)` teacher embeddings."""
        self_mask = torch.eye(len(student), dtype=torch.bool, device=student.device)

        def log_softmax(x: torch.Tensor) -> torch.Tensor:
            x = F.normalize(x.float(), dim=1)
            logits = (x @ x.T / self.temperature).masked_fill(self_mask, float("-inf"))
            return F.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)

        log_t, log_s = log_softmax(teacher.detach()), log_softmax(student)
        return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean()


def class_weights(labels: Sequence[int] | np.ndarray | torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights `(C,)`, normalised to mean 1, for imbalanced training.

    Mean 1 keeps the loss on the same scale as the unweighted one, so learning rates carry over.

    Raises:
        ValueError: If a class in `range(num_classes)` has no sample (its weight would be
            infinite) or a label is outside that range.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class_weights: labels must lie in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"class_weights: classes {missing[:10].tolist()} have no samples; "
                         f"pass only classes present in the training labels")
    weights = 1.0 / counts
    return torch.tensor(weights * num_classes / weights.sum(), dtype=torch.float32)
