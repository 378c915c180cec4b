"""SSRF-safe downloads against real loopback servers."""

from __future__ import annotations

import pytest

from shared.net import fetch
from shared.net.fetch import FetchError, download_url, job_workspace
from shared.settings import Settings
from tests.worker.loopback import (
    RecordingServer,
    declared_length,
    redirect_to,
    serve_file,
    stall,
    status,
    stream_without_length,
)

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


def settings_for(*servers: RecordingServer, **overrides) -> Settings:
    values = {
        "private_url_origins": [s.origin for s in servers],
        "fetch_connect_timeout_seconds": 2.0,
        "fetch_read_timeout_seconds": 2.0,
        "fetch_total_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def server():
    with RecordingServer() as srv:
        yield srv


@pytest.fixture
def internal():
    """The loopback "internal service" an SSRF attempt aims at; it must never be reached."""
    with RecordingServer({"/": status(200, b"secret")}) as srv:
        yield srv


async def test_downloads_from_an_allowed_origin(server, tmp_path):
    server.routes["/v.mp4"] = serve_file(VIDEO)
    result = await download_url(server.url("/v.mp4"), tmp_path / "media", settings=settings_for(server))
    assert result.path.read_bytes() == VIDEO
    assert result.size_bytes == len(VIDEO)
    assert result.content_type == "video/mp4"
    method, _, headers, _ = server.requests[0]
    assert method == "GET" and headers["host"] == server.origin


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://2130706433:{port}/",
        "http://0x7f.1:{port}/",
        "http://127.1:{port}/",
        "http://[::1]:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://0.0.0.0:{port}/",
        "http://user@127.0.0.1:{port}/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/",
    ],
)
async def test_ssrf_urls_are_refused_before_any_connection(internal, tmp_path, template):
    url = template.format(port=internal.port)
    with pytest.raises(FetchError) as caught:
        await download_url(url, tmp_path / "media", settings=settings_for())
    assert caught.value.code == "url_not_allowed"
    assert internal.connections == 0
    assert not (tmp_path / "media").exists()


async def test_a_name_resolving_to_loopback_is_refused(internal, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "system_resolver", lambda host, port: ["93.184.216.34", "127.0.0.1"])
    with pytest.raises(FetchError) as caught:
        await download_url(f"http://media.example:{internal.port}/", tmp_path / "m", settings=settings_for())
    assert caught.value.code == "url_not_allowed"
    assert internal.connections == 0


