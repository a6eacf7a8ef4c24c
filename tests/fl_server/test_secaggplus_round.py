"""secagg=secaggplus end to end: the server's stage driver against the miners' real stage handlers.

``test_driver_*``: in process (a grid that hands each message to the miner's handler with that
node's own Context), real keys, signatures, shares and masks. ``test_simulation_*``: Flower's
simulation engine with our strategy and ClientApp, one miner dropping after it shared its keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from aggregator import eip712, quantize
from aggregator import secaggplus as sp
from aggregator.dgc import DGCConfig
from aggregator.eip712 import Domain
from aggregator.protocol import RoundPlan, SignedSubmission
from fl_client import secaggplus_client
from fl_client.identity import create_identity
from fl_server.registry import MinerRegistry
from fl_server.secaggplus_round import SecAggPlusRound, from_config
from fl_server.secure_aggregation import Accepted, RoundFailed, SecureRound, SecureSettings

D = 4_000
CLIP, BITS = 0.5, 15


@pytest.fixture(autouse=True)
def _run_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower messages need a run id and node id (set by the runtime in a real run)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)  # the server's; InProcessGrid switches to the miner's


class Miners:
    """n miners with their own keys and Flower contexts; ``train`` answers like fl_client.app does
    for secaggplus (masked input through ``secaggplus_client.masker``, EIP-712 signed)."""

    def __init__(self, root: Path, n: int) -> None:
        self.identities = {100 + i: create_identity(root / f"miner_{i}") for i in range(n)}
        self.registry = MinerRegistry()
        for identity in self.identities.values():
            self.registry.register(identity.address, identity.secagg_public)
        self.contexts = {node: Context(1, node, {}, RecordDict(), {}) for node in self.identities}
        self.values: dict[int, np.ndarray] = {}
        self.fail_train: set[int] = set()

    def train(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        if node in self.fail_train:
            raise RuntimeError("miner crashed while training")
        plan = RoundPlan.from_config(msg.content["config"])
        assert plan.support is not None
        rng = np.random.default_rng(node)
        q = quantize.quantize(rng.normal(0, 0.05, plan.support.size), plan.clip, plan.bits, rng)
        self.values[node] = q
        ciphertext = secaggplus_client.masker(msg, context, plan)(q, plan.support)
        identity = self.identities[node]
        unsigned = SignedSubmission(identity.address, plan.task_id, plan.round, ciphertext, b"\1" * 32, b"\0" * 65)
        signature = eip712.sign(plan.domain, unsigned.message(plan.support_hash), identity.eth_key)
        sub = SignedSubmission(identity.address, plan.task_id, plan.round, ciphertext, b"\1" * 32, signature)
        return Message(RecordDict({"submission": ConfigRecord(sub.to_config())}), reply_to=msg)


class InProcessGrid:
    """Delivers each message to the miner's handler; an exception becomes an error reply, as in Flower."""

    def __init__(self, miners: Miners, rewrite: Callable[[Message], Message] | None = None) -> None:
        self.miners = miners
        self.rewrite = rewrite
        self.errors: list[str] = []

    def send_and_receive(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg = self.rewrite(msg) if self.rewrite else msg
            node = msg.metadata.dst_node_id
            context = self.miners.contexts[node]
            TaskIdentity.node_id = node  # replies are made "on" the miner
            try:
                if msg.metadata.message_type == "query.secaggplus":
                    plan = RoundPlan.from_config(msg.content["config"])
                    reply = secaggplus_client.handle(msg, context, plan, lambda n=node: self.miners.identities[n].eth_key)
                else:
                    reply = self.miners.train(msg, context)
            except Exception as exc:  # noqa: BLE001 - what Flower does with a ClientApp exception
                self.errors.append(str(exc))
                reply = Message(Error(code=1, reason=str(exc)), reply_to=msg)
            finally:
                TaskIdentity.node_id = 0
            replies.append(reply)
        return replies


def _secure(miners: Miners) -> SecureRound:
    settings = SecureSettings(
        backend="secaggplus", bits=BITS, clip=CLIP, dgc=DGCConfig(density=0.05, warmup_rounds=0),
        explore_fraction=1.0, task_id=9, domain=Domain(31337, "0x" + "00" * 20),
    )
    return SecureRound(settings, D, miners.registry, None, b"", b"\2" * 33, b"\3" * 33)  # type: ignore[arg-type]


def _train_messages(plan: RoundPlan, nodes: list[int]) -> list[Message]:
    config = ConfigRecord({**plan.to_config(), "server-round": 1})
    return [Message(RecordDict({"config": config}), dst_node_id=n, message_type="train") for n in nodes]


def _run(driver: SecAggPlusRound, grid: InProcessGrid, plan: RoundPlan, nodes: list[int]) -> tuple[np.ndarray, list[int]]:
    train = driver.prepare(grid, plan, _train_messages(plan, nodes), timeout=10)
    replies = grid.send_and_receive(train)
    accepted = []
    for reply in replies:
        if reply.has_error():
            continue
        sub = SignedSubmission.from_config(reply.content["submission"])
        accepted.append(Accepted(reply.metadata.src_node_id, sub, {}, plan.support))  # type: ignore[arg-type]
    return driver.aggregate(plan, accepted), [a.node_id for a in accepted]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_driver_mean_equals_the_plaintext_mean_with_dropouts(tmp_path: Path, dropout: float) -> None:
    miners = Miners(tmp_path, 7)
    secure = _secure(miners)
    driver = from_config(OmegaConf.create({"bits": BITS, "simulate_dropout": dropout}), secure, seed=3, num_miners=7)
    plan = secure.plan(1, b"\7" * 32)
    grid = InProcessGrid(miners)
    mean, survivors = _run(driver, grid, plan, sorted(miners.identities))
    assert len(survivors) == 7 - int(dropout * 7)
    expected = np.zeros(D)
    expected[plan.support] = quantize.dequantize_sum(sum(miners.values[n] for n in survivors), len(survivors), CLIP, BITS)
    assert np.array_equal(mean, expected)
    assert secure.prev_aggregate is mean  # the next support is chosen from this aggregate
    assert driver.history[-1]["survivors"] == len(survivors) and driver.history[-1]["u2"] == 7


def test_driver_recovers_a_miner_that_crashed_while_training(tmp_path: Path) -> None:
    miners = Miners(tmp_path, 5)
    miners.fail_train = {101}
    secure = _secure(miners)
    driver = from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=5)
    plan = secure.plan(1, b"\7" * 32)
    mean, survivors = _run(driver, InProcessGrid(miners), plan, sorted(miners.identities))
    assert 101 not in survivors and len(survivors) == 4
    total = quantize.dequantize_sum(sum(miners.values[n] for n in survivors), 4, CLIP, BITS)
    assert np.array_equal(mean[plan.support], total)


