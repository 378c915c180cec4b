"""The CloudFormation template: cfn-lint clean, its functions' environment is the settings class,
its handlers exist, and its rules match the real event shapes the handlers are tested with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cfnlint.api import lint_all
from cfnlint.decode import decode_str

from services.retrain import aws
from shared.settings import REPO_ROOT, Settings

TEMPLATE = REPO_ROOT / "services" / "retrain" / "template.yaml"
EVENTS = Path(__file__).parent / "events"


@pytest.fixture(scope="module")
def template() -> dict:
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    return decoded


def test_cfn_lint_passes_and_catches_a_broken_copy():
    text = TEMPLATE.read_text()
    # Errors and warnings; informational rules (I...) only suggest metadata.
    assert [str(m) for m in lint_all(text) if m.rule.id[0] in "EW"] == []
    broken = text.replace("Type: AWS::Lambda::Permission", "Type: AWS::Lambda::Permision", 1)
    assert [m for m in lint_all(broken) if m.rule.id[0] == "E"]


def test_functions_use_settings_and_existing_handlers(template):
    names = {f"MOODREEL_{field.upper()}" for field in Settings.model_fields}
    for logical in ("TriggerFunction", "StateChangeFunction"):
        properties = template["Resources"][logical]["Properties"]
        assert set(properties["Environment"]["Variables"]) <= names
        module, _, handler = properties["ImageConfig"]["Command"][0].rpartition(".")
        assert module == "services.retrain.aws" and callable(getattr(aws, handler))
        assert properties["ReservedConcurrentExecutions"] == 1


def test_rules_match_the_events_the_handlers_take(template):
    pattern = template["Resources"]["TrainingStateChangeRule"]["Properties"]["EventPattern"]
    event = json.loads((EVENTS / "training_state_change.json").read_text())
    assert event["source"] in pattern["source"] and event["detail-type"] in pattern["detail-type"]
    assert event["detail"]["TrainingJobStatus"] in pattern["detail"]["TrainingJobStatus"]
    assert pattern["detail"]["TrainingJobName"] == [{"prefix": f"{aws.JOB_PREFIX}-"}]
    rules = template["Resources"]["DataBucket"]["Properties"]["NotificationConfiguration"]
    filters = rules["LambdaConfigurations"][0]["Filter"]["S3Key"]["Rules"]
    assert {"Name": "suffix", "Value": aws.MANIFEST} in filters
    defaults = template["Parameters"]
    assert defaults["CorrectionsPrefix"]["Default"] == Settings().retrain_corrections_prefix
    assert defaults["StatePrefix"]["Default"] == Settings().retrain_state_prefix
