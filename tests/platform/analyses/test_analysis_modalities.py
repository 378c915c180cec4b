"""options.modalities on POST /v1/analyses: any subset of text, audio, visual; anything else 422."""

from __future__ import annotations

import itertools

import pytest

from shared.contract.labels import MODALITIES
from tests.platform.analyses.test_analyses import PUBLIC_URL, submit
from tests.platform.auth.test_auth import assert_problem

SUBSETS = [list(s) for n in range(1, 4) for s in itertools.combinations(MODALITIES, n)]


@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_every_subset_is_accepted_and_kept_in_the_options(client, api_key, modalities):
    response = submit(client, api_key, {"video_url": PUBLIC_URL, "options": {"modalities": modalities}})
    assert response.status_code == 202, response.text
    assert response.json()["options"] == {"modalities": modalities}
    fetched = client.get(response.json()["links"]["self"], headers={"X-API-Key": api_key}).json()
    assert fetched["options"]["modalities"] == modalities


def test_without_modalities_the_options_leave_them_out(client, api_key):
    response = submit(client, api_key, {"video_url": PUBLIC_URL})
    assert response.status_code == 202 and "modalities" not in response.json()["options"]


@pytest.mark.parametrize(
    "modalities",
    [["smell"], [], ["text", "text"], "text", ["Text"], [None], ["text", "audio", "visual", "text"]],
    ids=["unknown", "empty", "repeated", "not-a-list", "case", "null-item", "four"],
)
def test_a_bad_modalities_value_is_a_422_problem(client, api_key, modalities):
    response = submit(client, api_key, {"video_url": PUBLIC_URL, "options": {"modalities": modalities}})
    body = assert_problem(response, 422, "validation_error")
    assert "modalities" in response.text, body
