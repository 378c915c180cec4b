"""Users' corrections (``moodreel dataset export``) as a training source.

A corrections directory is one export (MELD's layout with a ``manifest.json``) or a folder of
exports, one per subdirectory. Each export is read with the MELD loader; an utterance corrected
again in a later export (same Dialogue_ID and Utterance_ID, exports ordered by the end of their
window) keeps only its latest labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from services.model.training.data.examples import ExampleSet
from services.model.training.data.meld import (
    MeldUtterance,
    clip_examples,
    clips_available,
    load_text_examples,
    read_split,
)
from shared.contract.features.spec import FeatureSpec

MANIFEST = "manifest.json"


def export_dirs(directory: Path) -> list[Path]:
    """The exports under ``directory``, oldest window first."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return [directory]
    found = [path.parent for path in directory.glob(f"*/{MANIFEST}")]
    return sorted(found, key=lambda path: (json.loads((path / MANIFEST).read_text())["until"], path.name))


def _ordered(utterances: list[MeldUtterance]) -> list[MeldUtterance]:
    """Rows in the order ``text_examples`` / ``clip_examples`` emit them (dialogues in id order)."""
    grouped: dict[int, list[MeldUtterance]] = {}
    for utterance in utterances:
        grouped.setdefault(utterance.dialogue_id, []).append(utterance)
    return [u for _, rows in sorted(grouped.items()) for u in sorted(rows, key=lambda u: u.utterance_id)]


def corrections_examples(
    directory: Path, split: str, spec: FeatureSpec, cache_dir: Path | None, *, with_clips: bool
) -> ExampleSet | None:
    """Every export's rows of ``split``, later corrections superseding earlier ones; None when
    no export has a row in this split."""
    exports = export_dirs(directory)
    later_keys: set[tuple[int, int]] = set()
    parts: list[ExampleSet] = []
    for export in reversed(exports):  # newest first: its keys supersede older exports' rows
        rows = _ordered(read_split(export, split).utterances)
        keep = [index for index, row in enumerate(rows) if row.key not in later_keys]
        later_keys |= {row.key for row in rows}
        if not keep:
            continue
        digest = json.loads((export / MANIFEST).read_text())["sha256"]
        cache = Path(cache_dir) / "corrections" / digest[:16] if cache_dir else None
        if with_clips and clips_available(export) and cache is not None:
            examples, _ = clip_examples(export, split, spec, cache)
        else:
            examples = load_text_examples(export, split, spec, cache)
        parts.append(_subset(examples, torch.tensor(keep)))
    return ExampleSet.concat(list(reversed(parts))) if parts else None


def _subset(examples: ExampleSet, indices: torch.Tensor) -> ExampleSet:
    return ExampleSet(
        tensors={name: tensor[indices] for name, tensor in examples.tensors.items()},
        modality_mask=examples.modality_mask[indices],
        emotion=examples.emotion[indices],
        sentiment=examples.sentiment[indices],
        speech=examples.speech[indices] if examples.speech is not None else None,
    )
