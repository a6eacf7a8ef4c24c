"""Issue 11, defects 2 and 3: a malicious aggregator (or anyone on the network) against the
publisher's key service. Each test performs the attack and asserts it fails."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from eth_account import Account

from aggregator.key_issuer import PATH, KeyIssuer, KeyRefused, MemoryLedger, reply_tag, request_tag
from aggregator.secagg import MinerKeys, PublisherKeys
from fl_server.key_service import KeyServiceError, KeyServiceUnavailable, RemoteKeyService, new_credential
from scripts.key_service import ReplayGuard, SqliteLedger, main, make_server, serve_in_thread, tls_context
from tests.fl_server.test_key_service import ATTEMPT, ROUND, TASK, FakeChain


@pytest.fixture
def miners():
    keys = {Account.create().address: MinerKeys.generate() for _ in range(4)}
    return keys, sorted(keys)


def issuer_for(keys, chain, ledger=None, publisher=None) -> KeyIssuer:
    return KeyIssuer(
        "masked", publisher or PublisherKeys.generate(), lambda a: keys[a].public, 2, chain, ledger or MemoryLedger()
    )


# -- defect 2: a key for any set, any epoch ------------------------------------------------------


def test_defect2_key_for_the_victim_alone_is_refused(miners):
    keys, addrs = miners
    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs)))
    with pytest.raises(KeyRefused, match="threshold is t=2"):
        issuer.issue(TASK, ROUND, ATTEMPT, [addrs[0]], np.arange(4))


def test_defect2_victim_plus_a_sybil_that_did_not_commit_is_refused(miners):
    keys, addrs = miners
    victim, sybil = addrs[0], addrs[3]
    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs[:3])))  # the sybil never committed
    with pytest.raises(KeyRefused, match=f"not committed on chain in this epoch: {sybil}"):
        issuer.issue(TASK, ROUND, ATTEMPT, [victim, sybil], np.arange(4))


@pytest.mark.parametrize("epoch", [(999, 0), (0, 0), (ROUND, ATTEMPT - 1), (ROUND - 1, ATTEMPT - 1), (ROUND, ATTEMPT + 1)])
def test_defect2_every_epoch_but_the_open_one_is_refused(miners, epoch):
    keys, addrs = miners
    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs)))
    with pytest.raises(KeyRefused, match="not the open one"):
        issuer.issue(TASK, *epoch, addrs[:2], np.arange(4))


def test_defect2_no_key_while_the_commit_window_is_open(miners):
    keys, addrs = miners
    chain = FakeChain((ROUND, ATTEMPT), set(addrs))
    chain.window_open = True
    with pytest.raises(KeyRefused, match="still open"):
        issuer_for(keys, chain).issue(TASK, ROUND, ATTEMPT, addrs[:2], np.arange(4))


def test_defect2_without_a_chain_past_epochs_are_still_refused(miners):
    """chain=none: the set is the aggregator's claim, but a past epoch never gets a key."""
    keys, addrs = miners
    issuer = issuer_for(keys, FakeChain(None, None))
    issuer.issue(TASK, 5, 5, addrs[:3], np.arange(4))
    with pytest.raises(KeyRefused, match="is past"):
        issuer.issue(TASK, 4, 4, addrs[:2], np.arange(4))


def test_defect2_threshold_below_two_cannot_be_configured(miners):
    keys, _ = miners
    with pytest.raises(ValueError, match="threshold"):
        KeyIssuer("nddfe", PublisherKeys.generate(), lambda a: keys[a].public, 1, FakeChain(None, None), MemoryLedger())


# -- defect 3: one key per epoch survives a restart ------------------------------------------------


