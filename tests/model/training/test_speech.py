"""Acted-speech corpora: name parsing, readers on the real files, the actor split, the log-mel
cache, augmentations, mixed-source batches and a short training run on generated speech-like clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from services.model.core.checkpoint import load_checkpoint
from services.model.core.config import ModelConfig
from services.model.core.network import MoodreelModel
from services.model.testing import TINY_SPEC, tiny_model_config, tiny_speech_encoder_config
from services.model.training.config import TrainConfig
from services.model.training.data.examples import ExampleSet
from services.model.training.data.meld import load_text_examples
from services.model.training.data.speech import (
    RAVDESS_DEV_ACTORS,
    RAVDESS_EMOTIONS,
    RAVDESS_TEST_ACTORS,
    SpeechAugment,
    SpeechDataError,
    compute_log_mels,
    load_log_mels,
    parse_emodb_name,
    parse_ravdess_name,
    read_emodb,
    read_ravdess,
    speech_examples,
    split_ravdess,
)
from services.model.training.loop import train
from services.model.training.losses import Criterion
from services.model.training.optimizer import build_optimizer
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.settings import Settings, get_settings

REAL = get_settings().emotion_speech_dir
needs_ravdess = pytest.mark.skipif(
    not (REAL / "ravdess").is_dir(), reason=f"RAVDESS not present at {REAL / 'ravdess'} (EMOTION_SPEECH_DIR)"
)
needs_emodb = pytest.mark.skipif(
    not (REAL / "emodb").is_dir(), reason=f"EmoDB not present at {REAL / 'emodb'} (EMOTION_SPEECH_DIR)"
)


def test_ravdess_names_give_labels_actor_and_statement():
    clip = parse_ravdess_name(Path("Actor_12/03-01-05-02-02-01-12.flac"))
    assert (clip.label, clip.emotion, clip.sentiment) == ("angry", "anger", "negative")
    assert (clip.speaker, clip.male, clip.text) == (12, False, "Dogs are sitting by the door.")
    assert clip.label_index == RAVDESS_EMOTIONS.index("angry") == 4
    calm = parse_ravdess_name(Path("03-01-02-01-01-01-07.flac"))
    assert (calm.emotion, calm.sentiment, calm.male) == ("neutral", "neutral", True)
    surprised = parse_ravdess_name(Path("03-01-08-01-01-01-07.flac"))
    assert (surprised.emotion, surprised.sentiment) == ("surprise", None)  # MELD splits surprise
    for bad in ("03-01-09-01-01-01-07.flac", "03-02-01-01-01-01-07.flac", "03-01-01.flac", "x.flac"):
        with pytest.raises(SpeechDataError):
            parse_ravdess_name(Path(bad))


def test_emodb_names_give_labels_and_boredom_has_no_meld_class():
    clip = parse_emodb_name(Path("03a01Fa.flac"))
    assert (clip.speaker, clip.label, clip.emotion, clip.sentiment, clip.male) == (
        3,
        "happiness",
        "joy",
        "positive",
        True,
    )
    boredom = parse_emodb_name(Path("08a02La.flac"))
    assert (boredom.emotion, boredom.sentiment, boredom.male) == (None, None, False)
    with pytest.raises(SpeechDataError):
        parse_emodb_name(Path("03a01Xa.flac"))


def test_split_holds_whole_actors_out():
    clips = [
        parse_ravdess_name(Path(f"03-01-{e:02d}-01-0{s}-01-{a:02d}.flac"))
        for a in range(1, 25)
        for e in range(1, 9)
        for s in (1, 2)
    ]
    splits = split_ravdess(clips)
    actors = {name: {c.speaker for c in part} for name, part in splits.items()}
    assert actors["test"] == set(RAVDESS_TEST_ACTORS) == {21, 22, 23, 24}
    assert actors["dev"] == set(RAVDESS_DEV_ACTORS)
    assert actors["train"] == set(range(1, 25)) - RAVDESS_TEST_ACTORS - RAVDESS_DEV_ACTORS
    assert not (
        actors["train"] & actors["dev"] or actors["train"] & actors["test"] or actors["dev"] & actors["test"]
    )
    assert sum(len(part) for part in splits.values()) == len(clips)


@needs_ravdess
def test_ravdess_reader_on_the_real_corpus():
    clips = read_ravdess()
    assert len(clips) == 1440
    per_actor = {a: sum(c.speaker == a for c in clips) for a in range(1, 25)}
    assert set(per_actor.values()) == {60}
    assert {c.label for c in clips} == set(RAVDESS_EMOTIONS)
    splits = split_ravdess(clips)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [960, 240, 240]
    spec = TINY_SPEC.model_copy(update={"max_audio_frames": 600})  # 6 s: longer than any clip
    features = compute_log_mels(clips[:3], spec)
    assert features.log_mel.shape == (3, spec.n_mels, 600) and features.log_mel.dtype == np.float16
    lengths = features.audio_mask.sum(1)  # clips last 2.94-5.27 s: 295-528 frames, then padding
    assert ((lengths >= 290) & (lengths <= 530)).all(), lengths
    assert np.isfinite(features.log_mel.astype(np.float32)).all() and features.log_mel.std() > 0
    padding = ~features.audio_mask[:, None, :].repeat(spec.n_mels, 1)
    assert (features.log_mel[padding] == 0).all()


@needs_emodb
def test_emodb_reader_on_the_real_corpus():
    clips = read_emodb()
    assert len(clips) == 535
    assert sum(c.label == "boredom" for c in clips) == 81
    assert sum(c.emotion == "anger" for c in clips) == 127
    features = compute_log_mels(clips[:2], TINY_SPEC.model_copy(update={"max_audio_frames": 300}))
    assert (features.audio_mask.sum(1) == 201).all()  # every clip is exactly 2.0 s


def test_augmentation_keeps_shapes_padding_and_finite_values():
    generator = torch.Generator().manual_seed(0)
    mel = torch.rand(4, 16, 100, generator=generator).half() + 0.5
    mask = torch.zeros(4, 100, dtype=torch.bool)
    mask[:, :60] = True
    mel = mel * mask[:, None, :]
    augmented, new_mask = SpeechAugment(max_shift_frames=10)(mel, mask, generator)
    assert augmented.shape == mel.shape and augmented.dtype == mel.dtype
    assert torch.isfinite(augmented.float()).all()
    assert 50 <= int(new_mask[0].sum()) <= 60  # shifted, never grown
    assert (augmented.float() * ~new_mask[:, None, :]).abs().max() == 0  # padding stays empty
    assert not torch.equal(augmented, mel)
    silent, silent_mask = SpeechAugment()(torch.zeros(2, 16, 100), torch.zeros(2, 100, dtype=torch.bool))
    assert silent.abs().max() == 0 and not silent_mask.any()


# --- generated corpus: sine "voices" whose pitch is the emotion ------------------------------------

TONES = {"angry": 900, "sad": 200}


@pytest.fixture(scope="module")
def generated_speech(tmp_path_factory) -> Settings:
    """A RAVDESS-shaped folder: actors 1, 2 (train), 17 (dev), 21 (test); two emotions told apart
    by pitch; 16 kHz mono FLAC like the real corpus."""
    root = tmp_path_factory.mktemp("emotion-speech")
    for actor in (1, 2, 17, 21):
        folder = root / "ravdess" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for label, tone in TONES.items():
            code = RAVDESS_EMOTIONS.index(label) + 1
            for statement in (1, 2):
                name = f"03-01-{code:02d}-01-{statement:02d}-01-{actor:02d}.flac"
                pitch = tone * (1 + 0.05 * actor) + 40 * statement
                subprocess.run(
                    ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=f={pitch}:d=0.8:sample_rate=16000",
                     "-af", "volume=0.5", "-ac", "1", str(folder / name)],
                    check=True,
                )  # fmt: skip
    return Settings(emotion_speech_dir=root, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture
def speech_settings(generated_speech, monkeypatch):
    monkeypatch.setenv("MOODREEL_EMOTION_SPEECH_DIR", str(generated_speech.emotion_speech_dir))
    monkeypatch.setenv("MOODREEL_DATA_DIR", str(generated_speech.data_dir))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_log_mels_are_cached_once(speech_settings):
    clips = read_ravdess(speech_settings)
    first = load_log_mels(clips, TINY_SPEC, speech_settings)
    cached = list((speech_settings.data_dir / "cache" / "speech").glob("ravdess-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = load_log_mels(clips, TINY_SPEC, speech_settings)
    assert cached[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.log_mel, again.log_mel)


def text_rows(count: int) -> ExampleSet:
    ids = torch.randint(1000, 2000, (count, TINY_SPEC.max_tokens))
    mask = torch.zeros(count, len(MODALITIES), dtype=torch.bool)
    mask[:, 0] = True
    return ExampleSet(
        tensors={
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        },
        modality_mask=mask,
        emotion=torch.full((count,), EMOTIONS.index("joy")),
        sentiment=torch.full((count,), SENTIMENTS.index("positive")),
    )


def test_mixed_source_batch_keeps_masks_and_labels(speech_settings):
    speech = speech_examples("ravdess", "train", TINY_SPEC)
    assert len(speech) == 8 and speech.modality_mask.tolist() == [[False, True, False]] * 8
    mixed = ExampleSet.concat([text_rows(3), speech])
    batch = mixed.batch(torch.tensor([0, 3, 1, 4]))
    assert batch.inputs.modality_mask.tolist() == [
        [True, False, False],
        [False, True, False],
        [True, False, False],
        [False, True, False],
    ]
    assert batch.speech[[0, 2]].tolist() == [-1, -1] and (batch.speech[[1, 3]] >= 0).all()
    assert batch.inputs.audio_mask[[0, 2]].sum() == 0  # zero-filled, and masked, for text rows
    model = MoodreelModel(tiny_model_config(TINY_SPEC, speech_labels=RAVDESS_EMOTIONS, modality_dropout=0.0))
    model.eval()
    output = model(batch.inputs)
    assert output.modalities_used.tolist() == batch.inputs.modality_mask.tolist()
    assert output.speech_logits.shape == (4, 8)
    assert output.speech_logits[[0, 2]].abs().max() == 0  # no audio: no speech scores
    with_text = speech_examples("ravdess", "train", TINY_SPEC, with_text=True)
    assert with_text.modality_mask[:, :2].all() and "input_ids" in with_text.tensors


# Model changes and how far the loss must fall in 25 full-batch steps.
AUDIO_BACKBONES = {
    "cnn": ({"audio_frequency_bands": 4}, 0.5),  # 4 bands keep where in the spectrum the tone sits
    "speech-transformer": (
        {"audio_backbone": "transformers", "audio_encoder_config": tiny_speech_encoder_config(TINY_SPEC)},
        0.6,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(AUDIO_BACKBONES))
def test_loss_falls_on_a_handful_of_speech_clips(speech_settings, backbone):
    examples = speech_examples("ravdess", "train", TINY_SPEC)
    torch.manual_seed(0)
    model = MoodreelModel(
        tiny_model_config(
            TINY_SPEC,
            speech_labels=RAVDESS_EMOTIONS,
            modality_dropout=0.0,
            dropout=0.0,
            **AUDIO_BACKBONES[backbone][0],
        )
    )
    config = TrainConfig(lr_audio=3e-3, lr_fusion=3e-3, label_smoothing=0.0)
    optimizer = build_optimizer(model, config)
    criterion = Criterion(config, examples, torch.device("cpu"))
    batch = examples.batch(torch.arange(len(examples)))
    losses = []
    model.train()
    for _ in range(25):
        terms = criterion(model(batch.inputs), batch.emotion, batch.sentiment, batch.speech)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert "speech_head" in terms.parts
    assert losses[-1] < AUDIO_BACKBONES[backbone][1] * losses[0]


def audio_run(directory: Path, model: ModelConfig | None = None, **changes) -> Path:
    """A short audio-only RAVDESS run: the first half of the default's recipe, in miniature."""
    settings = {"epochs": 1, "evaluate_test": False} | changes
    return train(
        TrainConfig(
            output_dir=directory,
            sources=("ravdess",),
            modalities=("audio",),
            batch_size=4,
            progress=False,
            model=model or tiny_model_config(TINY_SPEC),
            spec=TINY_SPEC,
            **settings,
        )
    )


