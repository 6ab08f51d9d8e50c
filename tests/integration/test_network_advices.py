"""The network advice adapter over real HTTP against the simulator's recorder: signed, kept by
its idempotency key, and every answer mapped to what the saga should do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.handlers.effects import PartyUnavailable
from cardpay.handlers.network_advices import AdviceRefused, ReversalAdvice, reversal_advice
from cardpay.handlers.sagas import EffectRequest
from cardpay.outbound.network import HttpNetworkAdvices
from sagas.engine.retry import FailureClass

pytestmark = pytest.mark.integration
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + "c2VjcmV0LW9mLXNvbWVvbmUtZWxzZS0xMjM0NTY="


def advice(key: str = "p1:1:undo:send_reversal_advice") -> ReversalAdvice:
    return ReversalAdvice(key, "p1", 25 * 10**18, "EURe", 18, "spend not seen")


@pytest.fixture
def recorder() -> Iterator[AdviceRecorder]:
    with AdviceRecorder(SECRET) as r:
        yield r


def test_an_advice_is_signed_and_kept_once_by_its_key(recorder: AdviceRecorder) -> None:
    client = HttpNetworkAdvices(recorder.url, SECRET)
    first, again = client.send(advice()), client.send(advice())
    assert first == again
    assert recorder.deliveries == 2 and list(recorder.advices) == [advice().idempotency_key]
    kept = recorder.advices[advice().idempotency_key]
    assert (kept["authorization_id"], kept["amount"], kept["currency"]) == (
        "p1", str(25 * 10**18), "EURe")
    assert SECRET not in repr(client)


def test_a_wrong_secret_is_refused_for_good(recorder: AdviceRecorder) -> None:
    with pytest.raises(AdviceRefused, match="401"):
        HttpNetworkAdvices(recorder.url, OTHER).send(advice())
    assert recorder.refused_signatures == 1 and recorder.advices == {}


def test_an_unavailable_or_unreachable_network_is_temporary(recorder: AdviceRecorder) -> None:
    recorder.failing = 503
    with pytest.raises(PartyUnavailable, match="503"):
        HttpNetworkAdvices(recorder.url, SECRET).send(advice())
    url = recorder.url
    recorder.stop()
    with pytest.raises(PartyUnavailable, match="did not answer"):
        HttpNetworkAdvices(url, SECRET, timeout_s=1).send(advice())


def test_the_performer_maps_the_saga_payload_and_a_refusal(recorder: AdviceRecorder) -> None:
    perform = reversal_advice(HttpNetworkAdvices(recorder.url, SECRET))
    request = EffectRequest("p2:1:undo:send_reversal_advice", "card_payment", "p2",
                            "send_reversal_advice",
                            {"payment_id": "p2", "amount": 7, "currency": "EURe",
                             "decimals": 18}, 1)
    answer = perform(request)
    assert answer.succeeded and recorder.reversed_authorizations() == ["p2"]
    recorder.failing = 422
    refused = perform(request)
    assert (refused.succeeded, refused.failure) == (False, FailureClass.HARD)
