import os
import stat

import pytest

from fl_client.identity import (
    ETH_ENV,
    SECAGG_ENV,
    IdentityError,
    create_identity,
    load_identity,
    read_public_record,
)


def test_keys_are_private_files_and_round_trip(tmp_path):
    identity = create_identity(tmp_path)
    for name in ("eth.key", "secagg.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode) == 0o600
    loaded = load_identity(tmp_path)
    assert loaded.address == identity.address and loaded.secagg.public == identity.secagg.public
    public = read_public_record(tmp_path)
    assert public == {"address": identity.address, "secagg_public": identity.secagg.public.hex()}
    assert identity.eth_key.hex() not in repr(identity) and identity.secagg.secret.hex() not in repr(identity)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        create_identity(tmp_path)


def test_world_readable_key_is_refused(tmp_path):
    create_identity(tmp_path)
    os.chmod(tmp_path / "keys" / "eth.key", 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(tmp_path)


def test_env_vars_take_precedence_and_are_validated(tmp_path, monkeypatch):
    source = create_identity(tmp_path / "a")
    monkeypatch.setenv(ETH_ENV, "0x" + source.eth_key.hex())
    monkeypatch.setenv(SECAGG_ENV, source.secagg.secret.hex())
    assert load_identity(None).address == source.address
    monkeypatch.setenv(SECAGG_ENV, "zz" * 32)
    with pytest.raises(IdentityError, match="not hex"):
        load_identity(None)


def test_missing_keys_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(ETH_ENV, raising=False)
    with pytest.raises(IdentityError, match="fl-miner keys create --dir") as err:
        load_identity(tmp_path)
    assert "make_miner_keys" not in str(err.value)


@pytest.mark.parametrize("text", ["ab" * 31 + "a", "0x" + "ab" * 31 + "a", "ab" * 32 + "0", "ab" * 31])
def test_a_key_of_the_wrong_length_is_refused_and_the_file_named(tmp_path, monkeypatch, text):
    monkeypatch.delenv(ETH_ENV, raising=False)
    create_identity(tmp_path)
    path = tmp_path / "keys" / "eth.key"
    os.chmod(path, 0o600)
    path.write_text(text)
    with pytest.raises(IdentityError, match="64 hex digits") as err:
        load_identity(tmp_path)
    assert str(path) in str(err.value)


def test_keys_in_a_separate_key_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(ETH_ENV, raising=False)
    made = create_identity(tmp_path / "data", tmp_path / "vault")
    assert not (tmp_path / "data" / "keys").exists()
    assert load_identity(tmp_path / "data", tmp_path / "vault").address == made.address


def test_keys_create_cli_makes_private_keys_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    from fl_client.keys_cli import main

    monkeypatch.delenv(ETH_ENV, raising=False)
    assert main(["create", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    secret = (tmp_path / "keys" / "eth.key").read_text()
    assert secret not in out and "address 0x" in out
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    for name in ("eth.key", "secagg.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode) == 0o600
    assert main(["create", "--dir", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "keys" / "eth.key").read_text() == secret


def test_miner_state_is_kept_per_task_key(tmp_path):
    from aggregator.commitments import Opening
    from aggregator.protocol import ProtocolError
    from fl_client.secure_update import MinerState

    a, b = MinerState(tmp_path, "aaaa1111"), MinerState(tmp_path, "bbbb2222")
    a.save_opening(1, Opening(7, b"\1" * 32))
    assert a.openings()[1].score == 7 and b.openings() == {}
    assert os.stat(a.openings_path).st_mode & 0o077 == 0
    with pytest.raises(ProtocolError):
        MinerState(tmp_path, "../escape")