def combined_run(directory: Path, text: Path, audio: Path, meld_dir: Path, **changes) -> Path:
    """The second half: a text checkpoint's text branch and fusion beside an audio run's branch,
    trained on MELD text rows + RAVDESS audio rows."""
    return train(
        TrainConfig(
            output_dir=directory,
            sources=("meld", "ravdess"),
            modalities=("text", "audio"),
            init_from=(f"text+fusion={text}", f"audio={audio}"),
            batch_size=4,
            progress=False,
            meld_dir=meld_dir,
            cache_dir=directory.parent / "cache",
            **changes,
        )
    )


def test_train_on_speech_source_reports_held_out_actors(speech_settings, tmp_path):
    checkpoint = audio_run(tmp_path / "run", epochs=2, evaluate_test=True)
    loaded = load_checkpoint(checkpoint)
    assert loaded.config.trained_modalities == ("audio",)
    assert loaded.config.speech_labels == RAVDESS_EMOTIONS
    metrics = loaded.meta["metrics"]
    assert set(metrics) == {"dev", "test"}  # ravdess is the first source; no EmoDB folder here
    scores = metrics["test"]["speech"]
    assert scores["rows"] == 4 and scores["speech_8"]["count"] == 4
    assert 0.0 <= scores["speech_8"]["accuracy"] <= 1.0


