"""The miner's half of ``secagg=secaggplus`` on Flower's Message API (aggregator.secaggplus does the crypto).

Messages from fl_server.secaggplus_round (all carry the round plan's ``mm-*`` keys and the training
config in their ``config`` ConfigRecord, plus ``sap-*`` keys):

- ``query.secaggplus`` with ``sap-stage = "advertise"``: fresh X25519 keys for the attempt, signed with
  the miner's Ethereum key -> reply ``secaggplus`` ConfigRecord ``{"sap-advert": bytes}``;
- ``sap-stage = "share"`` with ``sap-roster``: check the roster, Shamir-share the self-mask seed and the
  mask secret among the neighbours -> ``{"sap-shares": bytes}`` (AES-GCM, one per neighbour);
- the ``train`` message of the round with a ``secaggplus`` ConfigRecord (``sap-u2``, ``sap-incoming``):
  the usual DGC/quantize/commit/sign submission whose ciphertext is the masked input
  (:func:`masker`, passed to ``fl_client.secure_update.build_submission``);
- ``sap-stage = "unmask"`` with ``sap-survivors``: the shares for the survivors' self masks and the
  dropped miners' mask secrets -> ``{"sap-unmask": bytes}``.

The per-attempt secrets live in ``context.state`` (the SuperNode's memory for this run), never on the
wire. Any refusal (``UnmaskRefused``, a bad roster or share) raises, so Flower returns an error reply and
the server sees this miner as dropped for the stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from aggregator import secaggplus as sp
from aggregator.protocol import ProtocolError, RoundPlan
from aggregator.task_spec import TaskSpec

STATE_KEY = "secaggplus"
REPLY_KEY = "secaggplus"
STAGE = "sap-stage"


def tag_of(plan: RoundPlan) -> sp.RoundTag:
    """What the attempt's keys, shares and masks are bound to (the server computes the same)."""
    return sp.tag_of(plan)


def config_of(plan: RoundPlan, config: Any) -> sp.SecAggPlusConfig:
    """The backend settings of the message (the miner enforces the safety floors in ``params_for``)."""
    floor = 2
    if plan.task_spec:  # pinned by the caller to a spec the miner trusts: its threshold t binds the survivors
        floor = max(floor, TaskSpec.from_json(plan.task_spec).threshold)
    try:
        return sp.SecAggPlusConfig(
            bits=plan.bits,
            degree_factor=float(config["sap-degree-factor"]),
            threshold_fraction=float(config["sap-threshold-fraction"]),
            min_survivors_fraction=float(config["sap-min-survivors-fraction"]),
            min_survivors=floor,
        )
    except KeyError as exc:
        raise ProtocolError(f"secaggplus message lacks {exc}") from exc


def _load(context: Context, tag: sp.RoundTag) -> sp.MinerSession:
    if STATE_KEY not in context.state.config_records:
        raise sp.UnmaskRefused("no secaggplus session: this miner did not advertise keys for the attempt")
    session = sp.MinerSession.from_bytes(bytes(context.state.config_records[STATE_KEY]["session"]))  # type: ignore[arg-type]
    if session.tag != tag:
        raise sp.UnmaskRefused(f"the session is for attempt {session.tag.attempt}, the message for {tag.attempt}")
    return session


def _save(context: Context, session: sp.MinerSession) -> None:
    record = ConfigRecord({"session": session.to_bytes(), "last-attempt": session.tag.attempt})
    context.state.config_records[STATE_KEY] = record


def handle(msg: Message, context: Context, plan: RoundPlan, eth_key: Callable[[], bytes]) -> Message:
    """Answer one ``query.secaggplus`` stage message. ``plan``: the message's round plan, already
    checked by the caller (pinned to the trusted task; at ``advertise`` also an epoch above the last
    one this miner encrypted for); ``eth_key``: loads the miner's Ethereum key (used at ``advertise``)."""
    config = msg.content["config"]
    if plan.backend != "secaggplus":
        raise ProtocolError(f"secaggplus stage for a {plan.backend!r} round")
    tag = tag_of(plan)
    stage = str(config[STAGE])
    if stage == "advertise":
        previous = context.state.config_records.get(STATE_KEY)
        if previous is not None and int(previous["last-attempt"]) >= tag.attempt:  # type: ignore[arg-type]
            raise sp.UnmaskRefused(f"attempt {tag.attempt} is not above the last one ({previous['last-attempt']})")
        session, advert = sp.advertise(tag, eth_key(), config_of(plan, config))
        _save(context, session)
        out: dict[str, Any] = {"sap-advert": advert.to_bytes()}
    elif stage == "share":
        session = _load(context, tag)
        shares = sp.share_keys(session, sp.roster_from_bytes(bytes(config["sap-roster"])))  # type: ignore[arg-type]
        _save(context, session)
        out = {"sap-shares": sp.shares_to_bytes(shares)}
    elif stage == "unmask":
        session = _load(context, tag)
        reply = sp.unmask(session, sp.indices_from_bytes(bytes(config["sap-survivors"])))  # type: ignore[arg-type]
        _save(context, session)
        out = {"sap-unmask": reply.to_bytes()}
    else:
        raise ProtocolError(f"unknown secaggplus stage {stage!r}")
    return Message(content=RecordDict({REPLY_KEY: ConfigRecord(out)}), reply_to=msg)


def masker(msg: Message, context: Context, plan: RoundPlan) -> Callable[[np.ndarray, np.ndarray], bytes]:
    """Stage 3: ``encrypt(q, indices) -> bytes`` for ``build_submission``: the masked input of ``q``
    over the support (the neighbours' shares come with the train message)."""
    tag = tag_of(plan)
    if REPLY_KEY not in msg.content.config_records:
        raise ProtocolError("a secaggplus train message without the secaggplus record (U2 and shares)")
    record = msg.content[REPLY_KEY]

    def encrypt(q: np.ndarray, indices: np.ndarray) -> bytes:
        session = _load(context, tag)
        y = sp.mask_input(
            session,
            sp.indices_from_bytes(bytes(record["sap-u2"])),  # type: ignore[arg-type]
            sp.shares_from_bytes(bytes(record["sap-incoming"])),  # type: ignore[arg-type]
            np.asarray(q),
            np.asarray(indices),
        )
        _save(context, session)
        return sp.masked_to_bytes(y)

    return encrypt
