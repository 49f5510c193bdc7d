import re
import threading
import time

from moonborn_site.ids import encode_ulid, new_id, new_message_id

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def decode(symbols: str) -> int:
    value = 0
    for symbol in symbols:
        value = value * 32 + CROCKFORD.index(symbol)
    return value


def test_encode_ulid_writes_the_specs_symbols():
    assert encode_ulid(0) == "0" * 26
    # The largest ULID (ULID spec, "Overflow Errors when Parsing Base32 Strings").
    assert encode_ulid(2**128 - 1) == "7" + "z" * 25
    # The spec's example timestamp 1469918176385 → 01ARYZ6S41.
    assert encode_ulid(1469918176385 << 80)[:10] == "01aryz6s41"
    assert encode_ulid(1469918176385 << 80)[10:] == "0" * 16
    value = 0x0123456789ABCDEF0123456789ABCDEF
    assert decode(encode_ulid(value)) == value


def test_new_id_is_a_prefixed_ulid_of_now():
    before = time.time_ns() // 1_000_000
    made = new_message_id()
    after = time.time_ns() // 1_000_000
    assert re.fullmatch(r"msg_[0-9abcdefghjkmnpqrstvwxyz]{26}", made)
    assert before <= decode(made[4:]) >> 80 <= after


def test_new_ids_only_grow_within_and_across_threads():
    made: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        for _ in range(5000):
            into.append(new_id("x"))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ids in made:
        assert ids == sorted(ids)
    every = [made_id for ids in made for made_id in ids]
    assert len(set(every)) == 20000