@pytest.fixture
def branch_checkpoints(speech_settings, tmp_path) -> tuple[Path, Path]:
    """A tiny text checkpoint and a short audio run: the two inputs of a combined run."""
    from services.model.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path / "text", spec=TINY_SPEC), audio_run(tmp_path / "audio")


@pytest.mark.slow
def test_combined_training_keeps_frozen_branches_and_learns_fusion(branch_checkpoints, mini_meld, tmp_path):
    """The other way to combine branches: a text checkpoint's text branch + fusion and an audio
    run's audio branch, both encoders frozen, the whole fusion retrained on MELD text rows +
    RAVDESS audio rows (the first default's recipe; it may move text-only results)."""
    text_checkpoint, audio_checkpoint = branch_checkpoints
    combined = combined_run(
        tmp_path / "combined",
        text_checkpoint,
        audio_checkpoint,
        mini_meld,
        freeze=("text", "audio"),
        epochs=2,
        lr_fusion=1e-2,
    )
    result = load_checkpoint(combined)
    assert result.config.trained_modalities == ("text", "audio")
    assert result.config.speech_labels == RAVDESS_EMOTIONS
    state = result.model.state_dict()
    for source, prefix in ((text_checkpoint, "text."), (audio_checkpoint, "audio.")):
        before = load_checkpoint(source).model.state_dict()
        for name in (k for k in before if k.startswith(prefix)):
            torch.testing.assert_close(state[name].float(), before[name].float(), msg=name)
    fusion_before = load_checkpoint(text_checkpoint).model.state_dict()["fusion.0.weight"]
    assert not torch.equal(state["fusion.0.weight"].float(), fusion_before.float())
    metrics = result.meta["metrics"]
    assert {"dev", "test", "ravdess_dev", "ravdess_test"} <= set(metrics)
    assert metrics["test"]["emotion"]["count"] == 4  # MELD rows only, never mixed with speech
    assert metrics["ravdess_test"]["speech"]["speech_8"]["count"] == 4


