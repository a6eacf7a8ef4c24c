import numpy as np
import pytest

from aggregator import secagg
from aggregator.secagg import MinerKeys, PublisherKeys
from fl_server.key_service import (
    KeyServiceError,
    PublisherKeyService,
    RemoteKeyService,
    new_credential,
    serve,
)


@pytest.fixture
def service():
    miners = {f"0x{i:040x}": MinerKeys.generate() for i in range(1, 4)}
    svc = PublisherKeyService("masked", PublisherKeys.generate(), new_credential(), lambda a: miners[a].public)
    return svc, miners


def test_key_is_issued_once_per_round_for_one_set(service):
    svc, miners = service
    idx = np.arange(5)
    addrs = sorted(miners)
    k1 = svc.functional_key(svc.credential, 1, 1, addrs[:2], idx)
    assert svc.functional_key(svc.credential, 1, 1, list(reversed(addrs[:2])), idx) == k1  # same set: same key
    with pytest.raises(KeyServiceError, match="another set"):
        svc.functional_key(svc.credential, 1, 1, addrs, idx)
    with pytest.raises(KeyServiceError, match="another set"):
        svc.functional_key(svc.credential, 1, 1, addrs[:2], np.arange(6))
    svc.functional_key(svc.credential, 1, 2, addrs, idx)  # next round is fine


def test_the_key_decrypts_the_sum_of_that_set(service):
    svc, miners = service
    idx = np.arange(4)
    xs = {a: np.array([1, -2, 3, 4]) * (i + 1) for i, a in enumerate(sorted(miners))}
    cts = [secagg.encrypt("masked", xs[a], idx, 1, 5, miners[a].secret, svc.public) for a in sorted(miners)]
    key = svc.functional_key(svc.credential, 1, 5, sorted(miners), idx)
    assert np.array_equal(secagg.decrypt_sum("masked", cts, key, 3), sum(xs.values()))


def test_only_the_aggregator_gets_keys(service):
    svc, miners = service
    with pytest.raises(KeyServiceError, match="only the task's aggregator"):
        svc.functional_key(b"x" * 32, 1, 1, sorted(miners), np.arange(3))
    with pytest.raises(KeyServiceError, match="duplicates"):
        svc.functional_key(svc.credential, 1, 1, [sorted(miners)[0]] * 2, np.arange(3))


def test_http_service_authenticates_requests(service):
    svc, miners = service
    server = serve(svc)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        good = RemoteKeyService(url, svc.credential)
        key = good.functional_key(svc.credential, 9, 1, sorted(miners), np.arange(3))
        assert key == svc.functional_key(svc.credential, 9, 1, sorted(miners), np.arange(3))
        with pytest.raises(KeyServiceError, match="bad request signature"):
            RemoteKeyService(url, b"y" * 32).functional_key(b"y" * 32, 9, 2, sorted(miners), np.arange(3))
        with pytest.raises(KeyServiceError, match="another set"):
            good.functional_key(svc.credential, 9, 1, sorted(miners)[:1], np.arange(3))
    finally:
        server.shutdown()
