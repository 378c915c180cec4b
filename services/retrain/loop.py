"""``moodreel retrain``: the retraining loop on one machine.

export → train → compare → publish, with the AWS loop's debounce and guard
(``services.retrain.guard``). Everything lives under the publish directory::

    corrections/<until>/   one export per run (MELD's layout; the trainer reads them all)
    versions/<name>/       published checkpoints
    current -> versions/<name>   what the model server serves (MOODREEL_MODEL_DIR=<dir>/current,
                                 MOODREEL_MODEL_WATCH_SECONDS > 0 reloads it when it changes)
    decisions/<name>.json  every decision, deployed or not
    state.json             the last export's end, new utterances since the last training

The deployed model (the baseline) is ``current``'s target, or ``MOODREEL_MODEL_DIR`` before the
first publication; the trainer scores it on the same dev sets (``compare_with``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.retrain.dataset import export_directory
from services.retrain.guard import Decision, decide, start_check
from shared.db.session import session_scope
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)
CHECKPOINT_DOCUMENT = "checkpoint.json"


@dataclass
class RetrainOutcome:
    started: bool
    reason: str
    new_items: int
    export: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def load_state(root: Path) -> dict[str, Any]:
    path = root / "state.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"last_until": None, "new_items": 0, "last_started_at": None}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def deployed_checkpoint(root: Path, settings: Settings) -> Path:
    current = root / "current"
    return current.resolve() if current.exists() else Path(settings.model_dir)


def publish(checkpoint: Path, root: Path, name: str) -> Path:
    """Copy the checkpoint to ``versions/<name>`` and point ``current`` at it in one rename."""
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    target = versions / name
    staging = versions / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging)
    os.replace(staging, target)
    link = root / f".current-{name}"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("versions") / name)
    os.replace(link, root / "current")  # atomic: readers see the old or the new target
    log.info("model_published", version=name, path=str(target))
    return target


def retrain(
    factory: sessionmaker[Session],
    settings: Settings,
    train_config,
    root: Path,
    *,
    now: datetime | None = None,
    force: bool = False,
) -> RetrainOutcome:
    """One pass of the loop; ``train_config`` is a ``TrainConfig`` (e.g. a preset's) that this
    run points at MELD plus every export, scoring the deployed model beside it."""
    from services.model.training.loop import train

    now = now or datetime.now(UTC)
    root = Path(root)
    state = load_state(root)
    since = datetime.fromisoformat(state["last_until"]) if state["last_until"] else None
    export_dir = root / "corrections" / _stamp(now)
    with session_scope(factory) as session:
        manifest = export_directory(session, settings, export_dir, since=since, until=now)
    state["last_until"] = now.isoformat()
    state["new_items"] += manifest["utterances"]
    if manifest["utterances"] == 0:
        shutil.rmtree(export_dir)  # nothing new: no empty export to read at every training
    last = datetime.fromisoformat(state["last_started_at"]) if state["last_started_at"] else None
    held = start_check(
        state["new_items"],
        last,
        now,
        min_new_items=1 if force else settings.retrain_min_new_items,
        min_interval_seconds=0 if force else settings.retrain_min_interval_seconds,
    )
    if held is not None:
        _write_json(root / "state.json", state)
        log.info("retrain_held", reason=held, new_items=state["new_items"])
        return RetrainOutcome(False, held, state["new_items"], manifest)

    new_items = state["new_items"]
    name = f"moodreel-retrain-{_stamp(now)}"
    baseline = deployed_checkpoint(root, settings)
    config = dataclasses.replace(
        train_config,
        sources=tuple(dict.fromkeys([*train_config.sources, "corrections"])),
        corrections_dir=root / "corrections",
        compare_with=baseline,
        output_dir=root / "runs" / name,
        checkpoint_name=train_config.checkpoint_name,
    )
    state["last_started_at"] = now.isoformat()
    _write_json(root / "state.json", state)
    log.info("retrain_started", name=name, new_items=state["new_items"], baseline=str(baseline))
    checkpoint = train(config)
    document = json.loads((checkpoint / CHECKPOINT_DOCUMENT).read_text())
    decision: Decision = decide(
        document["meta"],
        margin=settings.retrain_margin,
        min_slice_utterances=settings.retrain_min_slice_utterances,
    )
    decision.job = {"name": name, "checkpoint": str(checkpoint), "baseline": str(baseline)}
    if decision.deploy:
        decision.published = {"path": str(publish(checkpoint, root, name)), "current": str(root / "current")}
    record = decision.to_dict()
    _write_json(root / "decisions" / f"{name}.json", record)
    state["new_items"] = 0
    _write_json(root / "state.json", state)
    log.info("retrain_decision", name=name, deploy=decision.deploy, reason=decision.reason)
    return RetrainOutcome(True, decision.reason, new_items, manifest, record)