def test_audio_only_checkpoint_with_a_pretrained_text_encoder_round_trips(tmp_path):
    """An audio-only run freezes the untrained text branch; its pretrained backbone is then base
    weights both when saving and when loading (they once disagreed on the top layers)."""
    from services.model.core.checkpoint import save_checkpoint

    config = ModelConfig(
        trained_modalities=("audio",),
        audio_channels=(8, 16),
        audio_frequency_bands=2,
        embed_dim=16,
        fusion_hidden=16,
        speech_labels=RAVDESS_EMOTIONS,
    )
    model = MoodreelModel(config)
    model.text.requires_grad_(False)  # what training does to an untrained branch
    save_checkpoint(tmp_path / "audio", model, TINY_SPEC, {"name": "audio-only"})
    loaded = load_checkpoint(tmp_path / "audio")
    torch.testing.assert_close(loaded.model.speech_head.weight, model.speech_head.weight)
    torch.testing.assert_close(loaded.model.audio.project[1].weight, model.audio.project[1].weight)


def test_frequency_warp_and_tempo_move_a_band_and_stretch_the_speech():
    """A tone in one mel band of 50 speech frames: the warp moves the band (formants of another
    vocal tract), the tempo changes how many frames the speech lasts; padding stays empty."""
    generator = torch.Generator().manual_seed(1)
    mel = torch.zeros(8, 32, 120)
    mask = torch.zeros(8, 120, dtype=torch.bool)
    mask[:, 10:60] = True
    mel[:, 12, :] = 1.0
    mel = mel * mask[:, None, :]
    only_warps = SpeechAugment(
        gain_db=0.0,
        noise_probability=0.0,
        max_shift_frames=0,
        freq_masks=0,
        time_masks=0,
        crop_frames=0,
        frequency_warp=0.25,
        tempo=0.25,
    )
    warped, warped_mask = only_warps(mel, mask, generator)
    lengths = warped_mask.sum(1)
    assert lengths.min() < 50 < lengths.max()
    assert all(39 <= int(n) <= 65 for n in lengths)  # within exp(+-0.25) of 50
    bands = warped[:, :, 30].argmax(1)
    assert len(set(bands.tolist())) > 1 and all(9 <= int(b) <= 16 for b in bands)
    assert (warped * ~warped_mask[:, None, :]).abs().max() == 0
    unchanged, same_mask = SpeechAugment(
        gain_db=0.0, noise_probability=0.0, max_shift_frames=0, freq_masks=0, time_masks=0, crop_frames=0
    )(mel, mask, generator)
    assert torch.equal(same_mask, mask) and torch.allclose(unchanged, mel)


