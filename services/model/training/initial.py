"""Starting from trained weights (``--init-from DIR`` or ``PART+PART=DIR``): which checkpoints
supply which groups of parts, the ModelConfig and FeatureSpec of the run, and the weights copied."""

from __future__ import annotations

from pathlib import Path

from services.model.core.checkpoint import load_checkpoint
from services.model.core.config import ModelConfig
from services.model.core.network import MoodreelModel
from services.model.core.parts import group_modality, group_parts, part_of
from services.model.training.config import TrainConfig
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import MODALITIES
from shared.logging import get_logger

log = get_logger(__name__)


def initial_checkpoints(config: TrainConfig) -> list[tuple[tuple[str, ...], object]]:
    """``(parts, LoadedModel)`` per ``config.init_from`` entry (parts empty: all)."""
    loaded = []
    for entry in config.init_from:
        parts_text, _, directory = entry.rpartition("=")
        parts = tuple(p for p in parts_text.split("+") if p)
        group_parts(parts, f"parts in init_from {entry!r}")
        loaded.append((parts, load_checkpoint(Path(directory))))
    return loaded


AUDIO_SPEC_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "max_audio_frames")
# What the visual weights learned on: the face crops' size and margin and the frames per utterance
# (the detector's own settings come from the run).
VISUAL_SPEC_FIELDS = ("frames_per_utterance", "frame_size", "face_margin")


def _supplies(parts: tuple[str, ...], loaded, modality: str) -> bool:
    """Whether an init_from entry supplies a branch its checkpoint trained."""
    named = not parts or modality in {group_modality(part) for part in parts}
    return named and modality in loaded.config.trained_modalities


def _checkpoints_spec(initial_checkpoints) -> FeatureSpec:
    """The first initial checkpoint's FeatureSpec, with the log-mel settings of the checkpoint
    that supplies the audio branch and the frame and face settings of the one that supplies the
    visual branch (the features their weights were trained on)."""
    spec = initial_checkpoints[0][1].spec
    visual_specs = [
        loaded.spec
        for parts, loaded in initial_checkpoints[1:]
        if parts and _supplies(parts, loaded, "visual")
    ]
    if visual_specs:
        spec = spec.model_copy(update={f: getattr(visual_specs[-1], f) for f in VISUAL_SPEC_FIELDS})
    # Only entries whose checkpoint trained audio bind the log-mel settings: a text-only
    # checkpoint's spec says nothing its weights read.
    audio_specs = [loaded.spec for parts, loaded in initial_checkpoints if _supplies(parts, loaded, "audio")]
    audio = {tuple(getattr(s, f) for f in AUDIO_SPEC_FIELDS) for s in audio_specs}
    if len(audio) > 1:
        raise ValueError("init_from checkpoints that supply the audio branch use different log-mel settings")
    if audio_specs:
        spec = spec.model_copy(update={f: getattr(audio_specs[-1], f) for f in AUDIO_SPEC_FIELDS})
    return spec


def initial_spec(config: TrainConfig, initial_checkpoints) -> FeatureSpec:
    """The run's FeatureSpec when it starts from checkpoints: the features the initial weights
    were trained on, with every field the run sets itself (a ``--spec-*`` flag, a preset's
    ``[spec]``, or a value other than the default) applied on top. A set field that differs from
    what a supplied branch's weights read (the tokenizer of the text branch, the log-mel settings
    of the audio branch, the frame and face settings of the visual branch) is refused: the weights
    would read other features than they learned on."""
    spec = _checkpoints_spec(initial_checkpoints)
    defaults = FeatureSpec().model_dump()
    values = config.spec.model_dump()
    explicit = {
        name: values[name]
        for name in values
        if name in config.spec.model_fields_set or values[name] != defaults[name]
    }
    bound: dict[str, str] = {}
    for modality, fields in (
        ("text", ("tokenizer",)),
        ("audio", AUDIO_SPEC_FIELDS),
        ("visual", VISUAL_SPEC_FIELDS),
    ):
        if any(_supplies(parts, loaded, modality) for parts, loaded in initial_checkpoints):
            bound |= dict.fromkeys(fields, modality)
    conflicts = [
        f"{name} is {explicit[name]!r} in this run but the {modality} branch from --init-from was "
        f"trained with {getattr(spec, name)!r}"
        for name, modality in bound.items()
        if name in explicit and explicit[name] != getattr(spec, name)
    ]
    if conflicts:
        raise ValueError(
            "the feature spec disagrees with the --init-from weights: "
            + "; ".join(conflicts)
            + " (leave the setting out to use the checkpoint's, or train that branch afresh)"
        )
    return spec.model_copy(update=explicit)


# ModelConfig fields that shape each modality's branch: they come from the checkpoint that
# supplies the branch, so an audio run's architecture travels with its weights.
_BRANCH_FIELDS = {"text": ("text_",), "audio": ("audio_", "speech_labels"), "visual": ("visual_",)}


def model_config(config: TrainConfig, initial_checkpoints) -> ModelConfig:
    """The first initial checkpoint's ModelConfig, each later entry's branch fields for the parts
    it supplies, then every field the run sets itself (a ``--model-*`` flag, a preset's
    ``[model]``, or a value other than the default); without initial checkpoints, the run's own."""
    if not initial_checkpoints:
        return config.model
    values = initial_checkpoints[0][1].config.to_dict()
    for parts, loaded in initial_checkpoints[1:]:
        modalities = {group_modality(part) for part in parts} - {None} if parts else set(MODALITIES)
        prefixes = tuple(prefix for modality in modalities for prefix in _BRANCH_FIELDS[modality])
        values |= {k: v for k, v in loaded.config.to_dict().items() if prefixes and k.startswith(prefixes)}
    defaults = ModelConfig().to_dict()
    explicit = {
        k: v for k, v in config.model.to_dict().items() if k in config.model.fields_set or v != defaults[k]
    }
    return ModelConfig.from_dict(values | explicit)


def load_initial_weights(model: MoodreelModel, initial: MoodreelModel, parts: tuple[str, ...]) -> set[str]:
    """Copy every weight of ``parts`` (all if empty) whose name and shape match; the rest starts
    fresh, so a run that takes only "text" rebuilds the same model whatever else the checkpoint has."""
    own = model.state_dict()
    wanted = group_parts(parts) if parts else None
    matching = {
        k: v
        for k, v in initial.state_dict().items()
        if k in own and own[k].shape == v.shape and (wanted is None or part_of(k).name in wanted)
    }
    model.load_state_dict(matching, strict=False)
    log.info("initial_weights", loaded=len(matching), fresh=len(own) - len(matching))
    return set(matching)


def check_frozen_parts_loaded(model: MoodreelModel, frozen: set[int], loaded: set[str]) -> None:
    """A frozen weight that no initial checkpoint supplied would stay at its random start: refuse.
    Fusion adapters are exempt: a checkpoint without them has none, which is what zero means."""
    missing = [
        name
        for name, parameter in model.named_parameters()
        if id(parameter) in frozen and name not in loaded and not name.startswith("fusion_adapters.")
    ]
    if missing:
        raise ValueError(
            f"frozen weights not supplied by any init_from checkpoint (different architecture?): "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
