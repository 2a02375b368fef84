"""RESP ``CLUSTER`` (KEYSLOT, SLOTS, SHARDS, NODES, INFO, MYID): what ``redis.cluster.RedisCluster`` and
``redis-cli -c`` read to find each slot's node, in Redis Cluster's reply shapes.

Node ids are the SHA-1 of a member's name (Redis's are 40 hex characters too); each shard's leader
is its master, the other live members its replicas.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flo_core.resp import add_bulk, add_error, add_int, add_value
from flo_core.slots import SLOTS, key_slot
from flo_server.resp import RespSession, command

DISABLED = "ERR This instance has cluster support disabled"


def node_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _shards(node: Any) -> list[dict]:
    """Per shard: its slot ranges, its master and its replicas as (name, host, port)."""
    out = []
    for shard in range(node.slot_map.shards):
        lead = node.leaders.get(shard)
        members = node.members.get(shard, {})
        master = None if lead is None else (lead[0], *_hostport(lead[1]))
        replicas = [(name, *_hostport(m["advertise"])) for name, m in sorted(members.items())
                    if m.get("advertise") and (lead is None or name != lead[0])]
        out.append({"shard": shard, "slots": node.slot_map.slots_of(shard), "master": master, "replicas": replicas})
    return out


@command("cluster", -2, "", group="server")
def cmd_cluster(s: RespSession, argv: list, out: bytearray) -> None:
    """CLUSTER KEYSLOT key | SLOTS | SHARDS | NODES | INFO | MYID"""
    sub = argv[1].upper()
    if sub == b"KEYSLOT":
        if len(argv) != 3:
            add_error(out, "ERR wrong number of arguments for 'cluster|keyslot' command")
            return
        add_int(out, key_slot(argv[2]))
        return
    node = s.srv.cluster
    if node is None or node.slot_map is None:
        add_error(out, DISABLED)
        return
    resp3 = s.resp3
    if sub == b"MYID":
        add_bulk(out, node_id(node.node).encode())
    elif sub == b"SLOTS":
        rows = []
        for sh in _shards(node):
            if sh["master"] is None:
                continue
            nodes = [[h.encode(), p, node_id(n).encode()] for n, h, p in [sh["master"], *sh["replicas"]]]
            rows += [[first, last, *nodes] for first, last in sh["slots"]]
        add_value(out, rows, resp3)
    elif sub == b"SHARDS":
        rows = []
        for sh in _shards(node):
            nodes = []
            for role, (n, h, p) in [("master", sh["master"])] * (sh["master"] is not None) + \
                    [("replica", r) for r in sh["replicas"]]:
                nodes.append({b"id": node_id(n).encode(), b"port": p, b"ip": h.encode(), b"endpoint": h.encode(),
                              b"role": role.encode(), b"replication-offset": 0, b"health": b"online"})
            rows.append({b"slots": [x for r in sh["slots"] for x in r], b"nodes": nodes})
        add_value(out, rows, resp3)
    elif sub == b"NODES":
        lines = []
        for sh in _shards(node):
            if sh["master"] is not None:
                n, h, p = sh["master"]
                flags = "myself,master" if n == node.node else "master"
                ranges = " ".join(f"{f}-{l}" if f != l else str(f) for f, l in sh["slots"])
                lines.append(f"{node_id(n)} {h}:{p}@{p} {flags} - 0 0 {sh['shard']} connected {ranges}")
            for n, h, p in sh["replicas"]:
                flags = "myself,slave" if n == node.node else "slave"
                master = node_id(sh["master"][0]) if sh["master"] else "-"
                lines.append(f"{node_id(n)} {h}:{p}@{p} {flags} {master} 0 0 {sh['shard']} connected")
        add_bulk(out, ("\n".join(lines) + "\n").encode())
    elif sub == b"INFO":
        shards = _shards(node)
        ok = all(sh["master"] is not None for sh in shards)
        known = sum((sh["master"] is not None) + len(sh["replicas"]) for sh in shards)
        text = (f"cluster_enabled:1\r\ncluster_state:{'ok' if ok else 'fail'}\r\ncluster_slots_assigned:{SLOTS}\r\n"
                f"cluster_slots_ok:{sum(node.slot_map.count_of(sh['shard']) for sh in shards if sh['master'])}\r\n"
                f"cluster_known_nodes:{known}\r\ncluster_size:{len(shards)}\r\n"
                f"cluster_current_epoch:{node.epoch}\r\ncluster_my_epoch:{node.epoch}\r\n")
        add_bulk(out, text.encode())
    else:
        add_error(out, f"ERR unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. Try CLUSTER HELP.")
