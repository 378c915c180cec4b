"""The fusion gate: a fused reading weighted by how reliable each modality's own reading is.

The fused heads over concatenated embeddings were never trained on two modalities at once, so on a
row with text and speech they can follow whichever branch speaks loudest (espeak-ng's flat voice
outweighed the words). With ``ModelConfig.fusion_gate`` on, a row where two or more modalities are
used gets instead a pooling of experts, one per used modality (and optionally the fused head on
the whole row):

- a modality's expert is what the network says on that modality alone (``"solo"``: the fused
  heads over that embedding with the others absent, exactly what a row with only that modality
  gets) or that modality's own heads (``"head"``), each divided by a temperature fitted on dev;
- a tiny gate (a linear layer, or one hidden layer) reads every expert's reliability (largest
  probability, normalised entropy, margin between the two best classes, presence), optionally how
  much the modalities agree (``fusion_gate_agreement``: the probability that two modality experts
  name the same class) and what kind of input each modality had (``fusion_gate_embedding``: a few
  learned projections of each used modality's unit-length embedding, so a gate can tell a
  synthetic voice from an acted one, which their confidences alone do not), and gives each expert
  a weight; an absent expert weighs exactly 0 and the weights sum to 1; optionally
  (``fusion_gate_temperature``) the same features give the pooled reading a temperature of its own;
- the pooled distribution is log-linear (``log p ∝ Σ w_e log p_e``) or a mixture (``Σ w_e p_e``).

Rows with one modality keep the network's output bit for bit, and rows with none stay without
evidence (serving masks them). Everything here is fitted on dev rows only
(``services.model.training.fusion_gate``); the parameters live in the checkpoint's weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS

GATE_POOLINGS = ("log_linear", "mixture")
GATE_EXPERTS = ("solo", "head")
# Reliability features per expert: largest probability, normalised entropy, margin, presence.
FEATURES_PER_EXPERT = 4
HEAD_CLASSES = (len(EMOTIONS), len(SENTIMENTS))
MODALITY_PAIRS = tuple((a, b) for a in range(len(MODALITIES)) for b in range(a + 1, len(MODALITIES)))


def reliability_features(log_probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, E, C]`` log-probabilities and ``[B, E]`` presence -> ``[B, E * 4]`` (zeros for an
    absent expert, so what it would have said cannot count)."""
    probs = log_probs.exp()
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * log_probs).sum(-1) / math.log(log_probs.shape[-1])
    features = torch.stack([top2[..., 0], entropy, top2[..., 0] - top2[..., 1], torch.ones_like(entropy)], -1)
    return (features * present[..., None].to(features.dtype)).flatten(1)