@pytest.mark.slow
def test_fusion_adapter_recipe_keeps_text_only_outputs_exactly(branch_checkpoints, mini_meld, tmp_path):
    """The default's recipe in miniature: the text checkpoint's text branch and fusion frozen, the
    audio run's encoder frozen, only the audio branch's heads and its fusion adapter learn. A
    text-only input then gets bit for bit the text checkpoint's output; an audio input reaches the
    fused heads through the adapter."""
    text_checkpoint, audio_checkpoint = branch_checkpoints
    combined = combined_run(
        tmp_path / "combined",
        text_checkpoint,
        audio_checkpoint,
        mini_meld,
        freeze=("text", "fusion", "audio_encoder"),
        model=ModelConfig(fusion_adapters=True),
        epochs=2,
        lr_fusion=1e-2,
    )
    result = load_checkpoint(combined).model
    state = result.state_dict()
    audio_state = load_checkpoint(audio_checkpoint).model.state_dict()
    for name in (k for k in audio_state if k.startswith(("audio.", "speech_head."))):
        torch.testing.assert_close(state[name].float(), audio_state[name].float(), msg=name)
    assert state["fusion_adapters.1.weight"].abs().sum() > 0  # the audio adapter learned
    assert state["fusion_adapters.0.weight"].abs().sum() == 0  # the text one stayed frozen at zero

    text_model = load_checkpoint(text_checkpoint).model
    meld = load_text_examples(mini_meld, "test", TINY_SPEC, tmp_path / "cache")
    batch = meld.batch(torch.arange(len(meld)))
    with torch.no_grad():
        before, after = text_model(batch.inputs), result(batch.inputs)
    assert torch.equal(before.emotion_logits, after.emotion_logits)
    assert torch.equal(before.sentiment_logits, after.sentiment_logits)

    speech = speech_examples("ravdess", "test", TINY_SPEC)
    speech_batch = speech.batch(torch.arange(len(speech)))
    adapterless = load_checkpoint(combined).model
    with torch.no_grad():
        adapterless.fusion_adapters[MODALITIES.index("audio")].weight.zero_()
        with_adapter = result(speech_batch.inputs).emotion_logits
        without_adapter = adapterless(speech_batch.inputs).emotion_logits
    assert not torch.allclose(with_adapter, without_adapter)


@pytest.mark.slow
def test_a_fine_tuned_speech_encoder_travels_frozen_into_the_combined_run(
    speech_settings, mini_meld, tmp_path
):
    """Run 1 fine-tunes a pretrained (local) speech encoder; run 2 takes its branch beside a text
    checkpoint with the encoder frozen. The branch's architecture comes from run 1's checkpoint,
    the frozen fine-tuned weights are stored (not mistaken for the base) and the result loads."""
    from services.model.testing import build_tiny_checkpoint, save_tiny_pretrained

    save_tiny_pretrained(tiny_speech_encoder_config(TINY_SPEC), tmp_path / "speech-encoder", seed=3)
    audio_checkpoint = audio_run(
        tmp_path / "audio",
        tiny_model_config(
            TINY_SPEC, audio_backbone="transformers", audio_encoder=str(tmp_path / "speech-encoder")
        ),
    )
    text_checkpoint = build_tiny_checkpoint(tmp_path / "text", spec=TINY_SPEC)
    combined = combined_run(
        tmp_path / "combined",
        text_checkpoint,
        audio_checkpoint,
        mini_meld,
        freeze=("text", "fusion", "audio_encoder"),
        model=ModelConfig(fusion_adapters=True),  # only this differs from the defaults
        epochs=1,
    )
    result = load_checkpoint(combined)
    assert result.config.audio_backbone == "transformers" and result.config.fusion_adapters
    assert result.config.text_encoder_config == load_checkpoint(text_checkpoint).config.text_encoder_config
    before = load_checkpoint(audio_checkpoint).model.state_dict()
    after = result.model.state_dict()
    encoder_names = [k for k in before if k.startswith("audio.backbone.")]
    assert encoder_names
    for name in encoder_names:
        torch.testing.assert_close(after[name].float(), before[name].float(), msg=name)


