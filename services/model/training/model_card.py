"""The model card: a markdown page generated from a checkpoint's meta and measured metrics."""

from __future__ import annotations

from services.model.core.config import ModelConfig
from services.model.training.speech_eval import speech_card_lines
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import MODALITIES


def _metrics_table(metrics_by_split: dict[str, dict]) -> list[str]:
    lines = [
        "| split | head | n | accuracy | weighted F1 | macro F1 | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, report in metrics_by_split.items():
        for head in ("emotion", "sentiment"):
            if head in report:
                r = report[head]
                lines.append(
                    f"| {split} | {head} | {r['count']} | {r['accuracy']:.3f} | {r['weighted_f1']:.3f} | "
                    f"{r['macro_f1']:.3f} | {r['ece']:.3f} |"
                )
    return lines


def _per_class_table(report: dict, head: str) -> list[str]:
    lines = [f"| {head} | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, scores in report[head]["per_class"].items():
        lines.append(
            f"| {label} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1']:.3f} | "
            f"{scores['support']} |"
        )
    return lines


def render_model_card(
    meta: dict, config: ModelConfig, spec: FeatureSpec, metrics_by_split: dict[str, dict] | None = None
) -> str:
    metrics_by_split = metrics_by_split or meta.get("metrics") or {}
    trained = list(meta.get("trained_modalities") or config.trained_modalities)
    untrained = [m for m in MODALITIES if m not in trained]
    training = meta.get("training", {})
    text_source = config.text_encoder if config.text_is_pretrained else "inline config (random init)"
    lines = [
        f"# Model card: {meta.get('name', 'moodreel')} ({meta.get('version', '?')})",
        "",
        "Predicts, per utterance of a video, one of MELD's seven emotions (anger, disgust, fear, joy, "
        "neutral, sadness, surprise) and one of three sentiments (negative, neutral, positive), with "
        "probabilities and the modalities that were used.",
        "",
        "**What it reads:** the model reads *expressed* emotion — the words, voice and faces of "
        "actors in a TV series — not anyone's inner state. A label is a guess about how an utterance "
        "comes across, not about how a person feels. Do not use it to make decisions about people "
        "(hiring, policing, health, credit, education).",
        "",
        "## Modalities",
        "",
        f"- trained: {', '.join(trained) or 'none'}",
        "- untrained (treated as absent at inference, never reported as used): "
        + (", ".join(untrained) or "none"),
        "",
        "## Architecture",
        "",
        f"- text: `{text_source}`, training mode `{config.text_train_mode}`"
        + (f" (top {config.text_train_layers} layers)" if config.text_train_mode == "top_layers" else "")
        + ", mean-pooled over the utterance's tokens; dialogue context: "
        + (
            f"{spec.context_turns} turn(s) {'either side' if spec.context_next else 'before it'}"
            " as a second segment"
            if spec.context_turns
            else "none"
        )
        + f", {spec.max_tokens} tokens at most",
        (
            f"- audio: speech encoder `{config.audio_encoder or 'inline config'}` over {spec.n_mels}-bin "
            f"log-mel at {spec.sample_rate} Hz (masked pooling)"
            if config.audio_backbone == "transformers"
            else f"- audio: CNN over {spec.n_mels}-bin log-mel at {spec.sample_rate} Hz (masked pooling)"
        ),
        (
            "- visual: none read (the feature spec asks for 0 frames, so no video is decoded)"
            if not spec.frames_per_utterance
            else f"- visual: expression CNN (`face_cnn`, stages of {config.visual_convs_per_stage} 3x3 "
            f"convolutions with {'-'.join(map(str, config.visual_channels))} channels) over the face "
            f"followed in {spec.frames_per_utterance} sampled frames ({spec.face_detector} detector; "
            f"{spec.frame_size}x{spec.frame_size} crops read as luma, standardised per face"
            + (", averaged with their mirror image" if config.visual_flip_average else "")
            + "), mean+max over time; no face: the visual modality is masked"
            if config.visual_backbone == "face_cnn"
            else f"- visual: {config.visual_backbone} backbone per frame ({spec.frames_per_utterance} "
            f"frames of {spec.frame_size}x{spec.frame_size} RGB, ImageNet normalisation), mean+max over time"
        ),
        f"- late fusion: concatenated {config.embed_dim}-d modality embeddings (learned 'absent' "
        f"embedding for a missing modality) -> 2 dense layers of {config.fusion_hidden} -> emotion "
        "and sentiment heads; each modality also has its own heads"
        + (
            "; per-modality fusion adapters add what a present modality contributes to a frozen "
            "fusion, so an input without it gets exactly the fusion's earlier output"
            if config.fusion_adapters
            else ""
        ),
        f"- feature spec hash: `{spec.hash}`",
        "",
        "## Data",
        "",
        "MELD (Poria et al., 2019; declare-lab/MELD, GPL-3.0): 13,708 utterances from the TV series "
        "*Friends* — train 9,989, dev 1,109, test 2,610. English only, scripted dialogue, US actors, "
        "studio audio. Labels are single annotations per utterance by crowd workers. The checkpoint was "
        "selected on dev emotion weighted F1; test was scored once, after selection.",
        f"Data hash: `{meta.get('data_hash')}`, git: `{meta.get('git_sha')}`.",
        "",
        "## Measured results",
        "",
        *_metrics_table(metrics_by_split),
        "",
    ]
    for split in ("test", "dev"):
        if split in metrics_by_split:
            lines += [f"Per class on {split}:", "", *_per_class_table(metrics_by_split[split], "emotion"), ""]
            break
    lines += speech_card_lines(metrics_by_split)
    lines += [
        "For orientation (published MELD test emotion weighted F1): always-neutral 0.313, text-CNN "
        "0.550, single-utterance RoBERTa-base 0.626, EmoBERTa (context) 0.656.",
        "",
        "## Limits",
        "",
        "- Trained on one sitcom: expect lower scores on other genres, accents, languages and on "
        "spontaneous speech; sarcasm and humour are often misread.",
        "- Minority classes (fear, disgust) are rare in MELD (about 2-3 % each) and scored poorly.",
        "- Confidence is not certainty: see the expected calibration error (ECE) above.",
        "- An utterance without a transcript gets no text evidence; with an untrained audio/visual "
        "branch it gets the prior of the fusion layers, and `modalities_used` says so.",
    ]
    if training:
        lines += [
            "",
            "## Training",
            "",
            f"Best epoch {training.get('best_epoch')} of {training.get('epochs_run')}, "
            f"{training.get('seconds')} s on `{training.get('device')}`"
            + (f" ({training['machine']})." if training.get("machine") else "."),
        ]
    initial = meta.get("initial_training") or {}
    if initial:
        lines += ["", "Composed from (their own training):", ""]
        for parts, run in initial.items():
            lines.append(
                f"- {parts}: `{run.get('name')}` ({run.get('version')}), best epoch {run.get('best_epoch')} "
                f"of {run.get('epochs_run')}, {run.get('seconds')} s on `{run.get('device')}`"
                + (f" ({run['machine']})" if run.get("machine") else "")
                + (
                    f"; dev emotion accuracy {run['dev']['emotion_accuracy']:.3f}"
                    if (run.get("dev") or {}).get("emotion_accuracy") is not None
                    else ""
                )
            )
    carried = meta.get("metrics_carried")
    if carried:
        lines += [
            "",
            f"The figures of {', '.join(carried['splits'])} are `{carried['from']}`'s: this checkpoint "
            "keeps its branches and fusion frozen, and an input without the new modality gets exactly "
            "its outputs (bench/default_parity.py).",
        ]
    return "\n".join(lines) + "\n"