def agreement_features(log_probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, 3]``: for each pair of modality experts, the probability that both name the same
    class (``Σ_c p_a(c) p_b(c)``); 0 unless both are present."""
    probs = log_probs.exp()
    pairs = [
        (probs[:, a] * probs[:, b]).sum(-1) * (present[:, a] & present[:, b]).to(probs.dtype)
        for a, b in MODALITY_PAIRS
    ]
    return torch.stack(pairs, -1)


class HeadGate(nn.Module):
    """Weights of the experts of one head (emotion or sentiment) from their reliability and,
    optionally, the modalities' agreement and a projection of their embeddings."""

    def __init__(self, experts: int, hidden: int, agreement: bool = False, embedding: int = 0, dim: int = 0):
        super().__init__()
        if embedding and not dim:
            raise ValueError("fusion_gate_embedding needs the embeddings' width")
        self.agreement = agreement
        # One projection per modality: each branch's embedding space is its own.
        self.projections = (
            nn.ModuleList(nn.Linear(dim, embedding, bias=False) for _ in MODALITIES) if embedding else None
        )
        features = (
            experts * FEATURES_PER_EXPERT + len(MODALITY_PAIRS) * int(agreement) + len(MODALITIES) * embedding
        )
        self.net = (
            nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, experts))
            if hidden
            else nn.Linear(features, experts)
        )
        # A zero output layer weighs every present expert the same until the gate is fitted (the
        # hidden layer keeps its random start, or no gradient would reach it).
        last = self.net[-1] if hidden else self.net
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def features(
        self, log_probs: torch.Tensor, present: torch.Tensor, embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        parts = [reliability_features(log_probs, present)]
        if self.agreement:
            parts.append(agreement_features(log_probs, present))
        if self.projections is not None:
            if embeddings is None:
                raise ValueError("this gate reads the modalities' embeddings")
            # Unit length: the gate reads the direction (what kind of input), not the branch's scale.
            unit = torch.nn.functional.normalize(embeddings.to(log_probs.dtype), dim=-1)
            parts.extend(
                projection(unit[:, m]) * present[:, m, None].to(log_probs.dtype)
                for m, projection in enumerate(self.projections)
            )
        return torch.cat(parts, -1)

    def forward(
        self, log_probs: torch.Tensor, present: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, E]`` weights: 0 where an expert is absent, each row summing to 1. ``embeddings``:
        ``[B, 3, D]``, each modality's embedding (read only when the gate projects them)."""
        scores = self.net(self.features(log_probs, present, embeddings))
        return torch.softmax(scores.masked_fill(~present, float("-inf")), -1)


class FusionGate(nn.Module):
    def __init__(
        self,
        pooling: str,
        experts: str,
        joint: bool,
        hidden: int,
        agreement: bool = False,
        embedding: int = 0,
        dim: int = 0,
        temperature: bool = False,
    ):
        super().__init__()
        if pooling not in GATE_POOLINGS:
            raise ValueError(f"fusion_gate must be one of {GATE_POOLINGS} or empty, not {pooling!r}")
        if experts not in GATE_EXPERTS:
            raise ValueError(f"fusion_gate_experts must be one of {GATE_EXPERTS}, not {experts!r}")
        self.pooling, self.experts, self.joint = pooling, experts, joint
        count = len(MODALITIES) + int(joint)
        # Row 0 emotion, row 1 sentiment; one log-temperature per expert (fitted on dev).
        self.log_temperature = nn.Parameter(torch.zeros(2, count))
        self.gates = nn.ModuleList(HeadGate(count, hidden, agreement, embedding, dim) for _ in HEAD_CLASSES)
        # With ``temperature``, a linear read of the gate's features gives the pooled reading its own
        # temperature per row: one temperature per combination cannot be right for a synthetic and
        # an acted voice at once. Zero-initialised: temperature 1 until fitted.
        self.scales = (
            nn.ModuleList(
                nn.Linear(gate.net[0].in_features if hidden else gate.net.in_features, 1)
                for gate in self.gates
            )
            if temperature
            else None
        )
        if self.scales is not None:
            for scale in self.scales:
                nn.init.zeros_(scale.weight)
                nn.init.zeros_(scale.bias)

    def expert_log_probs(self, head: int, logits: torch.Tensor) -> torch.Tensor:
        """``[B, E, C]`` raw expert logits -> their temperature-scaled log-probabilities."""
        return torch.log_softmax(logits / self.log_temperature[head].exp()[None, :, None], -1)

    def pool(
        self,
        head: int,
        logits: torch.Tensor,
        present: torch.Tensor,
        embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled log-probabilities ``[B, C]`` and the experts' weights ``[B, E]``."""
        log_probs = self.expert_log_probs(head, logits)
        weights = self.gates[head](log_probs, present, embeddings)
        if self.pooling == "log_linear":
            # where, not a product: an absent expert's log-probabilities never reach the sum.
            pooled = torch.where(present[..., None], weights[..., None] * log_probs, 0.0).sum(1)
        else:
            mixed = torch.where(
                present[..., None], weights.clamp(min=1e-12).log()[..., None] + log_probs, -math.inf
            )
            pooled = torch.logsumexp(mixed, 1)
        if self.scales is not None:
            # Bounded to [e^-2, e^2]; dividing log-probabilities by it changes no label.
            raw = self.scales[head](self.gates[head].features(log_probs, present, embeddings))
            pooled = pooled / (2 * torch.tanh(raw / 2)).exp()
        return torch.log_softmax(pooled, -1), weights


def expert_logits(model, embeddings: list[torch.Tensor], used: torch.Tensor, fused: torch.Tensor):
    """Raw expert logits ``(emotion [B, E, 7], sentiment [B, E, 3])`` and presence ``[B, E]`` for
    the rows of ``used``: one expert per modality (see the module's docstring), then the fused
    heads on the whole row when the gate includes them."""
    gate: FusionGate = model.fusion_gate
    batch = used.shape[0]
    emotion, sentiment = [], []
    for index in range(len(MODALITIES)):
        if gate.experts == "head":
            emotion.append(model.modality_emotion_heads[index](embeddings[index]))
            sentiment.append(model.modality_sentiment_heads[index](embeddings[index]))
            continue
        alone = [
            embedding if other == index else model.absent[other].expand(batch, -1)
            for other, embedding in enumerate(embeddings)
        ]
        weights = torch.zeros_like(used, dtype=alone[0].dtype)
        weights[:, index] = used[:, index].to(alone[0].dtype)
        hidden = model._fuse(alone, weights.unsqueeze(-1))
        emotion.append(model.emotion_head(hidden))
        sentiment.append(model.sentiment_head(hidden))
    present = used
    if gate.joint:
        emotion.append(model.emotion_head(fused))
        sentiment.append(model.sentiment_head(fused))
        present = torch.cat([used, used.any(-1, keepdim=True)], -1)
    return torch.stack(emotion, 1), torch.stack(sentiment, 1), present


def gated_logits(model, embeddings, used, fused, emotion_logits, sentiment_logits):
    """The fused logits with every row of two or more used modalities replaced by the gate's
    pooling; every other row keeps exactly the values it came with."""
    pooled_rows = used.sum(-1) >= 2
    rows = pooled_rows.nonzero(as_tuple=True)[0]
    if not rows.numel():
        return emotion_logits, sentiment_logits
    chosen = [e[rows] for e in embeddings]
    emotion, sentiment, present = expert_logits(model, chosen, used[rows], fused[rows])
    stacked = torch.stack(chosen, 1)
    pooled_emotion, _ = model.fusion_gate.pool(0, emotion, present, stacked)
    pooled_sentiment, _ = model.fusion_gate.pool(1, sentiment, present, stacked)
    emotion_logits = emotion_logits.index_copy(0, rows, pooled_emotion.to(emotion_logits.dtype))
    sentiment_logits = sentiment_logits.index_copy(0, rows, pooled_sentiment.to(sentiment_logits.dtype))
    return emotion_logits, sentiment_logits