async def test_connects_to_the_checked_address_with_the_original_host(server, tmp_path, monkeypatch):
    """One lookup per hop; the connection goes to its answer and Host keeps the name."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(fetch, "system_resolver", resolver)
    server.routes["/v.mp4"] = serve_file(VIDEO)
    settings = settings_for(private_url_origins=[f"videos.example:{server.port}"])
    result = await download_url(
        f"http://videos.example:{server.port}/v.mp4", tmp_path / "m", settings=settings
    )
    assert result.size_bytes == len(VIDEO)
    assert lookups == ["videos.example"]
    assert server.requests[0][2]["host"] == f"videos.example:{server.port}"


async def test_redirect_to_a_private_address_is_refused(server, internal, tmp_path):
    server.routes["/go"] = redirect_to(internal.url("/"))
    with pytest.raises(FetchError) as caught:
        await download_url(server.url("/go"), tmp_path / "m", settings=settings_for(server))
    assert caught.value.code == "url_not_allowed"
    assert server.connections == 1
    assert internal.connections == 0


async def test_redirects_are_followed_and_bounded(server, tmp_path):
    server.routes["/v.mp4"] = serve_file(VIDEO)
    server.routes["/a"] = redirect_to("/b", 301)
    server.routes["/b"] = redirect_to(server.url("/v.mp4"), 307)
    result = await download_url(server.url("/a"), tmp_path / "m", settings=settings_for(server))
    assert result.path.read_bytes() == VIDEO
    assert result.final_url == server.url("/v.mp4")

    server.routes["/loop"] = redirect_to("/loop")
    with pytest.raises(FetchError) as caught:
        await download_url(
            server.url("/loop"), tmp_path / "m", settings=settings_for(server, fetch_max_redirects=3)
        )
    assert caught.value.code == "download_failed" and "redirects" in str(caught.value)
    assert sum(1 for r in server.requests if r[1] == "/loop") == 4


async def test_byte_limit_is_enforced_while_streaming(server, tmp_path):
    server.routes["/endless"] = stream_without_length(50_000_000)
    with pytest.raises(FetchError) as caught:
        await download_url(
            server.url("/endless"), tmp_path / "m", settings=settings_for(server), max_bytes=1_000_000
        )
    assert caught.value.code == "too_large"
    assert not (tmp_path / "m").exists()


async def test_declared_content_length_over_the_limit_is_refused_up_front(server, tmp_path):
    server.routes["/huge"] = declared_length(10**12)
    with pytest.raises(FetchError) as caught:
        await download_url(server.url("/huge"), tmp_path / "m", settings=settings_for(server))
    assert caught.value.code == "too_large"
    assert not (tmp_path / "m").exists()


async def test_read_and_total_timeouts(server, tmp_path):
    server.routes["/stall"] = stall(3.0)
    with pytest.raises(FetchError) as caught:
        await download_url(
            server.url("/stall"),
            tmp_path / "m",
            settings=settings_for(server, fetch_read_timeout_seconds=0.5),
        )
    assert caught.value.code == "download_failed" and caught.value.transient
    with pytest.raises(FetchError) as caught:
        await download_url(
            server.url("/stall"),
            tmp_path / "m",
            settings=settings_for(server, fetch_read_timeout_seconds=5, fetch_total_timeout_seconds=0.5),
        )
    assert caught.value.code == "download_failed" and "did not finish" in str(caught.value)


@pytest.mark.parametrize(("code", "transient"), [(404, False), (403, False), (503, True), (429, True)])
async def test_http_errors_say_whether_a_retry_may_help(server, tmp_path, code, transient):
    server.routes["/e"] = status(code)
    with pytest.raises(FetchError) as caught:
        await download_url(server.url("/e"), tmp_path / "m", settings=settings_for(server))
    assert caught.value.code == "download_failed"
    assert caught.value.transient is transient


async def test_job_workspace_is_removed_even_on_error(tmp_path):
    settings = Settings(worker_tmp_dir=tmp_path)
    with pytest.raises(RuntimeError):
        async with job_workspace(settings) as directory:
            (directory / "media").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _tls_material(tmp_path):
    """A throwaway CA and a server certificate for ``videos.example`` signed by it."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("moodreel test CA"))
        .issuer_name(name("moodreel test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(name("videos.example"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("videos.example")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"


async def test_https_to_the_pinned_address_verifies_the_certificate_for_the_name(tmp_path, monkeypatch):
    """Connecting to the checked IP keeps TLS right: SNI and verification use the URL's name."""
    import ssl

    import httpx

    ca, cert, key = _tls_material(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(ca))
    monkeypatch.setattr(
        fetch,
        "_client",
        lambda timeout: httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, verify=client_context
        ),
    )
    monkeypatch.setattr(fetch, "system_resolver", lambda host, port: ["127.0.0.1"])
    with RecordingServer({"/v.mp4": serve_file(VIDEO)}) as server:
        server.socket = server_context.wrap_socket(server.socket, server_side=True)
        settings = settings_for(
            private_url_origins=[f"videos.example:{server.port}", f"other.example:{server.port}"]
        )
        result = await download_url(
            f"https://videos.example:{server.port}/v.mp4", tmp_path / "m", settings=settings
        )
        assert result.path.read_bytes() == VIDEO
        assert server.requests[0][2]["host"] == f"videos.example:{server.port}"
        # Same address, a name the certificate does not cover: refused by verification.
        with pytest.raises(FetchError) as caught:
            await download_url(
                f"https://other.example:{server.port}/v.mp4", tmp_path / "m2", settings=settings
            )
        assert caught.value.code == "download_failed"
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
        assert len(server.requests) == 1
