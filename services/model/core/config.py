"""ModelConfig: every choice that shapes the network, stored in each checkpoint.

A checkpoint rebuilds its network from this dataclass alone (plus the base weights of a pretrained
encoder, which come from their package or local path, never from the network).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from shared.contract.features.spec import MINILM_PACKAGE, FeatureSpec, resolve_pretrained
from shared.contract.labels import MODALITIES

TextTrainMode = Literal["frozen", "top_layers", "lora", "full"]


@dataclass
class ModelConfig:
    # --- text ----------------------------------------------------------------------------------
    # Hub name, local path or "package:<module>" of a transformers encoder (its weights are the
    # base the checkpoint stores changes against) ...
    text_encoder: str = MINILM_PACKAGE
    # ... or an inline transformers config dict (random init, every weight stored): tests use it.
    text_encoder_config: dict[str, Any] | None = None
    # frozen: only projection/heads train; top_layers: the last `text_train_layers` transformer
    # layers train; lora: peft LoRA adapters on every layer; full: everything trains.
    text_train_mode: TextTrainMode = "top_layers"
    text_train_layers: int = 2
    lora_rank: int = 8
    lora_alpha: int = 16
    # Pool over the utterance's own tokens (segment 0); context tokens only inform via attention.
    text_pool_target_only: bool = True
    # ISO 639-1 codes of the languages the text encoder reads (MiniLM and MPNet sentence encoders:
    # English only). A transcript detected in another language is not used (language_unsupported);
    # empty: every language is read.
    text_languages: tuple[str, ...] = ("en",)

    # --- audio: a CNN over log-mel, or a pretrained speech encoder -------------------------------
    # "cnn": the CNN below, trained from scratch; "transformers": a speech encoder that reads
    # Whisper-style log-mels (shared.contract.features.audio computes exactly Whisper's scale), by
    # name/path in `audio_encoder` (e.g. "openai/whisper-base": then spec.n_mels must be its 80
    # mel bins) or inline in `audio_encoder_config`. Its input is padded to the encoder's own length.
    audio_backbone: Literal["cnn", "transformers"] = "cnn"
    audio_encoder: str | None = None
    audio_encoder_config: dict[str, Any] | None = None
    audio_train_backbone: bool = True
    # The speech encoder's input window in log-mel frames (0: its own, 3000 for Whisper's 30 s).
    # A shorter window keeps the first rows of its position table; set it to the spec's
    # max_audio_frames, so an utterance is not padded to 30 s (Whisper base: 0.14 s instead of ~1 s).
    audio_input_frames: int = 0
    # How the speech encoder's states become one vector. "mean_max": mean and max of its last
    # hidden state. "layer_stats": mean and standard deviation over the real (unpadded) frames of
    # every hidden state (the input embedding and each layer), combined by a learned softmax
    # weighting over the layers: emotion sits in the middle layers more than in the last one.
    audio_pooling: Literal["mean_max", "layer_stats"] = "mean_max"
    audio_channels: tuple[int, ...] = (32, 64, 128)
    # Mel-frequency bands kept after the convolutions (1: averaged away). More bands keep where in
    # the spectrum energy sits (pitch, formants), which acted-emotion speech needs.
    audio_frequency_bands: int = 1
    # Extra stride-1 3x3 convolutions in each stage, before its stride-2 one: depth without
    # shrinking the log-mel image further.
    audio_convs_per_stage: int = 0
    # "utterance": one mean and deviation over the whole log-mel (keeps the spectral shape);
    # "per_bin": each mel bin on its own (removes a speaker's and microphone's fixed colouring).
    audio_normalization: Literal["utterance", "per_bin"] = "utterance"
    # Labels of an extra head on the audio embedding, trained on acted speech (RAVDESS's eight
    # emotions, services/model/training/data/speech.py); empty: no such head.
    speech_labels: tuple[str, ...] = ()

    # --- visual: per-frame backbone + temporal pooling -----------------------------------------
    # "cnn": a small CNN trained from scratch; "face_cnn": an expression CNN over grayscale face
    # crops (each standardised to its own mean and deviation; stages of 3x3 convolutions, batch
    # norm, ReLU and 2x2 max pooling), the one trained on FER2013; "transformers": an image model
    # (e.g. ResNet) by name/path in `visual_encoder` or inline in `visual_encoder_config`.
    visual_backbone: Literal["cnn", "face_cnn", "transformers"] = "cnn"
    visual_encoder: str | None = None
    visual_encoder_config: dict[str, Any] | None = None
    visual_train_backbone: bool = True
    visual_channels: tuple[int, ...] = (32, 64, 128)
    # face_cnn: 3x3 convolutions per stage before its pooling.
    visual_convs_per_stage: int = 1
    # At inference, average each frame's features with its mirror image's (test-time flip; the
    # training augmentations flip faces, so both read alike). Twice the visual encoder's cost.
    visual_flip_average: bool = False

    # --- fusion ----------------------------------------------------------------------------------
    embed_dim: int = 256
    fusion_hidden: int = 256
    dropout: float = 0.2
    # Probability, per present modality and sample, of hiding it during training.
    modality_dropout: float = 0.15
    # Per-modality adapters into the fusion's first layer, fed (embedding - absent embedding) of the
    # rows where the modality is used and zero-initialised: with the fusion frozen, they let a new
    # branch (audio beside a trained text branch) speak to it while an input without that modality
    # gets exactly the old output.
    fusion_adapters: bool = False
    # The fusion gate (services.model.core.gate): "" off; "log_linear" or "mixture" pools, on rows
    # with two or more modalities, one expert per used modality ("solo": the fused heads on that
    # modality alone; "head": its own heads), plus the fused heads on the whole row when
    # fusion_gate_joint, weighted by a gate over their reliability (fusion_gate_hidden 0: linear),
    # the modalities' agreement (fusion_gate_agreement) and fusion_gate_embedding learned
    # projections of each used modality's embedding (0: none); with fusion_gate_temperature the
    # same features also set the pooled reading's temperature per row.
    fusion_gate: str = ""
    fusion_gate_experts: str = "solo"
    fusion_gate_joint: bool = False
    fusion_gate_hidden: int = 0
    fusion_gate_agreement: bool = False
    fusion_gate_embedding: int = 0
    fusion_gate_temperature: bool = False
    # Modalities whose encoder was trained; an untrained one is treated as absent at inference.
    trained_modalities: tuple[str, ...] = MODALITIES
    # The fields a run gave explicitly (``given``: a ``--model-*`` flag or a preset's ``[model]``),
    # as a pydantic model's ``model_fields_set``: they win over an initial checkpoint's values even
    # where they equal the defaults. Not a dataclass field, so never stored in a checkpoint.
    fields_set: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def given(cls, values: dict[str, Any]) -> ModelConfig:
        """A ModelConfig of ``values`` that remembers them as explicitly set."""
        config = cls(**values)
        config.fields_set = frozenset(values)
        return config

    def __post_init__(self) -> None:
        self.audio_channels = tuple(self.audio_channels)
        self.text_languages = tuple(self.text_languages)
        self.speech_labels = tuple(self.speech_labels)
        self.visual_channels = tuple(self.visual_channels)
        self.trained_modalities = tuple(self.trained_modalities)
        unknown = set(self.trained_modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities: {sorted(unknown)}")
        if self.audio_backbone == "transformers" and not (self.audio_encoder or self.audio_encoder_config):
            raise ValueError("audio_backbone='transformers' needs audio_encoder or audio_encoder_config")
        if self.audio_input_frames % 2 or self.audio_input_frames < 0:
            raise ValueError("audio_input_frames must be even (the encoder halves it) and not negative")
        if self.visual_backbone == "transformers" and not (self.visual_encoder or self.visual_encoder_config):
            raise ValueError("visual_backbone='transformers' needs visual_encoder or visual_encoder_config")

    @property
    def text_is_pretrained(self) -> bool:
        return self.text_encoder_config is None

    @property
    def audio_is_pretrained(self) -> bool:
        return self.audio_backbone == "transformers" and self.audio_encoder_config is None

    @property
    def visual_is_pretrained(self) -> bool:
        return self.visual_backbone == "transformers" and self.visual_encoder_config is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _same_model(first: str, second: str) -> bool:
    if first == second:
        return True
    try:
        return Path(resolve_pretrained(first)).resolve() == Path(resolve_pretrained(second)).resolve()
    except (OSError, ImportError, AttributeError):
        return False


def check_tokenizer(config: ModelConfig, spec: FeatureSpec) -> None:
    """The spec's tokenizer must be the pretrained text encoder's own: token ids from another
    vocabulary would be read as other words. An inline (randomly initialised) text encoder has no
    vocabulary of its own; it is sized to the spec's tokenizer, so there is nothing to compare."""
    if config.text_is_pretrained and not _same_model(spec.tokenizer, config.text_encoder):
        raise ValueError(
            f"the feature spec's tokenizer {spec.tokenizer!r} is not the text encoder "
            f"{config.text_encoder!r}: set --spec-tokenizer to the encoder (or --model-text-encoder "
            f"to the tokenizer's model)"
        )