def test_defect3_restart_cannot_issue_key_of_the_set_minus_the_victim(miners, tmp_path):
    keys, addrs = miners
    publisher = PublisherKeys.generate()
    chain = FakeChain((ROUND, ATTEMPT), set(addrs))
    first = issuer_for(keys, chain, SqliteLedger(tmp_path / "ledger.sqlite"), publisher)
    key = first.issue(TASK, ROUND, ATTEMPT, addrs[:3], np.arange(6))
    first.ledger.close()  # type: ignore[attr-defined]
    # the service restarts (new process, same ledger file): the aggregator asks for I minus the victim
    again = issuer_for(keys, chain, SqliteLedger(tmp_path / "ledger.sqlite"), publisher)
    with pytest.raises(KeyRefused, match="another set"):
        again.issue(TASK, ROUND, ATTEMPT, addrs[1:3], np.arange(6))
    assert again.issue(TASK, ROUND, ATTEMPT, addrs[:3], np.arange(6)) == key  # the same set: the same key


def test_defect3_the_decision_is_recorded_before_the_key_exists(miners, tmp_path):
    """If recording fails, no key is returned (the ledger write comes first)."""
    keys, addrs = miners

    class BrokenLedger(MemoryLedger):
        def record(self, *args: object) -> None:
            raise OSError("disk full")

    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs)), BrokenLedger())
    with pytest.raises(OSError, match="disk full"):
        issuer.issue(TASK, ROUND, ATTEMPT, addrs[:2], np.arange(4))


# -- defect 3: the HTTP front ----------------------------------------------------------------------


@pytest.fixture
def running(miners):
    keys, addrs = miners
    credential = new_credential()
    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs)))
    server = make_server(issuer, credential, max_body_bytes=1 << 20, socket_timeout_s=1.0)
    serve_in_thread(server)
    yield server, credential, addrs
    server.shutdown()
    server.server_close()


def _signed_headers(credential: bytes, body: bytes, nonce: str | None = None, ts: int | None = None) -> dict[str, str]:
    timestamp, nonce = str(int(time.time()) if ts is None else ts), nonce or secrets.token_hex(16)
    return {
        "X-MM-Timestamp": timestamp,
        "X-MM-Nonce": nonce,
        "X-MM-Auth": request_tag(credential, "POST", PATH, timestamp, nonce, body),
    }


