"""Decoded logs → commands and classified activity, with hand-built logs (no node, no database)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from domain.commands import ConfirmSpend, RecordSettlementTransfer
from domain.events import ChainEvidence
from domain.money import Currency, Money
from listener.classify import Kind, classify, drop_mirrors, spend_cardholders
from listener.decode import SPEND_TOPIC, TRANSFER_TOPIC, Spend, Transfer, decode
from listener.logs import Log, parse_log
from listener.presets import GNOSIS, ZERO, ChainConfig
from listener.translate import Translation, payment_id_for_spend, translate
from tests.support.chain import EURE, ROLES, SAFE, SETTLEMENT, SPENDER, block_hash, word

pytestmark = pytest.mark.unit

EURE_V1 = "0x" + "e1" * 20
USDC = "0x" + "dc" * 20
UNKNOWN_TOKEN = "0x" + "99" * 20
CASHBACK = "0x" + "cb" * 20
REFERRAL = "0x" + "4e" * 20
DISTRIBUTOR = "0x" + "d1" * 20
OPS = "0x" + "0b" * 20
OTHER_SAFE = "0x" + "5b" * 20
STRANGER = "0x" + "77" * 20

EURE_CCY = Currency("EURe", 18)
USDC_CCY = Currency("USDCe", 6)

CONFIG = ChainConfig(
    chain_id=31337,
    settlement=SETTLEMENT,
    spender_modules=frozenset({SPENDER}),
    tokens={EURE: EURE_CCY, EURE_V1: EURE_CCY, USDC: USDC_CCY},
    mirrors={EURE_V1: EURE},
    cashback_senders=frozenset({CASHBACK}),
    referral_senders=frozenset({REFERRAL}),
    ignored_senders=frozenset({DISTRIBUTOR}),
    operational_wallets=frozenset({OPS}),
    match_refunds=True,
)
TIME = datetime(2024, 9, 17, 12, 0, tzinfo=UTC)


def tx(n: int) -> str:
    return "0x" + format(n, "064x")


def raw(block: int, tx_no: int, index: int, address: str, topics: list[str], data: str,
        fork: str = "") -> Log:
    return parse_log({
        "address": address, "topics": topics, "data": data,
        "blockNumber": hex(block), "blockHash": block_hash(block, fork),
        "transactionHash": tx(tx_no), "transactionIndex": "0x0",
        "logIndex": hex(index), "removed": False,
    })


def transfer(token: str, sender: str, recipient: str, value: int, *, block: int = 10,
             tx_no: int = 1, index: int = 0, fork: str = "") -> Log:
    return raw(block, tx_no, index, token,
               [TRANSFER_TOPIC, "0x" + word(sender), "0x" + word(recipient)], "0x" + word(value),
               fork)


def spend_log(amount: int, *, token: str = EURE, module: str = SPENDER, account: str = ROLES,
              receiver: str = SETTLEMENT, block: int = 10, tx_no: int = 1, index: int = 1,
              fork: str = "") -> Log:
    return raw(block, tx_no, index, module, [SPEND_TOPIC],
               "0x" + word(token) + word(account) + word(receiver) + word(amount), fork)


def run(logs: list[Log], config: ChainConfig = CONFIG) -> Translation:
    return translate(logs, config, {log.block_number: TIME for log in logs})


def spends(out: Translation) -> list[ConfirmSpend]:
    return [cmd for cmd in out.commands if isinstance(cmd, ConfirmSpend)]


def transfers(logs: list[Log]) -> list[Transfer]:
    decoded = [decode(log) for log in logs]
    return [t for t in decoded if isinstance(t, Transfer)]


# -- EURe/GBPe v1 mirrors ---------------------------------------------------------------------------
@pytest.mark.parametrize("mirror_first", [False, True], ids=["v2-first", "v1-first"])
def test_a_v1_mirror_of_a_v2_transfer_in_the_same_tx_is_dropped(mirror_first: bool) -> None:
    v2 = transfer(EURE, SAFE, SETTLEMENT, 5 * 10**18, index=2 if mirror_first else 0)
    v1 = transfer(EURE_V1, SAFE, SETTLEMENT, 5 * 10**18, index=0 if mirror_first else 2)
    out = run([v2, v1, spend_log(5 * 10**18, index=3)])
    (act,) = out.activity
    assert act.log == v2
    assert (act.kind, act.token, act.symbol, act.amount, act.cardholder) == (
        Kind.CARD_SPEND, EURE, "EURe", 5 * 10**18, SAFE)
    assert len(spends(out)) == 1
    assert out.rejected == []


def test_a_v1_transfer_alone_is_kept_as_the_tokens() -> None:
    v1 = transfer(EURE_V1, SAFE, SETTLEMENT, 7 * 10**18)
    (act,) = run([v1]).activity
    assert act.log == v1
    assert (act.kind, act.token, act.symbol, act.amount) == (Kind.CARD_SPEND, EURE, "EURe",
                                                             7 * 10**18)


def test_a_v1_transfer_whose_twin_is_in_another_tx_is_kept() -> None:
    v2 = transfer(EURE, SAFE, SETTLEMENT, 5, tx_no=1)
    v1 = transfer(EURE_V1, SAFE, SETTLEMENT, 5, tx_no=2)
    assert [a.log for a in run([v2, v1]).activity] == [v2, v1]


@pytest.mark.parametrize(
    "v1",
    [
        transfer(EURE_V1, SAFE, SETTLEMENT, 6, index=1),  # another amount
        transfer(EURE_V1, OTHER_SAFE, SETTLEMENT, 5, index=1),  # another sender
        transfer(EURE_V1, SAFE, OPS, 5, index=1),  # another recipient
    ],
    ids=["amount", "sender", "recipient"],
)
def test_a_v1_transfer_that_differs_from_the_v2_one_is_not_a_mirror(v1: Log) -> None:
    v2 = transfer(EURE, SAFE, SETTLEMENT, 5, index=0)
    assert [a.log for a in run([v2, v1]).activity] == [v2, v1]


def test_each_v2_transfer_absorbs_one_mirror() -> None:
    a = transfer(EURE, SAFE, SETTLEMENT, 5, index=0)
    a1 = transfer(EURE_V1, SAFE, SETTLEMENT, 5, index=1)
    b = transfer(EURE, SAFE, SETTLEMENT, 5, index=2)
    b1 = transfer(EURE_V1, SAFE, SETTLEMENT, 5, index=3)
    c1 = transfer(EURE_V1, SAFE, SETTLEMENT, 5, index=4)  # a third v1 with no v2 left for it
    assert drop_mirrors(transfers([a, a1, b, b1]), CONFIG) == transfers([a, b])
    assert drop_mirrors(transfers([a, a1, b, b1, c1]), CONFIG) == transfers([a, b, c1])


def test_without_mirrors_configured_nothing_is_dropped() -> None:
    config = dataclasses.replace(CONFIG, mirrors={})
    logs = [transfer(EURE, SAFE, SETTLEMENT, 5), transfer(EURE_V1, SAFE, SETTLEMENT, 5, index=1)]
    assert drop_mirrors(transfers(logs), config) == transfers(logs)


# -- spends ---------------------------------------------------------------------------------------
def test_the_cardholder_of_a_spend_is_the_transfer_sender_not_spend_account() -> None:
    logs = [transfer(EURE, SAFE, SETTLEMENT, 25 * 10**18), spend_log(25 * 10**18, account=ROLES)]
    (cmd,) = spends(run(logs))
    assert cmd.account == SAFE != ROLES
    assert cmd.amount == Money(25 * 10**18, EURE_CCY)
    assert cmd.at == TIME
    spend = logs[1]
    assert cmd.command_id == f"chain:31337:{spend.block_hash}:{spend.log_index}"
    assert cmd.evidence == ChainEvidence(chain_id=31337, block_number=10,
                                         block_hash=spend.block_hash, tx_hash=tx(1), log_index=1)


def test_the_cardholder_is_found_through_a_v1_only_transfer() -> None:
    logs = [transfer(EURE_V1, SAFE, SETTLEMENT, 3), spend_log(3, token=EURE)]
    assert spends(run(logs))[0].account == SAFE


@pytest.mark.parametrize(
    "others",
    [
        [],
        [transfer(EURE, SAFE, SETTLEMENT, 3, tx_no=2)],  # in another transaction
        [transfer(EURE, SAFE, SETTLEMENT, 4)],  # another amount
        [transfer(USDC, SAFE, SETTLEMENT, 3)],  # another token
        [transfer(EURE, SAFE, OPS, 3)],  # not to the Spend's receiver
    ],
    ids=["none", "other-tx", "other-amount", "other-token", "other-recipient"],
)
def test_a_spend_without_its_transfer_is_rejected_not_given_spend_account(
    others: list[Log],
) -> None:
    spend = spend_log(3, index=5)
    out = run([*others, spend])
    assert spends(out) == []
    (rejected,) = out.rejected
    assert rejected.key == f"chain:31337:{spend.key}"
    assert "cardholder unknown" in rejected.reason
    assert ROLES not in str([a.cardholder for a in out.activity])


def test_a_spend_to_another_receiver_than_settlement_is_rejected() -> None:
    logs = [transfer(EURE, SAFE, STRANGER, 3), spend_log(3, receiver=STRANGER)]
    out = run(logs)
    assert spends(out) == []
    (rejected,) = out.rejected
    assert "not the settlement account" in rejected.reason


def test_a_usdc_spend_keeps_six_decimals() -> None:
    logs = [transfer(USDC, SAFE, SETTLEMENT, 12_340_000), spend_log(12_340_000, token=USDC)]
    (cmd,) = spends(run(logs))
    assert cmd.amount == Money(12_340_000, USDC_CCY)
    assert str(cmd.amount) == "12.340000 USDCe"


def test_payment_ids_come_from_the_tx_hash_and_the_spend_ordinal() -> None:
    logs = [
        transfer(EURE, SAFE, SETTLEMENT, 5, index=0),
        spend_log(5, index=1),
        transfer(EURE, OTHER_SAFE, SETTLEMENT, 6, index=2),
        spend_log(6, index=3),
        transfer(EURE, SAFE, SETTLEMENT, 7, tx_no=2, index=4),
        spend_log(7, tx_no=2, index=5),
    ]
    first, second, third = spends(run(logs))
    assert first.payment_id == payment_id_for_spend(31337, tx(1), 0)
    assert second.payment_id == payment_id_for_spend(31337, tx(1), 1)
    assert third.payment_id == payment_id_for_spend(31337, tx(2), 0)
    assert len({first.payment_id, second.payment_id, third.payment_id}) == 3
    assert (first.account, second.account, third.account) == (SAFE, OTHER_SAFE, SAFE)
    # The ordinal follows the log order in the block, whatever order the logs arrive in.
    assert [c.payment_id for c in spends(run(list(reversed(logs))))] == [
        first.payment_id, second.payment_id, third.payment_id]


def test_equal_spends_from_two_safes_in_one_tx_each_get_their_own_cardholder() -> None:
    logs = [
        transfer(EURE, SAFE, SETTLEMENT, 5, index=0),
        spend_log(5, index=1),
        transfer(EURE, OTHER_SAFE, SETTLEMENT, 5, index=2),
        spend_log(5, index=3),
    ]
    first, second = spends(run(logs))
    assert (first.account, second.account) == (SAFE, OTHER_SAFE)
    assert (first.payment_id, second.payment_id) == (
        payment_id_for_spend(31337, tx(1), 0), payment_id_for_spend(31337, tx(1), 1))


def test_a_transfer_after_the_spend_is_not_its_transfer() -> None:
    """The module transfers first and then emits Spend: a later Transfer belongs to another."""
    logs = [spend_log(5, index=0), transfer(EURE, SAFE, SETTLEMENT, 5, index=1)]
    out = run(logs)
    assert spends(out) == []
    assert "cardholder unknown" in out.rejected[0].reason


def test_a_spend_moved_into_another_block_by_a_reorg_keeps_its_payment_id() -> None:
    before = spends(run([transfer(EURE, SAFE, SETTLEMENT, 5, index=0), spend_log(5, index=1)]))
    after = spends(run([transfer(EURE, SAFE, SETTLEMENT, 5, block=12, index=7, fork="b"),
                        spend_log(5, block=12, index=8, fork="b")]))
    assert before[0].payment_id == after[0].payment_id
    assert before[0].command_id != after[0].command_id  # another log: another command
    assert before[0].evidence != after[0].evidence


def test_payment_ids_differ_per_chain() -> None:
    assert payment_id_for_spend(100, tx(1)) != payment_id_for_spend(31337, tx(1))
    assert payment_id_for_spend(100, tx(1)) == payment_id_for_spend(100, tx(1), 0)


@pytest.mark.parametrize(
    ("spend", "what"),
    [
        (spend_log(5, module="0x" + "66" * 20), "0x" + "66" * 20),
        (spend_log(5, token=UNKNOWN_TOKEN), UNKNOWN_TOKEN),
    ],
    ids=["spender", "token"],
)
def test_a_spend_of_an_unconfigured_spender_or_token_is_rejected(spend: Log, what: str) -> None:
    out = run([spend])
    assert out.commands == []
    (rejected,) = out.rejected
    assert rejected.key == f"chain:31337:{spend.key}"
    assert what in rejected.reason and "not configured" in rejected.reason
    assert rejected.raw["logIndex"] == hex(spend.log_index)
    assert rejected.raw["transactionHash"] == spend.tx_hash


def test_an_undecodable_log_is_rejected_with_its_reason() -> None:
    bad = raw(10, 1, 0, EURE, [TRANSFER_TOPIC, "0x" + word(SAFE)], "0x" + word(1))
    out = run([bad, transfer(EURE, SAFE, STRANGER, 1, index=1)])
    (rejected,) = out.rejected
    assert "expected 3 topics" in rejected.reason
    assert len(out.activity) == 1


def test_a_transfer_of_an_unconfigured_token_is_ignored() -> None:
    out = run([transfer(UNKNOWN_TOKEN, SAFE, SETTLEMENT, 5)])
    assert (out.activity, out.commands, out.rejected) == ([], [], [])


# -- classification -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sender", "recipient", "kind", "cardholder"),
    [
        (SAFE, SETTLEMENT, Kind.CARD_SPEND, SAFE),
        (SETTLEMENT, SAFE, Kind.REFUND, SAFE),
        (CASHBACK, SAFE, Kind.CASHBACK, SAFE),
        (REFERRAL, SAFE, Kind.REFERRAL, SAFE),
        (ZERO, SAFE, Kind.TOP_UP, None),
        (SAFE, ZERO, Kind.OFF_RAMP, None),
        (SAFE, STRANGER, Kind.OTHER, None),
        (OPS, SETTLEMENT, Kind.OTHER, None),  # issuer treasury moves are neither spend nor refund
        (SETTLEMENT, OPS, Kind.OTHER, None),
        (ZERO, SETTLEMENT, Kind.OTHER, None),  # minted straight into settlement
        (SETTLEMENT, ZERO, Kind.OTHER, None),  # burned from settlement
        (DISTRIBUTOR, SAFE, Kind.OTHER, None),  # migration distributor: not a refund
    ],
    ids=["spend", "refund", "cashback", "referral", "top-up", "off-ramp", "other",
         "ops-in", "ops-out", "mint-to-settlement", "burn-from-settlement", "distributor"],
)
def test_classification(sender: str, recipient: str, kind: Kind, cardholder: str | None) -> None:
    log = transfer(EURE, sender, recipient, 9)
    (act,) = run([log]).activity
    assert (act.kind, act.cardholder, act.sender, act.recipient, act.amount) == (
        kind, cardholder, sender, recipient, 9)
    assert act.block_time == TIME


GNOSIS_SAFE = "0x" + "ab" * 20
GNOSIS_EURE = "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
GNO = "0x9c58bacc331c9aa871afd802db6379a98e80cedb"


@pytest.mark.parametrize(
    ("token", "sender", "recipient", "kind"),
    [
        (GNOSIS_EURE, GNOSIS_SAFE, GNOSIS.settlement, Kind.CARD_SPEND),
        (GNOSIS_EURE, GNOSIS.settlement, GNOSIS_SAFE, Kind.REFUND),
        (GNOSIS_EURE, "0x2b33c1ab1fcd2b5f29bb7306ca5f1919ae06fa39", GNOSIS.settlement,
         Kind.OTHER),
        (GNOSIS_EURE, GNOSIS.settlement, "0x9995bf91e32dce9c3d4608334451562b3ef8cc7f",
         Kind.OTHER),
        (GNOSIS_EURE, "0xbb897a566146fdb959ddde80ce00c50b4f5be03f", GNOSIS_SAFE, Kind.OTHER),
        (GNO, "0xcdf50be9061086e2ecfe6e4a1bf9164d43568eec", GNOSIS_SAFE, Kind.CASHBACK),
        (GNO, "0xb2e7803ce9aa69ca0f82256ff1ec5c9983608e04", GNOSIS_SAFE, Kind.REFERRAL),
    ],
    ids=["spend", "refund", "ops-wallet-in", "ops-wallet-out", "migration-distributor",
         "cashback", "referral"],
)
def test_classification_with_the_gnosis_preset(
    token: str, sender: str, recipient: str, kind: Kind
) -> None:
    (act,) = classify(transfers([transfer(token, sender, recipient, 1)]), GNOSIS)
    assert act.kind is kind
    assert GNOSIS.operational_wallets and GNOSIS.ignored_senders  # the preset names them


def test_the_gnosis_preset_does_not_match_refunds() -> None:
    log = transfer(GNOSIS_EURE, GNOSIS.settlement, GNOSIS_SAFE, 1)
    out = run([log], GNOSIS)
    assert [a.kind for a in out.activity] == [Kind.REFUND]
    assert out.commands == []


# -- refunds as commands --------------------------------------------------------------------------
def test_a_refund_becomes_a_settlement_transfer_when_refunds_are_matched() -> None:
    refund = transfer(EURE_V1, SETTLEMENT, SAFE, 3 * 10**18, block=11, index=4)
    out = run([refund])
    (cmd,) = out.commands
    assert isinstance(cmd, RecordSettlementTransfer)
    assert (cmd.recipient, cmd.token, cmd.amount, cmd.at) == (
        SAFE, EURE, Money(3 * 10**18, EURE_CCY), TIME)
    assert cmd.command_id == f"chain:31337:{refund.key}"
    assert (cmd.evidence.tx_hash, cmd.evidence.log_index, cmd.evidence.block_number) == (
        refund.tx_hash, 4, 11)


def test_refunds_are_not_commands_when_refunds_are_not_matched() -> None:
    config = dataclasses.replace(CONFIG, match_refunds=False)
    out = run([transfer(EURE, SETTLEMENT, SAFE, 3)], config)
    assert out.commands == []
    assert [a.kind for a in out.activity] == [Kind.REFUND]


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [(SETTLEMENT, OPS), (SETTLEMENT, ZERO), (CASHBACK, SAFE), (SAFE, SETTLEMENT)],
)
def test_only_refunds_become_settlement_transfers(sender: str, recipient: str) -> None:
    out = run([transfer(EURE, sender, recipient, 3)])
    assert not any(isinstance(cmd, RecordSettlementTransfer) for cmd in out.commands)


def test_commands_come_out_in_chain_order() -> None:
    logs = [
        transfer(EURE, SETTLEMENT, SAFE, 1, block=12, index=0, tx_no=5),
        transfer(EURE, SAFE, SETTLEMENT, 2, block=11, index=3, tx_no=4),
        spend_log(2, block=11, index=4, tx_no=4),
        transfer(EURE, SETTLEMENT, SAFE, 1, block=11, index=1, tx_no=3),
    ]
    out = run(logs)
    assert [(cmd.evidence.block_number, cmd.evidence.log_index) for cmd in out.commands] == [
        (11, 1), (11, 4), (12, 0)]
    assert [type(cmd) for cmd in out.commands] == [
        RecordSettlementTransfer, ConfirmSpend, RecordSettlementTransfer]


def _scan_cardholders(spends: list[Spend], transfers: list[Transfer],
                      config: ChainConfig) -> list[str | None]:
    """The reference: every Spend scans its transaction's transfers for the nearest matching one
    before it not taken yet (what `spend_cardholders` did before it indexed them)."""
    taken: set[tuple[str, int]] = set()
    out: list[str | None] = []
    for spend in spends:
        best: Transfer | None = None
        for t in transfers:
            if (t.log.tx_hash == spend.log.tx_hash and t.log.log_index < spend.log.log_index
                    and (t.log.block_hash, t.log.log_index) not in taken
                    and config.canonical(t.token) == config.canonical(spend.asset)
                    and t.recipient == spend.receiver and t.value == spend.amount
                    and (best is None or t.log.log_index > best.log.log_index)):
                best = t
        if best is not None:
            taken.add((best.log.block_hash, best.log.log_index))
        out.append(None if best is None else best.sender)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_spend_cardholders_indexed_equals_the_scan_of_every_transfer(seed: int) -> None:
    """Random transactions of interleaved transfers and spends — equal amounts from several
    Safes, v1 and v2 token addresses, other receivers, spends with no transfer — pair as the
    quadratic scan did."""
    import random

    rng = random.Random(seed)
    safes = [f"0x{i:040x}" for i in range(1, 6)]
    tokens = [*next(iter(GNOSIS.mirrors.items())), EURE]  # a v1 frontend, its v2 token, another
    transfers: list[Transfer] = []
    spends: list[Spend] = []
    index = 0  # log indexes run through the block
    for tx in range(rng.randint(1, 4)):
        tx_hash = "0x" + f"{seed:032x}{tx:032x}"
        for _ in range(rng.randint(1, 40)):
            log = Log(EURE, (), "0x", 10, block_hash(10), tx_hash, tx, index)
            index += 1
            amount = rng.choice((100, 200, 300))
            receiver = SETTLEMENT if rng.random() < 0.9 else safes[0]
            if rng.random() < 0.55:
                transfers.append(Transfer(log, rng.choice(tokens), rng.choice(safes), receiver,
                                          amount))
            else:
                spends.append(Spend(log, SPENDER, rng.choice(tokens), ROLES, receiver, amount))
    rng.shuffle(transfers)
    assert spend_cardholders(spends, transfers, GNOSIS) == \
        _scan_cardholders(spends, transfers, GNOSIS)
