"""The model service's response: what ``POST /invocations`` returns and the invoke client yields.

Label order everywhere is shared.contract.labels; ``scores`` hold every label's probability (they sum to 1),
``confidence`` is the probability of ``label``. Per-modality scores come from each modality's own
head and are present only for the modalities that were used, so a result shows what drove it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.contract.labels import MODALITIES


class LabelScores(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float = Field(ge=0.0, le=1.0)
    scores: dict[str, float]

    @classmethod
    def from_probabilities(cls, labels: tuple[str, ...], probabilities: list[float]) -> LabelScores:
        best = max(range(len(labels)), key=probabilities.__getitem__)
        return cls(
            label=labels[best],
            confidence=probabilities[best],
            scores={label: probabilities[i] for i, label in enumerate(labels)},
        )


class ModalityScores(BaseModel):
    """One modality's own head: what it alone says about the utterance."""

    model_config = ConfigDict(frozen=True)

    emotion: LabelScores
    sentiment: LabelScores


class FaceBox(BaseModel):
    """One face in a sampled frame: its box normalised to the frame (0..1) and the detector's score."""

    model_config = ConfigDict(frozen=True)

    x: float
    y: float
    width: float
    height: float
    score: float = Field(ge=0.0, le=1.0)


class FrameFaces(BaseModel):
    """The faces found in one sampled frame of an utterance."""

    model_config = ConfigDict(frozen=True)

    time: float = Field(description="seconds into the media")
    boxes: list[FaceBox] = Field(default_factory=list, description="largest first")
    used: int | None = Field(None, description="index in boxes of the face the visual modality read")

    @classmethod
    def from_meta(cls, frame: dict) -> FrameFaces:
        """From a bundle's per-frame record (shared.bundle.UtteranceMeta.faces)."""
        return cls(
            time=frame["time"],
            boxes=[
                FaceBox(x=box[0], y=box[1], width=box[2], height=box[3], score=score)
                for box, score in zip(frame["boxes"], frame["scores"], strict=True)
            ],
            used=frame.get("used"),
        )


class UtterancePrediction(BaseModel):
    model_config = ConfigDict(frozen=True)

    start: float
    end: float
    text: str = ""
    speaker: str | None = None
    emotion: LabelScores
    sentiment: LabelScores
    modalities_used: list[str] = Field(description=f"subset of {', '.join(MODALITIES)}, in that order")
    modalities: dict[str, ModalityScores] = Field(
        default_factory=dict, description="per-modality scores, keyed by the modalities used"
    )
    modalities_masked: dict[str, str] = Field(
        default_factory=dict,
        description="why a modality was not used, e.g. {'audio': 'no_speech'} (the speech gate), "
        "{'visual': 'no_face'} (no face in the sampled frames)",
    )
    faces: list[FrameFaces] = Field(
        default_factory=list, description="per sampled frame, the faces found (with a face detector)"
    )


class ModelInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    spec_hash: str


class InvocationResponse(BaseModel):
    model: ModelInfo
    utterances: list[UtterancePrediction]