def _raw(server, head: bytes, body: bytes = b"", read_timeout: float = 10.0) -> bytes:
    with socket.create_connection(server.server_address[:2], timeout=read_timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def _post(server, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("POST", PATH, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def _works(server, credential, addrs) -> None:
    client = RemoteKeyService(f"http://127.0.0.1:{server.server_address[1]}", credential, timeout=5)
    assert client.functional_key(credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(3))


def test_defect3_json_nested_100000_deep_is_refused_before_parsing(running):
    server, credential, addrs = running
    body = b"[" * 100_000 + b"]" * 100_000
    status, reply = _post(server, body, _signed_headers(credential, body))  # even when authenticated
    assert status == 400 and b"nested deeper" in reply
    _works(server, credential, addrs)  # the service is still up


@pytest.mark.parametrize(
    ("length", "status"),
    [(b"999999999999", b"413"), (b"-1", b"400"), (b"1e3", b"400"), (None, b"411")],
)
def test_defect3_bad_content_length_is_answered_without_reading_a_body(running, length, status):
    server, credential, addrs = running
    head = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    if length is not None:
        head += b"Content-Length: " + length + b"\r\n"
    reply = _raw(server, head + b"\r\n")  # no body follows: the answer must not wait for one
    assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == status
    _works(server, credential, addrs)


def test_defect3_unauthenticated_large_body_is_not_buffered(running):
    server, credential, addrs = running
    head = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 536870912\r\n\r\n"
    reply = _raw(server, head, b"\0" * 4096)  # 512 MiB announced, the server answers 413 at once
    assert reply.startswith(b"HTTP/1.0 413")


def test_defect3_a_silent_client_is_cut_off_by_the_socket_timeout(running):
    server, credential, addrs = running
    head = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    reply = _raw(server, head, b"{", read_timeout=30)  # 1 of 100 bytes, then silence
    assert reply.startswith(b"HTTP/1.0 408") or reply == b""  # answered or closed, never held forever
    _works(server, credential, addrs)


def test_defect3_replayed_and_stale_requests_are_refused(running):
    server, credential, addrs = running
    body = json.dumps(
        {"task_id": TASK, "round": ROUND, "attempt": ATTEMPT, "addresses": addrs[:2], "indices_hex": "00000000"}
    ).encode()
    headers = _signed_headers(credential, body)
    assert _post(server, body, headers)[0] == 200
    status, reply = _post(server, body, headers)  # byte-identical replay
    assert status == 403 and b"replayed" in reply
    stale = _signed_headers(credential, body, ts=int(time.time()) - 3600)
    status, reply = _post(server, body, stale)
    assert status == 403 and b"replay window" in reply
    tampered = dict(_signed_headers(credential, body))
    changed = body.replace(b'"round": 3', b'"round": 4')
    assert changed != body
    status, _ = _post(server, changed, tampered)  # body changed after signing
    assert status == 401


def test_defect3_signature_covers_method_path_timestamp_and_nonce():
    cred, body = b"k" * 32, b"{}"
    base = request_tag(cred, "POST", PATH, "1", "a" * 32, body)
    assert len({
        base,
        request_tag(cred, "GET", PATH, "1", "a" * 32, body),
        request_tag(cred, "POST", "/other", "1", "a" * 32, body),
        request_tag(cred, "POST", PATH, "2", "a" * 32, body),
        request_tag(cred, "POST", PATH, "1", "b" * 32, body),
        request_tag(cred, "POST", PATH, "1", "a" * 32, b"[]"),
    }) == 6


def test_defect3_a_reply_for_another_request_is_not_accepted(running):
    """A man in the middle replays a genuine key reply for another request: the client refuses it."""
    server, credential, addrs = running
    body = json.dumps(
        {"task_id": TASK, "round": ROUND, "attempt": ATTEMPT, "addresses": addrs[:2], "indices_hex": "00000000"}
    ).encode()
    headers = _signed_headers(credential, body)
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("POST", PATH, body=body, headers=headers)
    genuine = conn.getresponse()
    recorded = (genuine.status, genuine.read(), genuine.getheader("X-MM-Reply-Auth"))
    conn.close()
    assert recorded[2] == reply_tag(credential, headers["X-MM-Auth"], recorded[0], recorded[1])

    class Replayer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(recorded[0])
            self.send_header("Content-Length", str(len(recorded[1])))
            self.send_header("X-MM-Reply-Auth", recorded[2])
            self.end_headers()
            self.wfile.write(recorded[1])

        def log_message(self, *args: object) -> None:
            return

    mitm = ThreadingHTTPServer(("127.0.0.1", 0), Replayer)
    serve_in_thread(mitm)
    try:
        client = RemoteKeyService(f"http://127.0.0.1:{mitm.server_address[1]}", credential, timeout=5)
        with pytest.raises(KeyServiceUnavailable, match="not authenticated"):
            client.functional_key(credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(1))
    finally:
        mitm.shutdown()
        mitm.server_close()


def test_replay_guard_forgets_nonces_only_after_the_window():
    now = [1000.0]
    guard = ReplayGuard(window=60, clock=lambda: now[0])
    guard.check("1000", "a" * 32)
    now[0] += 100  # inside twice the window: still remembered
    with pytest.raises(KeyRefused, match="replay window"):
        guard.check("1000", "a" * 32)  # and the timestamp is now too old anyway
    with pytest.raises(KeyRefused, match="32 lower-case hex"):
        guard.check("1100", "xyz")


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelmine key service")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_tls_on_loopback_with_a_self_signed_certificate(miners, tmp_path):
    keys, addrs = miners
    cert, key = _self_signed(tmp_path)
    credential = new_credential()
    server = make_server(issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs))), credential, tls=tls_context(cert, key))
    serve_in_thread(server)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        assert RemoteKeyService(url, credential, timeout=5, ca_file=cert).functional_key(
            credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(3)
        )
        with pytest.raises(KeyServiceUnavailable):  # a client that does not trust the certificate
            RemoteKeyService(url, credential, timeout=5).functional_key(
                credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(3)
            )
    finally:
        server.shutdown()
        server.server_close()