def test_aggregator_claiming_too_few_survivors_gets_refused(tmp_path: Path) -> None:
    """A lying aggregator asks to unmask with one survivor named: every miner refuses, the round fails."""
    miners = Miners(tmp_path, 5)
    secure = _secure(miners)
    driver = from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=5)
    plan = secure.plan(1, b"\7" * 32)
    lone = {"value": b""}

    def lie(msg: Message) -> Message:
        config = msg.content["config"]
        if msg.metadata.message_type == "query.secaggplus" and config["sap-stage"] == "unmask":
            lone["value"] = lone["value"] or bytes(config["sap-survivors"])[:4]  # type: ignore[index]
            config["sap-survivors"] = lone["value"]
        return msg

    grid = InProcessGrid(miners, rewrite=lie)
    with pytest.raises(RoundFailed):
        _run(driver, grid, plan, sorted(miners.identities))
    assert any("survivors claimed" in e or "dropped" in e for e in grid.errors)


def test_a_replayed_attempt_is_refused_by_the_miners(tmp_path: Path) -> None:
    """Running the same attempt twice (two sums over different sets would reveal their difference)."""
    miners = Miners(tmp_path, 4)
    secure = _secure(miners)
    plan = secure.plan(1, b"\7" * 32)
    _run(from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=4), InProcessGrid(miners), plan, sorted(miners.identities))
    grid = InProcessGrid(miners)
    again = from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=4)
    assert again.prepare(grid, plan, _train_messages(plan, sorted(miners.identities)), timeout=10) == []
    assert sum("not above the last one" in e for e in grid.errors) == 4


def test_too_few_miners_skip_the_round_without_training(tmp_path: Path) -> None:
    miners = Miners(tmp_path, 3)
    secure = _secure(miners)
    driver = from_config(OmegaConf.create({"bits": BITS, "min_survivors_fraction": 1.0}), secure, num_miners=3)
    plan = secure.plan(1, b"\7" * 32)
    assert driver.prepare(InProcessGrid(miners), plan, _train_messages(plan, [100, 101]), timeout=10) == []
    assert "at least 3" in driver.failure
    with pytest.raises(ValueError, match="at least 3"):
        from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=2)