def test_a_frozen_part_no_checkpoint_supplies_is_refused(speech_settings, tmp_path):
    """Freezing the audio encoder of a checkpoint whose audio CNN has another shape would keep random
    weights: refused instead."""
    audio_checkpoint = audio_run(tmp_path / "audio")
    with pytest.raises(ValueError, match="frozen weights not supplied"):
        audio_run(
            tmp_path / "again",
            tiny_model_config(TINY_SPEC, audio_channels=(8, 16, 32)),
            init_from=(str(audio_checkpoint),),
            freeze=("audio_encoder",),
        )


@pytest.mark.slow
def test_whisper_branch_recipe_caches_states_once_and_keeps_text_outputs(
    speech_settings, mini_meld, tmp_path, monkeypatch
):
    """The default's recipe with the speech branch of `make models`' folder in miniature: a frozen
    Whisper-shaped encoder (its own mel bins, not the text checkpoint's), per-layer statistics
    cached, nothing of the encoder stored, text-only outputs bit for bit the text checkpoint's."""
    from safetensors.torch import load_file

    from services.model.testing import build_tiny_checkpoint, save_tiny_pretrained

    audio_spec = TINY_SPEC.model_copy(update={"n_mels": 16})
    encoder = tiny_speech_encoder_config(audio_spec) | {"max_source_positions": 96, "encoder_layers": 2}
    save_tiny_pretrained(encoder, tmp_path / "models" / "tiny-whisper", seed=4)
    monkeypatch.setenv("MOODREEL_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    branch = tiny_model_config(
        audio_spec,
        audio_backbone="transformers",
        audio_encoder="models:tiny-whisper",
        audio_train_backbone=False,
        audio_input_frames=audio_spec.max_audio_frames,
        audio_pooling="layer_stats",
    )
    audio_checkpoint = train(
        TrainConfig(
            output_dir=tmp_path / "audio",
            sources=("ravdess",),
            modalities=("audio",),
            batch_size=4,
            epochs=2,
            progress=False,
            model=branch,
            spec=audio_spec,
            lr_audio=1e-2,
        )
    )
    states = sorted((speech_settings.data_dir / "cache" / "audio-states").glob("*.safetensors"))
    assert len(states) == 3  # train, dev, and test in the final evaluation
    stored = set(load_file(audio_checkpoint / "model.safetensors"))
    assert not any(name.startswith("audio.backbone.") for name in stored) and "audio.layer_logits" in stored

    text_checkpoint = build_tiny_checkpoint(tmp_path / "text", spec=TINY_SPEC)
    combined = combined_run(
        tmp_path / "combined",
        text_checkpoint,
        audio_checkpoint,
        mini_meld,
        freeze=("text", "fusion", "audio_encoder"),
        model=ModelConfig(fusion_adapters=True),
        epochs=1,
    )
    # mini MELD has clips of its own: their rows join RAVDESS's in new cache entries; the audio
    # run's stay as they were (reuse inside a mixed set: tests/model/training/test_speech_branch.py).
    assert set(states) <= set((speech_settings.data_dir / "cache" / "audio-states").glob("*.safetensors"))
    result = load_checkpoint(combined)
    audio_state = load_checkpoint(audio_checkpoint).model.state_dict()
    assert audio_state["audio.states_mean"].abs().sum() > 0  # fitted on the training rows
    assert torch.equal(audio_state["audio.states_std"], result.model.state_dict()["audio.states_std"])
    assert result.spec.n_mels == 16 and result.spec.max_tokens == TINY_SPEC.max_tokens
    assert result.config.audio_encoder == "models:tiny-whisper"
    assert result.model.state_dict()["fusion_adapters.1.weight"].abs().sum() > 0
    meld = load_text_examples(mini_meld, "test", TINY_SPEC, tmp_path / "text-cache")
    batch = meld.batch(torch.arange(len(meld)))
    with torch.no_grad():
        before = load_checkpoint(text_checkpoint).model(batch.inputs)
        after = result.model(batch.inputs)
    assert torch.equal(before.emotion_logits, after.emotion_logits)
    assert torch.equal(before.sentiment_logits, after.sentiment_logits)
    get_settings.cache_clear()