def test_keys_and_secrets_never_reach_the_log(running, caplog):
    server, credential, addrs = running
    caplog.set_level(logging.DEBUG)
    client = RemoteKeyService(f"http://127.0.0.1:{server.server_address[1]}", credential, timeout=5)
    key = client.functional_key(credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(3))
    with pytest.raises(KeyServiceError):
        client.functional_key(credential, TASK, ROUND, ATTEMPT, addrs[:3], np.arange(3))
    text = caplog.text.lower()
    assert key.hex() not in text and credential.hex() not in text and "refused" in text


def test_cli_refuses_a_bad_config_with_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "ks.yaml"
    cfg.write_text("backend: nddfe\nthreshold: 1\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith("error: threshold must be >= 2")
    cfg.write_text("backend: nddfe\nhost: 0.0.0.0\nledger: x.sqlite\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "beyond loopback: set tls_cert" in capsys.readouterr().err


def test_cli_config_builds_a_working_service(miners, tmp_path, monkeypatch):
    """The documented config (local-test variant without a chain): secrets from files (0600) or env."""
    from scripts.key_service import build

    keys, addrs = miners
    publisher = PublisherKeys.generate()
    (tmp_path / "publisher.key").write_text(publisher.secret.hex())
    (tmp_path / "publisher.key").chmod(0o600)
    credential = new_credential()
    monkeypatch.setenv("MODELMINE_KEY_SERVICE_CREDENTIAL", credential.hex())
    (tmp_path / "miners.json").write_text(json.dumps({a: k.public.hex() for a, k in keys.items()}))
    cfg = {
        "backend": "masked", "threshold": 2, "port": 0, "ledger": str(tmp_path / "ledger.sqlite"),
        "publisher_key_file": str(tmp_path / "publisher.key"), "miners_file": str(tmp_path / "miners.json"),
        "allow_unverified_sets": True,
    }
    server, ledger = build(cfg)
    serve_in_thread(server)
    try:
        client = RemoteKeyService(f"http://127.0.0.1:{server.server_address[1]}", credential, timeout=5)
        assert client.functional_key(credential, TASK, ROUND, ATTEMPT, addrs[:2], np.arange(3))
        assert ledger.lookup(TASK, ROUND, ATTEMPT).members == tuple(sorted(addrs[:2]))
    finally:
        server.shutdown()
        server.server_close()
    (tmp_path / "publisher.key").chmod(0o644)
    monkeypatch.delenv("MODELMINE_PUBLISHER_SECAGG_KEY", raising=False)
    with pytest.raises(Exception, match="readable by others"):
        build(cfg)


def test_defect3_connections_beyond_the_cap_are_dropped_not_queued(miners):
    """Slow clients cannot pile up threads: with max_connections=1 and one silent client holding the
    slot, the next connection is closed at once; after the silent one times out, service resumes."""
    keys, addrs = miners
    credential = new_credential()
    issuer = issuer_for(keys, FakeChain((ROUND, ATTEMPT), set(addrs)))
    server = make_server(issuer, credential, socket_timeout_s=1.0, max_connections=1)
    serve_in_thread(server)
    try:
        silent = socket.create_connection(server.server_address[:2], timeout=10)
        silent.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\n")  # headers never finished
        time.sleep(0.2)
        with socket.create_connection(server.server_address[:2], timeout=10) as second:
            second.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert second.recv(100) == b""  # dropped, not served and not queued behind the silent one
        assert silent.recv(100) == b""  # cut off by the socket timeout, without an answer
        silent.close()
        # the handler thread frees its slot just after closing the socket: wait for that, then serve
        deadline = time.monotonic() + 10
        while not server._slots.acquire(timeout=0.05):
            assert time.monotonic() < deadline, "the silent client's slot was never released"
        server._slots.release()
        _works(server, credential, addrs)
    finally:
        server.shutdown()
        server.server_close()