def test_stage_messages_stay_small_and_sparse(tmp_path: Path) -> None:
    """Per miner and round, the protocol's own bytes grow with the degree, not with the model size."""
    miners = Miners(tmp_path, 5)
    secure = _secure(miners)
    driver = from_config(OmegaConf.create({"bits": BITS}), secure, num_miners=5)
    plan = secure.plan(1, b"\7" * 32)
    _run(driver, InProcessGrid(miners), plan, sorted(miners.identities))
    per_miner = driver.history[-1]["stage_bytes_per_miner"]
    degree = driver.history[-1]["degree"]
    assert per_miner < 400 + degree * (sp.ENCRYPTED_SHARE_BYTES + 8 + 2 * (4 + 70)) + 500


# -- Flower's simulation engine ----------------------------------------------------------------------------

FLAKY_CLIENT = '''
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fl_client.app import evaluate_handler, register_handler, secaggplus_handler, train_handler

app = ClientApp()
app.query("register")(register_handler)
app.query("secaggplus")(secaggplus_handler)
app.evaluate()(evaluate_handler)


@app.train()
def _train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) == 0:
        raise RuntimeError("miner 0 went offline after sharing its keys")
    return train_handler(msg, context)
'''


def flaky_app(folder: Path) -> Path:
    """Our ServerApp with a ClientApp whose partition-0 miner crashes in the train stage."""
    folder.mkdir(parents=True)
    (folder / "flaky_client.py").write_text(FLAKY_CLIENT)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "flakyminer"\nversion = "0.1.0"\ndescription = "test"\nlicense = "MIT"\n\n'
        '[tool.flwr.app]\npublisher = "test"\n\n[tool.flwr.app.components]\n'
        'serverapp = "fl_server.app:app"\nclientapp = "flaky_client:app"\n\n'
        '[tool.flwr.app.config]\noverrides = ""\nrun-dir = ""\n'
    )
    return folder


def _simulate(root: Path, out: Path, app: Path | None, *extra: str) -> dict:
    from hydra import compose, initialize_config_dir

    from fl_server.__main__ import CONF_DIR
    from fl_server.experiment import run_experiment

    settings = {"dataset": "digits", "model": "mlp", "num_miners": "4", "rounds": "1", "data_root": str(root),
                "dgc.enabled": "true", "chain": "none"}
    settings.update(o.split("=", 1) for o in extra)
    overrides = [f"{k}={v}" for k, v in settings.items()]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=overrides)
    return run_experiment(cfg, out, overrides=overrides, app_dir=app)


def _mean_update(run: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(run / "checkpoint" / "checkpoint.safetensors"))["dgc/prev_aggregate"]


@pytest.mark.slow
def test_simulation_secaggplus_with_a_dropped_miner_matches_plaintext(tmp_path: Path) -> None:
    """digits, mlp, 4 miners, 1 round, miner 0 drops after sharing its keys: SecAgg+ recovers its masks and
    the aggregate equals the plaintext one (same training, same support) within one quantization step."""
    import json

    app = flaky_app(tmp_path / "app")
    summary = _simulate(tmp_path / "data", tmp_path / "sap", app, "secagg=secaggplus")
    rows = json.loads((tmp_path / "sap" / "rounds.json").read_text())
    assert rows[0]["selected"] == 4 and rows[0]["received"] == 3
    assert summary["final_accuracy"] > summary["initial_accuracy"]
    plain = _simulate(tmp_path / "data", tmp_path / "plain", app, "secagg=none")
    assert json.loads((tmp_path / "plain" / "rounds.json").read_text())[0]["received"] == 3
    secure, reference = _mean_update(tmp_path / "sap"), _mean_update(tmp_path / "plain")
    step = CLIP / quantize.max_abs(BITS)  # stochastic rounding differs by at most one step per miner
    assert np.count_nonzero(reference) > 0
    assert np.count_nonzero(secure) > 0.9 * np.count_nonzero(reference)  # the same support (a sum may round to 0)
    assert float(np.max(np.abs(secure - reference))) <= step * (1 + 1e-6)
    assert abs(summary["final_accuracy"] - plain["final_accuracy"]) < 0.02


@pytest.mark.slow
def test_simulation_secaggplus_rounds_finalize_on_the_embedded_chain(tmp_path: Path) -> None:
    """Signed submissions and commitments of SecAgg+ miners go through the chain like any backend's."""
    import json

    summary = _simulate(tmp_path / "data", tmp_path / "run", None, "secagg=secaggplus", "chain=embedded", "num_miners=3")
    rows = json.loads((tmp_path / "run" / "rounds.json").read_text())
    assert rows[0]["chain_status"] == "finalized" and rows[0]["votes_accept"] == "3/3" and rows[0]["reveals"] == 3
    assert summary["chain"]["finalized_rounds"] == 1
    assert rows[0]["upload_bytes_per_miner"] > 8 * rows[0]["k"] / 2  # masked input + SecAgg+ stage replies
