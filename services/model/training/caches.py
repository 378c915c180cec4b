"""Feature caches: what a frozen encoder computes is computed once per set of rows (the text
encoder's frozen layers, a frozen speech encoder's per-layer statistics, a frozen visual
encoder's embedding), so epochs run only what trains."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from services.model.core.network import MoodreelModel
from services.model.training.config import TrainConfig
from services.model.training.data.examples import ExampleSet
from shared.contract.labels import MODALITIES
from shared.logging import get_logger

log = get_logger(__name__)


def _text_cache_key(model: MoodreelModel, tensors: dict) -> str:
    """Names the frozen text layers' output for these tokens: the encoder's frozen weights (all of
    them, so a different base or a different copy never hits), its frozen depth and the token ids."""
    digest = hashlib.sha256(f"{model.config.text_encoder}|{model.text.frozen_depth}".encode())
    for name, parameter in model.text.backbone.named_parameters():
        if not parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().to("cpu", torch.float32).numpy().tobytes())
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        digest.update(tensors[name].numpy().tobytes())
    return digest.hexdigest()[:24]


@torch.no_grad()
def cache_text_hidden(
    model: MoodreelModel,
    examples: ExampleSet,
    batch_size: int,
    device,
    progress: bool,
    cache_dir: Path | None = None,
):
    """Add ``text_hidden``: the frozen text layers' output, computed once (stored float16).

    With ``cache_dir`` the states are also kept on disk, so later runs on the same tokens (other
    seeds, other heads) skip the encoder's frozen layers entirely.
    """
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    tensors = examples.tensors
    if "attention_mask" not in tensors:
        return  # a source without text (FER2013's faces)
    length = int(tensors["attention_mask"].sum(1).max())
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{_text_cache_key(model, tensors)}.safetensors"
    if path is not None and path.is_file():
        hidden = load_file(path)["text_hidden"]
        log.info("text_hidden_cache_hit", path=str(path), rows=len(examples))
    else:
        hidden = torch.zeros(len(examples), length, model.text.hidden_size, dtype=torch.float16)
        order = torch.argsort(tensors["attention_mask"].sum(1))  # similar lengths batch together
        model.text.eval()
        for start in tqdm(range(0, len(order), batch_size), desc="cache text", disable=not progress):
            rows = order[start : start + batch_size]
            mask = tensors["attention_mask"][rows]
            cut = max(int(mask.sum(1).max()), 1)
            out = model.text.frozen_hidden(
                tensors["input_ids"][rows, :cut].to(device),
                mask[:, :cut].to(device),
                tensors["token_type_ids"][rows, :cut].to(device),
            )
            hidden[rows, :cut] = out.to("cpu", torch.float16)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".partial-{os.getpid()}")
            save_file({"text_hidden": hidden}, str(partial))
            os.replace(partial, path)  # a reader never sees half a cache file
    tensors["text_hidden"] = hidden
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        tensors[name] = tensors[name][:, :length]


TEXT_COLUMN = MODALITIES.index("text")


def uses_text_cache(model: MoodreelModel, config: TrainConfig) -> bool:
    """A text branch whose lower layers are frozen: their output can be computed once."""
    return (
        config.cache_text_hidden
        and "text" in model.config.trained_modalities
        and model.config.text_train_mode in ("frozen", "top_layers")
    )


def text_cache_dir(config: TrainConfig) -> Path:
    """Beside the tokenised MELD splits (``cache_dir`` is ``<data_dir>/cache/meld`` by default)."""
    if config.cache_dir is not None:
        return Path(config.cache_dir).parent / "text-hidden"
    from shared.settings import get_settings

    return get_settings().data_dir / "cache" / "text-hidden"


@torch.no_grad()
def cache_visual_embedding(model: MoodreelModel, examples: ExampleSet, batch_size: int, device) -> None:
    """Replace the frames by ``visual_embedding``: a frozen visual encoder's output (eval mode, as
    served), computed once, so epochs train only the heads and the fusion adapter."""
    tensors = examples.tensors
    if "frames" not in tensors:
        return
    rows_used = examples.modality_mask[:, MODALITIES.index("visual")].nonzero(as_tuple=True)[0]
    embedding = torch.zeros(len(examples), model.config.embed_dim)
    model.visual.eval()
    started = time.monotonic()
    for rows in rows_used.split(batch_size):
        embedding[rows] = model.visual(tensors["frames"][rows].to(device)).float().cpu()
    tensors["visual_embedding"] = embedding
    del tensors["frames"]
    log.info("visual_embedding_cached", rows=len(rows_used), seconds=round(time.monotonic() - started, 1))


def _audio_cache_key(model: MoodreelModel, log_mel: torch.Tensor, audio_mask: torch.Tensor) -> str:
    """Identifies a speech encoder's statistics of these log-mels: the encoder (name or inline
    config, window, and a fingerprint of its weights) and the log-mel bytes of the rows with audio,
    so the same clips inside a larger mixed set (MELD text rows + RAVDESS) hit the same cache."""
    config = model.config
    digest = hashlib.sha256(
        json.dumps(
            [config.audio_encoder, config.audio_encoder_config, config.audio_input_frames], sort_keys=True
        ).encode()
    )
    encoder = model.audio.backbone.encoder
    for tensor in (encoder.conv1.weight, encoder.embed_positions.weight, encoder.layer_norm.weight):
        digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
    digest.update(log_mel.numpy().tobytes())
    digest.update(audio_mask.numpy().tobytes())
    digest.update(torch.ones(len(log_mel), dtype=torch.bool).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def cache_audio_states(
    model: MoodreelModel, examples: ExampleSet, batch_size: int, device, progress: bool, cache_dir: Path
) -> None:
    """Replace the log-mels by ``audio_states``: a frozen speech encoder's per-layer statistics,
    computed once per set of clips and kept on disk, so training runs only the heads and a second
    run (or the final evaluation) reads them back."""
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    tensors = examples.tensors
    if "log_mel" not in tensors:
        return
    backbone = model.audio.backbone
    rows_used = examples.modality_mask[:, MODALITIES.index("audio")].nonzero(as_tuple=True)[0]
    log_mel, audio_mask = tensors["log_mel"][rows_used], tensors["audio_mask"][rows_used]
    path = Path(cache_dir) / f"{_audio_cache_key(model, log_mel, audio_mask)}.safetensors"
    if path.is_file():
        used_states = load_file(path)["audio_states"]
    else:
        used_states = torch.zeros(
            len(rows_used), backbone.hidden_count, 2 * backbone.features, dtype=torch.float16
        )
        model.audio.eval()
        started = time.monotonic()
        for start in tqdm(range(0, len(rows_used), batch_size), desc="cache audio", disable=not progress):
            part = slice(start, start + batch_size)
            out = model.audio.layer_statistics(log_mel[part].to(device), audio_mask[part].to(device))
            used_states[part] = out.to("cpu", torch.float16)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({"audio_states": used_states}, partial)
        partial.replace(path)
        log.info(
            "audio_states_cached",
            clips=len(rows_used),
            seconds=round(time.monotonic() - started, 1),
            path=str(path),
        )
    states = torch.zeros(len(examples), backbone.hidden_count, 2 * backbone.features, dtype=torch.float16)
    states[rows_used] = used_states
    tensors["audio_states"] = states
    del tensors["log_mel"], tensors["audio_mask"]


def audio_cache_dir() -> Path:
    from shared.settings import get_settings

    # Beside the speech corpora's log-mel cache (data/speech.py), whatever cache_dir says.
    return get_settings().data_dir / "cache" / "audio-states"
