"""SSRF rules of shared/net/urls.py: static checks, numeric host forms, and resolution."""

from __future__ import annotations

import pytest

from shared.net.urls import MAX_URL_LENGTH, UrlNotAllowed, UrlPolicy, is_address_allowed

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def fixed_resolver(answers: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("name does not resolve")
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/video.mp4",
        f"https://{PUBLIC_V4}:8443/a/b?c=d#e",
        f"http://[{PUBLIC_V6}]/clip.webm",
        "https://videos.example.com/clip.mp4",
        "https://videos.example.com./clip.mp4",
        "https://VIDEOS.Example.COM/clip.mp4",
        "https://bücher.example.com/clip.mp4",
    ],
)
def test_public_urls_pass(url):
    resolver = fixed_resolver(
        {"videos.example.com": [PUBLIC_V4, PUBLIC_V6], "xn--bcher-kva.example.com": [PUBLIC_V4]}
    )
    UrlPolicy().check(url, resolver=resolver)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://93.184.215.14/a", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://93.184.215.14/", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("", "empty"),
        ("http://93.184.215.14/" + "a" * MAX_URL_LENGTH, "longer than"),
        ("http://user:pass@93.184.215.14/", "user information"),
        ("http://93.184.215.14@127.0.0.1/", "user information"),
        ("http://127.0.0.1\\@93.184.215.14/", "backslashes"),
        ("http://93.184.215.14 /", "whitespace"),
        ("http://93.184.215.14/\r\nHost: x", "control"),
        ("http:///nohost", "no host"),
        ("http://93.184.215.14:99999/", "malformed"),
        ("http://[::1/", "malformed"),
        ("http://exa_mple.com/", "not a valid domain"),
    ],
)
def test_static_rejections(url, reason):
    with pytest.raises(UrlNotAllowed, match=reason):
        UrlPolicy().check(url, resolver=fixed_resolver({}))


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.01", "127.000.0.1", "1.2.3", "0"],
)
def test_odd_numeric_forms_rejected(host):
    with pytest.raises(UrlNotAllowed, match="non-canonical numeric"):
        UrlPolicy().check(f"http://{host}/video.mp4")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[::127.0.0.1]",
        "[2002:7f00:1::]",
        "[2002:a9fe:a9fe::1]",
        "[64:ff9b::a9fe:a9fe]",
    ],
)
def test_disallowed_literals_rejected(host):
    with pytest.raises(UrlNotAllowed, match="private or reserved"):
        UrlPolicy().check(f"http://{host}:8080/video.mp4")


def test_hostname_with_any_private_answer_rejected():
    resolver = fixed_resolver({"rebind.example.com": [PUBLIC_V4, "127.0.0.1"]})
    with pytest.raises(UrlNotAllowed, match="resolves to a private"):
        UrlPolicy().check("http://rebind.example.com/v.mp4", resolver=resolver)


def test_unresolvable_host_rejected():
    with pytest.raises(UrlNotAllowed, match="does not resolve"):
        UrlPolicy().check("http://nowhere.example.com/v.mp4", resolver=fixed_resolver({}))
    with pytest.raises(UrlNotAllowed, match="does not resolve"):
        empty = fixed_resolver({"empty.example.com": []})
        UrlPolicy().check("http://empty.example.com/v.mp4", resolver=empty)


def test_localhost_rejected_with_the_system_resolver():
    with pytest.raises(UrlNotAllowed, match="private or reserved"):
        UrlPolicy().check("http://localhost:8000/v.mp4")


def test_allow_private_lets_loopback_and_private_through_but_not_metadata():
    UrlPolicy(allow_private=True).check("http://127.0.0.1:8000/v.mp4")
    UrlPolicy(allow_private=True).check("http://localhost:8000/v.mp4")
    UrlPolicy(allow_private=True).check("http://10.1.2.3/v.mp4")
    UrlPolicy(allow_private=True).check("http://[::ffff:192.168.0.10]/v.mp4")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://224.0.0.1/"):
        with pytest.raises(UrlNotAllowed):
            UrlPolicy(allow_private=True).check(url)
    with pytest.raises(UrlNotAllowed, match="non-canonical"):
        UrlPolicy(allow_private=True).check("http://2130706433/")


@pytest.mark.parametrize(
    "address, allow_private, expected",
    [
        (PUBLIC_V4, False, True),
        (PUBLIC_V6, False, True),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("::ffff:10.0.0.1", False, False),
        ("::ffff:93.184.215.14", False, True),
        ("169.254.169.254", True, False),
        ("fe80::1%eth0", True, False),
        ("not-an-ip", True, False),
        ("192.0.2.1", False, False),
    ],
)
def test_is_address_allowed(address, allow_private, expected):
    assert is_address_allowed(address, allow_private) is expected
