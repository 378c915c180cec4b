"""Webhook endpoints and the password change in a real Chromium: register an endpoint (its secret
shown once), send it a test event (in the delivery log), disable it; change the password (this
browser stays signed in, the old password no longer works)."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.browser.test_api_docs_offline import docs_gateway  # noqa: F401 - a plain gateway fixture
from tests.dashboard.helpers import PASSWORD

NEW_PASSWORD = "another correct horse battery"


def test_webhooks_and_password_change(browser, docs_gateway, artifacts):  # noqa: F811
    context = browser.new_context(base_url=docs_gateway, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    email = f"hooks-{uuid.uuid4().hex[:8]}@example.com"
    page.goto("/dashboard/signup")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/analyses")

    page.click("nav >> text=Webhooks")
    page.fill("[data-webhook-form] input[name=url]", "https://93.184.215.14/hooks/moodreel")
    page.fill("[data-webhook-form] input[name=description]", "<b>ops</b>")
    page.check("[data-webhook-form] input[value='analysis.failed']")
    page.click("button:has-text('Add endpoint')")
    secret = page.locator("#new-secret").input_value()
    assert secret.startswith("whsec_")
    row = page.locator("[data-endpoint-row]")
    assert row.count() == 1 and "<b>ops</b>" in row.inner_text() and "analysis.failed" in row.inner_text()
    page.screenshot(path=str(artifacts / "1-endpoint-created.png"), full_page=True)
    page.reload()
    assert page.locator("#new-secret").count() == 0 and secret not in page.content()

    page.click("button:has-text('Send test')")
    page.wait_for_url(re.compile(r".*/dashboard/webhooks/deliveries\?endpoint_id=[0-9a-f-]{36}$"))
    delivery = page.locator("[data-delivery-row]")
    assert delivery.count() == 1 and delivery.get_attribute("data-event") == "webhook.test"
    assert "93.184.215.14/hooks/moodreel" in delivery.inner_text()
    page.screenshot(path=str(artifacts / "2-delivery-log.png"), full_page=True)

    page.click("text=← Webhooks")
    page.click("[data-endpoint-row] button:has-text('Disable')")
    assert page.locator("[data-endpoint-status]").inner_text() == "disabled"
    assert page.locator("button:has-text('Send test')").count() == 0
    page.screenshot(path=str(artifacts / "3-disabled.png"), full_page=True)

    page.click("nav >> text=Account")
    assert page.locator("[data-account-email]").inner_text() == email
    page.fill("input[name=current_password]", "not my password")
    page.fill("input[name=new_password]", NEW_PASSWORD)
    page.click("button:has-text('Change password')")
    assert "current password is not correct" in page.locator("[role=alert]").inner_text().lower()
    console_errors.clear()  # Chromium logs the deliberate 400 answer as a failed resource
    page.fill("input[name=current_password]", PASSWORD)
    page.fill("input[name=new_password]", NEW_PASSWORD)
    page.click("button:has-text('Change password')")
    page.wait_for_selector("[data-notice]")
    assert "Every other session was signed out" in page.locator("[data-notice]").inner_text()
    page.screenshot(path=str(artifacts / "4-password-changed.png"), full_page=True)
    # This browser is still signed in; the old password is refused, the new one works.
    page.click("nav >> text=Analyses")
    page.wait_for_url("**/dashboard/analyses")
    with httpx.Client(base_url=docs_gateway, timeout=30) as api:
        old = api.post("/v1/auth/login", data={"username": email, "password": PASSWORD})
        assert old.status_code == 401
        assert (
            api.post("/v1/auth/login", data={"username": email, "password": NEW_PASSWORD}).status_code == 200
        )
    assert console_errors == [], console_errors
    context.close()
