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

__all__ = ["SLOTS", "crc16", "hash_tag", "key_slot", "LOCAL_OPS", "ACROSS_SHARDS", "ACTIONS_KEY", "ACTIONS_SLOT", "ACTION_OPS"]

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


# --- which ops route how: one table for the members' router and for routing clients ---------------

from flo_core.spec import Op  # noqa: E402 - below the pure slot rules, which need nothing

#: Served by the member they reach, whatever their key (a routing client sends them to its home member).
LOCAL_OPS = frozenset({
    Op.PING, Op.SERVER_INFO, Op.AUTH, Op.REPL_FETCH, Op.REPL_SNAPSHOT, Op.CLUSTER_HOP, Op.CLUSTER_SLOTS,
    Op.CLUSTER_MIGRATE, Op.CLUSTER_IMPORT,
    Op.NAMESPACE_CREATE, Op.NAMESPACE_DELETE, Op.NAMESPACE_LIST, Op.NAMESPACE_INFO,
    Op.NAMESPACE_CONFIG_SET, Op.NAMESPACE_CONFIG_GET,
})
#: Not simply "the owner of the key's slot" on a cluster of several shards: a scan or a list covers every
#: shard, a transaction's commit goes where it began, an action run lives where its action does
#: (flo_server.cluster.scatter routes them).
ACROSS_SHARDS = frozenset({
    Op.KV_SCAN, Op.KV_COMMIT_TXN, Op.KV_ROLLBACK_TXN, Op.QUEUE_LIST, Op.STREAM_LIST,
    Op.ACTION_STATUS, Op.ACTION_LIST, Op.ACTION_LIST_RUNS, Op.ACTION_DELETE, Op.ACTION_AWAIT, Op.ACTION_COMPLETE,
    Op.ACTION_FAIL, Op.ACTION_TOUCH, Op.ACTION_RESULT, Op.ACTION_CANCEL, Op.WORKER_REGISTER, Op.WORKER_HEARTBEAT,
    Op.WORKER_DEREGISTER, Op.WORKER_LIST, Op.WORKER_INFO, Op.WORKER_DRAIN, Op.ACTION_REGISTER, Op.ACTION_INVOKE,
})
#: Actions, runs and workers all live on the shard that owns this key's slot (actions are not sharded):
#: only the hash tag is hashed, so it is the same slot in every namespace.
ACTIONS_KEY = b"{flo.actions}"
ACTIONS_SLOT = key_slot(ACTIONS_KEY)
ACTION_OPS = frozenset(op for op in Op if op.name.startswith(("ACTION_", "WORKER_")))
