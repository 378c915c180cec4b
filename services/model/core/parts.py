"""The model's parts: the one table of which parameter belongs to which part.

Every state entry of ``MoodreelModel`` (parameter or buffer) belongs to exactly one part: the part
whose prefix is the longest one that starts its name. Three things read this table and nothing
else: freezing and ``--init-from`` (by the named groups of parts in ``GROUPS``), the optimiser's
learning rates (each part names the ``TrainConfig`` field of its rate) and checkpoint storage (a
part that is a pretrained encoder's base is rebuilt from its package on load, not stored).

A modality's projection and its own heads are trained from scratch even when its encoder is
pretrained, so they learn at the fusion's rate; they still belong to the modality's parts, so a
frozen text branch keeps its projection, its own text scores and the fused output of text-only
input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    name: str
    modality: str | None  # the modality it belongs to; None: the fusion's
    prefixes: tuple[str, ...]
    learning_rate: str  # the TrainConfig field of its learning rate
    # A pretrained encoder's own weights: rebuilt from their package or local path when the
    # modality's encoder is pretrained and these weights were not trained.
    pretrained_base: bool = False


def _modality_heads(index: int) -> tuple[str, ...]:
    return (
        f"modality_emotion_heads.{index}.",
        f"modality_sentiment_heads.{index}.",
        f"fusion_adapters.{index}.",
    )


PARTS: tuple[Part, ...] = (
    Part("text_backbone", "text", ("text.backbone.",), "lr_text_encoder", pretrained_base=True),
    Part("text_projection", "text", ("text.",), "lr_fusion"),
    Part("text_heads", "text", _modality_heads(0), "lr_fusion"),
    Part("audio_backbone", "audio", ("audio.backbone.",), "lr_audio", pretrained_base=True),
    Part("audio_layers", "audio", ("audio.", "speech_head."), "lr_audio"),
    Part("audio_heads", "audio", _modality_heads(1), "lr_fusion"),
    Part("visual_backbone", "visual", ("visual.backbone.",), "lr_visual", pretrained_base=True),
    Part("visual_layers", "visual", ("visual.",), "lr_visual"),
    Part("visual_heads", "visual", _modality_heads(2), "lr_fusion"),
    Part(
        "fusion",
        None,
        ("fusion.", "absent", "emotion_head.", "sentiment_head.", "fusion_gate."),
        "lr_fusion",
    ),
)
PARTS_BY_NAME = {part.name: part for part in PARTS}

# What `--freeze` and `--init-from PART+PART=DIR` name: a modality's branch (encoder, projection,
# own heads and fusion adapter), its encoder alone (the audio one with its 8-class speech head),
# or the fusion.
GROUPS: dict[str, tuple[str, ...]] = {
    "text": ("text_backbone", "text_projection", "text_heads"),
    "audio": ("audio_backbone", "audio_layers", "audio_heads"),
    "visual": ("visual_backbone", "visual_layers", "visual_heads"),
    "fusion": ("fusion",),
    "text_encoder": ("text_backbone", "text_projection"),
    "audio_encoder": ("audio_backbone", "audio_layers"),
    "visual_encoder": ("visual_backbone", "visual_layers"),
}
# The optimiser's parameter groups, in this order, by learning-rate field (the group's name drops
# "lr_").
LEARNING_RATES = ("lr_text_encoder", "lr_audio", "lr_visual", "lr_fusion")


def part_of(name: str) -> Part:
    """The part a state entry belongs to: the longest prefix that starts its name."""
    best: tuple[int, Part] | None = None
    for part in PARTS:
        for prefix in part.prefixes:
            if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), part)
    if best is None:
        raise ValueError(f"{name!r} belongs to no model part; add its prefix to services.model.core.parts")
    return best[1]


def group_parts(groups: tuple[str, ...] | list[str], what: str = "parts") -> set[str]:
    """The part names of named groups; an unknown name is refused."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; they are {sorted(GROUPS)}")
    return {part for group in groups for part in GROUPS[group]}


def in_groups(name: str, groups: tuple[str, ...] | list[str]) -> bool:
    """Whether a state entry belongs to any of the named groups."""
    return part_of(name).name in group_parts(groups)


def group_modality(group: str) -> str | None:
    """The modality a named group belongs to ("audio_encoder" -> "audio"; "fusion" -> None)."""
    return PARTS_BY_NAME[GROUPS[group][0]].modality
