"""The retraining guard: deploy a candidate only when it is not worse than the deployed model.

Both models are scored in the candidate's training run on the same data (the trainer's
``compare_with`` stores the deployed model's dev reports as meta ``baseline``), so the numbers
compare like for like. Every headline metric on every guarded slice must satisfy
``candidate >= deployed - margin``; a held-out slice smaller than ``min_slice_utterances`` is
recorded but not judged. The AWS state-change handler and ``moodreel retrain`` both decide here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

HEADLINE_METRICS = (("emotion", "weighted_f1"), ("sentiment", "weighted_f1"))
# MELD's dev split (the first source's "dev") and the corrections' held-out slice.
GUARDED_SLICES = ("dev", "corrections_dev")
REQUIRED_SLICE = "dev"
DECISION_FORMAT = "moodreel-retrain-decision/1"


@dataclass
class Comparison:
    slice: str
    head: str
    metric: str
    candidate: float
    deployed: float
    delta: float
    count: int
    judged: bool
    worse: bool


@dataclass
class Decision:
    deploy: bool
    reason: str
    margin: float
    candidate: dict[str, Any]
    deployed: dict[str, Any] | None
    comparisons: list[Comparison] = field(default_factory=list)
    job: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": DECISION_FORMAT, **asdict(self)}


def refuse(reason: str, candidate: dict[str, Any] | None = None, *, margin: float, **job: Any) -> Decision:
    """A decision not to deploy that no comparison reached (failed job, nothing to compare)."""
    return Decision(False, reason, margin, candidate or {}, None, job=job)


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: meta.get(key) for key in ("name", "version", "spec_hash", "data_hash") if key in meta}


def decide(
    candidate_meta: dict[str, Any],
    *,
    margin: float,
    min_slice_utterances: int,
    deployed: bool = True,
) -> Decision:
    """Compare a trained checkpoint's meta (``metrics`` and ``baseline``) against its baseline.

    ``deployed=False`` (no model serves yet) lets any candidate that has MELD dev metrics through.
    """
    candidate = _identity(candidate_meta)
    metrics = candidate_meta.get("metrics") or {}
    if REQUIRED_SLICE not in metrics:
        return refuse("the candidate has no dev metrics", candidate, margin=margin)
    baseline = candidate_meta.get("baseline")
    if not deployed:
        return Decision(True, "no model is deployed yet", margin, candidate, None)
    if not baseline or REQUIRED_SLICE not in (baseline.get("metrics") or {}):
        return refuse(
            "the deployed model was not scored in this run (compare_with)", candidate, margin=margin
        )
    comparisons: list[Comparison] = []
    for slice_name in GUARDED_SLICES:
        ours, theirs = metrics.get(slice_name), baseline["metrics"].get(slice_name)
        if ours is None or theirs is None:
            continue
        for head, metric in HEADLINE_METRICS:
            if head not in ours or head not in theirs:
                continue
            value, reference = float(ours[head][metric]), float(theirs[head][metric])
            count = int(ours[head].get("count", 0))
            judged = slice_name == REQUIRED_SLICE or count >= min_slice_utterances
            delta = value - reference
            comparisons.append(
                Comparison(
                    slice_name,
                    head,
                    metric,
                    round(value, 6),
                    round(reference, 6),
                    round(delta, 6),
                    count,
                    judged,
                    judged and delta < -margin,
                )
            )
    deployed_identity = {key: baseline.get(key) for key in ("name", "version", "spec_hash")}
    worse = [c for c in comparisons if c.worse]
    if worse:
        reason = "worse than the deployed model: " + ", ".join(
            f"{c.slice} {c.head} {c.metric} {c.candidate:.4f} < {c.deployed:.4f} - {margin}" for c in worse
        )
        return Decision(False, reason, margin, candidate, deployed_identity, comparisons)
    return Decision(
        True, f"not worse than the deployed model by more than {margin} on any headline metric",
        margin, candidate, deployed_identity, comparisons,
    )  # fmt: skip


def start_check(
    new_items: int,
    last_started_at: datetime | None,
    now: datetime,
    *,
    min_new_items: int,
    min_interval_seconds: float,
    running: str | None = None,
) -> str | None:
    """Why a retraining must not start now (None: it may). The debounce of both loops."""
    if running:
        return f"retraining job {running} is running"
    if new_items < min_new_items:
        return f"{new_items} new utterances, fewer than {min_new_items}"
    if last_started_at is not None and (now - last_started_at).total_seconds() < min_interval_seconds:
        return f"the last retraining started at {last_started_at.isoformat()}, within the minimum interval"
    return None
