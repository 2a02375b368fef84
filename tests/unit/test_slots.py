"""flo_core.slots agrees with redis-py's key_slot (the one RedisCluster routes by) on every kind of key."""

import random

from redis.crc import key_slot as redis_key_slot

from flo_core.slots import SLOTS, crc16, hash_tag, key_slot


def test_known_vectors():
    assert crc16(b"123456789") == 0x31C3  # CRC-16/XMODEM check value
    assert key_slot(b"foo") == 12182 and key_slot(b"bar") == 5061
    assert key_slot(b"") == 0


def test_hash_tags():
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # the first {...} is empty: the whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"


def test_matches_redis_py_on_random_keys():
    rnd = random.Random(7)
    alphabet = b"ab{}xyz\x00\xff"
    for _ in range(5000):
        key = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 12)))
        assert key_slot(key) == redis_key_slot(key), key
        assert 0 <= key_slot(key) < SLOTS


def test_namespace_is_part_of_the_routing_key():
    assert key_slot("k", "default") == key_slot("k")
    assert key_slot("k", "a") == redis_key_slot(b"a:k")
    assert key_slot("{t}k", "a") == key_slot("{t}j", "b") == key_slot("t")  # a hash tag pins namespaces together
