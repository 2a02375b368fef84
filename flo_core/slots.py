"""Cluster slots: which of the 16384 slots a key lives in, exactly as Redis Cluster computes it.

``slot = CRC16(routing key) mod 16384`` with CRC-16/XMODEM (polynomial 0x1021, init 0), and the
hash-tag rule: when the key holds a ``{...}`` with at least one byte between the first ``{`` and
the next ``}``, only those bytes are hashed, so ``{user1}.cart`` and ``{user1}.orders`` share a
slot (and so a shard: what a transaction over several keys needs).

A Flo namespace is part of the key for routing: keys of the ``default`` namespace (the only one
RESP's database 0 sees) route by the key alone, so ``redis.cluster.RedisCluster`` and
``redis-cli -c`` agree with us; keys of any other namespace route by ``<ns>:<key>``, which keeps
namespaces apart unless a hash tag pins them together.

>>> key_slot(b"foo"), key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
(12182, True)
>>> key_slot(b"foo", "tenant-a") == key_slot(b"tenant-a:foo")
True
"""

from __future__ import annotations

from binascii import crc_hqx

__all__ = ["SLOTS", "crc16", "hash_tag", "key_slot"]

#: Slots of a cluster (Redis Cluster's number: the slot map fits in 2 KiB as a bitmap).
SLOTS = 16384

DEFAULT_NAMESPACE = "default"


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM of ``data`` (Redis's ``crc16``): ``binascii.crc_hqx`` with init 0 is exactly it, in C.

    >>> hex(crc16(b"123456789"))
    '0x31c3'
    """
    return crc_hqx(data, 0)


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that is hashed: the bytes inside the first non-empty ``{...}``, else all of it.

    >>> hash_tag(b"{a}b"), hash_tag(b"a{}b"), hash_tag(b"a{b"), hash_tag(b"x{y}{z}")
    (b'a', b'a{}b', b'a{b', b'y')
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def key_slot(key: bytes | str, namespace: str = DEFAULT_NAMESPACE) -> int:
    """The slot of ``key`` in ``namespace`` (see the module's docstring for the namespace rule)."""
    if isinstance(key, str):
        key = key.encode()
    if namespace and namespace != DEFAULT_NAMESPACE:
        key = namespace.encode() + b":" + key
    return crc16(hash_tag(key)) & (SLOTS - 1)
