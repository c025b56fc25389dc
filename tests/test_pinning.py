"""Read-your-writes state: signed tokens, scopes and use_primary(), without a database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from django.core import signing

from django_poolkit import pinning, use_primary
from django_poolkit.pinning import PinToken, decode_tokens, encode_tokens

from .helpers.threads import fan_out


@pytest.fixture(autouse=True)
def _no_pins() -> Iterator[None]:
    """Every test starts and ends with no pin state in pytest's (shared) context."""
    pinning.clear()
    yield
    pinning.clear()


def test_lsn_text_round_trips():
    assert pinning.parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert pinning.format_lsn(pinning.parse_lsn("16/B374D848")) == "16/B374D848"
    assert pinning.format_lsn(0) == "0/0"


def test_tokens_round_trip():
    expires = time.time() + 10
    value = encode_tokens({"main": PinToken(123456, expires), "events": PinToken(None, expires)})
    assert decode_tokens(value, max_age=15) == {
        "main": PinToken(123456, round(expires, 3)), "events": PinToken(None, round(expires, 3))}


@pytest.mark.parametrize("value", [
    None, "", "garbage", "main:0/16B3740",
    # A payload a client wrote itself, unsigned:
    '{"main": [null, 99999999999]}',
    # Signed with another salt (a value signed by another part of the site):
    signing.dumps({"main": [None, 99999999999]}, salt="something.else"),
    # Signed with another key:
    signing.dumps({"main": [None, 99999999999]}, key="not-the-secret-key",
                  salt=pinning.SALT),
])
def test_anything_not_signed_by_us_is_ignored(value):
    assert decode_tokens(value, max_age=15) == {}


def test_a_tampered_token_is_ignored():
    value = encode_tokens({"main": PinToken(None, time.time() + 10)})
    payload, signature = value.rsplit(":", 1)
    tampered = f"{payload}:{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert decode_tokens(tampered, max_age=15) == {}


def test_expired_pins_are_dropped_and_future_ones_capped():
    now = time.time()
    value = encode_tokens({"old": PinToken(1, now - 1), "far": PinToken(2, now + 3600)})
    found = decode_tokens(value, max_age=15)
    assert list(found) == ["far"]
    assert found["far"].expires <= time.time() + 15


def test_an_old_signature_is_ignored():
    value = encode_tokens({"main": PinToken(1, time.time() + 3600)})
    assert decode_tokens(value, max_age=15) != {}
    # max_age bounds the signature's age: 0.001 s is long past by now.
    time.sleep(0.01)
    assert decode_tokens(value, max_age=0.001) == {}


def test_use_primary_as_context_manager_and_decorators():
    assert not pinning.primary_forced()
    with use_primary():
        assert pinning.primary_forced()
        with use_primary():
            assert pinning.primary_forced()
        assert pinning.primary_forced()
    assert not pinning.primary_forced()

    @use_primary
    def bare() -> bool:
        return pinning.primary_forced()

    @use_primary()
    def called() -> bool:
        return pinning.primary_forced()

    assert bare()
    assert called()
    assert bare.__name__ == "bare"
    assert not pinning.primary_forced()


async def test_use_primary_async_forms_and_task_isolation():
    @use_primary
    async def forced() -> bool:
        await asyncio.sleep(0)
        return pinning.primary_forced()

    async def plain() -> bool:
        await asyncio.sleep(0.01)
        return pinning.primary_forced()

    async with use_primary():
        assert pinning.primary_forced()
    # Two tasks at once: one forced, one not; neither leaks into the other.
    assert await asyncio.gather(forced(), plain()) == [True, False]
    assert not pinning.primary_forced()


def test_use_primary_is_per_thread():
    with use_primary():
        seen = fan_out(lambda _: pinning.primary_forced(), 1)
    assert seen == [False]


def test_a_scope_pins_what_it_wrote_until_it_ends():
    assert pinning.current_scope() is None
    with pinning.scope(max_age=15) as found:
        assert pinning.current_scope() is found
        assert not found.wrote("main", 15)
        pinning.note_write("main")
        assert found.wrote("main", 15)
        assert not found.wrote("events", 15)
    assert pinning.current_scope() is None


def test_a_scope_reads_a_signed_token():
    value = encode_tokens({"main": PinToken(42, time.time() + 10)})
    with pinning.scope(value, max_age=15) as found:
        token = found.token("main")
        assert token is not None
        assert token.lsn == 42
    with pinning.scope("forged", max_age=15) as found:
        assert found.token("main") is None


def test_a_write_outside_any_scope_pins_for_pin_seconds_only():
    def in_fresh_context() -> tuple[bool, bool]:
        pinning.note_write("main")
        found = pinning.current_scope()
        assert found is not None
        assert found.implicit
        found.written["main"] -= 20  # as if the write happened 20 s ago
        return found.wrote("main", 30), found.wrote("main", 15)

    result = fan_out(lambda _: in_fresh_context(), 1)
    assert result == [(True, False)]


def test_outgoing_tokens_merge_old_pins_and_new_writes():
    old = PinToken(7, time.time() + 5)
    with pinning.scope(encode_tokens({"events": old}), max_age=15) as found:
        pinning.note_write("main")
        tokens = found.outgoing({"main": 99}, 15)
    assert tokens["events"].lsn == 7
    assert tokens["main"].lsn == 99
    assert tokens["main"].expires > tokens["events"].expires


async def test_a_scope_is_shared_with_sync_code_run_from_async():
    from asgiref.sync import sync_to_async

    with pinning.scope(max_age=15) as found:
        await sync_to_async(pinning.note_write)("main")
        assert found.wrote("main", 15)
