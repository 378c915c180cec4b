"""The IAM policies in docs/deploy.md are valid JSON policy documents, least privilege in shape
(no wildcard actions, wildcard resources only for actions that take none), and name the S3 keys
the code really uses."""

from __future__ import annotations

import json
import re

from shared.contract.model_client import SPEC_FILENAME
from shared.settings import REPO_ROOT

DOC = REPO_ROOT / "docs" / "deploy.md"
# Actions that AWS authorises on "*" only.
RESOURCELESS = {
    "ecr:GetAuthorizationToken",
    "sts:GetCallerIdentity",
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "cloudwatch:PutMetricData",
    "application-autoscaling:RegisterScalableTarget",
    "application-autoscaling:DeregisterScalableTarget",
    "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DescribeScalableTargets",
}


def policies() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(block) for block in blocks]


def test_policies_parse_and_are_least_privilege():
    documents = policies()
    assert len(documents) == 5
    for document in documents:
        assert document["Version"] == "2012-10-17"
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all("*" not in action for action in actions), actions
            if statement["Resource"] == "*":
                assert set(actions) <= RESOURCELESS, actions
            if "iam:PassRole" in actions:
                assert (
                    statement["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"
                )


def test_policies_name_the_keys_the_code_uses():
    text = DOC.read_text()
    assert f"/*/{SPEC_FILENAME}" in text
    upload_keys = (REPO_ROOT / "services/platform/uploads/service.py").read_text()
    assert 'f"uploads/{user_id}/' in upload_keys and "moodreel-media-ACCOUNT/uploads/*" in text


def test_deployer_policy_allows_target_tracking_autoscaling():
    deployer = next(
        document
        for document in policies()
        if any(
            "application-autoscaling:PutScalingPolicy" in statement["Action"]
            for statement in document["Statement"]
        )
    )
    granted = {}
    for statement in deployer["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            granted[action] = statement
    # Target tracking makes CloudWatch alarms for the caller and needs the service-linked role.
    for action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"):
        assert ":alarm:TargetTracking-endpoint/moodreel" in granted[action]["Resource"], action
    linked_role = granted["iam:CreateServiceLinkedRole"]
    assert (
        linked_role["Condition"]["StringEquals"]["iam:AWSServiceName"]
        == "sagemaker.application-autoscaling.amazonaws.com"
    )
    assert "/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/" in linked_role["Resource"]
