"""flo_server.auth alone: users files, password hashes, rules, and the two protocols' checks."""

from __future__ import annotations

import types

import pytest

from flo_server.auth import (
    FLAME_NAMESPACE,
    NO_PERMISSION,
    NOAUTH,
    NOPERM_KEYS,
    NOT_AUTHENTICATED,
    Rule,
    User,
    Users,
    UsersFileError,
    check_flo,
    check_password,
    check_resp,
    hash_password,
)
from flo_core.errors import Refusal
from flo_core.spec import Op, Reason, Status

pytestmark = pytest.mark.unit

H = hash_password("pw", log2_n=10)


def write(tmp_path, text: str, name: str = "users.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_hash_round_trip_and_salt():
    assert check_password(H, b"pw")
    assert not check_password(H, b"pW")
    assert hash_password("pw", log2_n=10) != H  # salted
    assert not check_password("scrypt$99$8$1$AAAA$AAAA", b"pw")  # out-of-range parameters: no match, no crash
    assert not check_password("md5$x", b"pw")


def test_users_file_toml_and_yaml(tmp_path):
    toml = write(tmp_path, f'''
[users.admin]
password = "{H}"
allow = ["*"]
[users.alice]
passwords = ["{H}"]
[[users.alice.allow]]
namespaces = ["a", "team-*"]
primitives = ["kv"]
rights = ["read", "write"]
keys = ["user:*"]
''')
    users = Users.load(toml)
    assert users.required and users.default is None
    assert users.verify_now("admin", "pw").superuser
    alice = users.verify_now("alice", "pw")
    assert not alice.superuser
    assert alice.allows("write", "kv", "team-x", b"user:1")
    assert not alice.allows("write", "kv", "team-x", b"order:1")
    assert not alice.allows("write", "queue", "a", b"user:1")
    assert not alice.allows("read", "kv", "b", b"user:1")
    assert users.verify_now("alice", "nope") is None
    assert users.verify_now("mallory", "pw") is None
    yaml = write(tmp_path, f"users:\n  bob:\n    password: '{H}'\n    allow: ['*']\n  default:\n    nopass: true\n"
                           f"    allow:\n      - namespaces: [public]\n        rights: [read]\n", "users.yaml")
    users = Users.load(yaml)
    assert users.default is not None and users.default.allows("read", "kv", "public", b"k")
    assert not users.default.allows("write", "kv", "public", b"k")


@pytest.mark.parametrize("text, says", [
    ('[users.a]\npassword = "hunter2"\n', "not a scrypt hash"),
    ('[users.a]\n', "give a password hash or nopass"),
    ('[users.a]\nnopass = true\ncolour = "red"\n', "unknown field"),
    ('[users.a]\nnopass = true\nallow = [{rights = ["fly"]}]\n', "unknown right 'fly'"),
    ('[users.a]\nnopass = true\nallow = [{primitives = ["files"]}]\n', "unknown primitive"),
    ('users = 3\n', "expected a 'users' table"),
    ('[users\n', "not valid TOML"),
])
def test_users_file_refusals(tmp_path, text, says):
    with pytest.raises(UsersFileError, match=says) as e:
        Users.load(write(tmp_path, text))
    assert "hunter2" not in str(e.value)  # a mistyped plain password is never echoed


def test_requirepass_and_open_access():
    users = Users.from_password("s3cret")
    assert users.default is None and users.required
    assert users.verify_now("default", "s3cret").superuser
    open_ = Users.open_access()
    assert not open_.required and open_.default.superuser


def test_flame_register_is_its_own_right():
    writer = User("w", rules=(Rule(rights=frozenset({"read", "write"})),))
    invoker = User("i", rules=(Rule(namespaces=(FLAME_NAMESPACE,), rights=frozenset({"flame:invoke"})),))
    registrar = User("r", rules=(Rule(namespaces=(FLAME_NAMESPACE,), rights=frozenset({"flame:register"})),))
    for u in (writer, invoker):
        assert not u.allows("write", "kv", FLAME_NAMESPACE, b"app/echo")  # write everywhere is not register
        assert u.allows("write", "kv", FLAME_NAMESPACE, b"ssn/1")
        assert u.allows("read", "kv", FLAME_NAMESPACE, b"app/echo")
    assert registrar.allows("write", "kv", FLAME_NAMESPACE, b"app/echo")
    assert not registrar.allows("write", "kv", FLAME_NAMESPACE, b"ssn/1")


def req(op, ns="a", key=b"k", body=b"", value=b""):
    return types.SimpleNamespace(op=op, ns=ns, key=key, body=body, value=value)


def test_check_flo():
    alice = User("alice", rules=(Rule(namespaces=("a",), rights=frozenset({"read"}), keys=(b"user:*",)),))
    with pytest.raises(Refusal) as e:
        check_flo(None, req(Op.KV_GET))
    assert e.value.message == NOT_AUTHENTICATED and e.value.status_code == Status.UNAUTHORIZED
    check_flo(None, req(Op.AUTH))  # AUTH itself needs no user
    check_flo(alice, req(Op.KV_GET, key=b"user:1"))
    check_flo(alice, req(Op.PING))
    for r in (req(Op.KV_GET, key=b"order:1"), req(Op.KV_PUT, key=b"user:1"), req(Op.KV_GET, ns="b", key=b"user:1"),
              req(Op.KV_SCAN, key=b""), req(Op.NAMESPACE_CREATE)):
        with pytest.raises(Refusal) as e:
            check_flo(alice, r)
        assert e.value.message.startswith(NO_PERMISSION) and e.value.reason == Reason.UNCLASSIFIED
    check_flo(alice, req(Op.KV_SCAN, key=b"user:"))  # a prefix inside the pattern
    # MGET: every key in the body is checked, not just the (empty) key field
    body = (2).to_bytes(2, "little") + b"".join(len(k).to_bytes(2, "little") + k for k in (b"user:1", b"order:1"))
    with pytest.raises(Refusal):
        check_flo(alice, req(Op.KV_MGET, key=b"", body=body))


def test_check_resp():
    from flo_server.resp import COMMANDS

    alice = User("alice", rules=(Rule(namespaces=("a",), primitives=frozenset({"kv"}), keys=(b"user:*",),
                                      rights=frozenset({"read", "write"})),))
    c = COMMANDS
    assert check_resp(None, c[b"get"], [b"GET", b"k"], "a") == NOAUTH
    assert check_resp(None, c[b"auth"], [b"AUTH", b"p"], "a") is None
    assert check_resp(alice, c[b"set"], [b"SET", b"user:1", b"v"], "a") is None
    assert check_resp(alice, c[b"mset"], [b"MSET", b"user:1", b"v", b"order:1", b"v"], "a") == NOPERM_KEYS
    assert check_resp(alice, c[b"get"], [b"GET", b"user:1"], "b") == \
        "NOPERM this user has no permissions to run the 'get' command"
    assert check_resp(alice, c[b"lpush"], [b"LPUSH", b"user:1", b"v"], "a").startswith("NOPERM")
    assert check_resp(alice, c[b"flushall"], [b"FLUSHALL"], "a").startswith("NOPERM")
    assert check_resp(alice, c[b"xread"], [b"XREAD", b"STREAMS", b"user:s", b"0"], "a").startswith("NOPERM")
    assert check_resp(alice, c[b"acl"], [b"ACL", b"WHOAMI"], "a") is None
    assert check_resp(alice, c[b"acl"], [b"ACL", b"LIST"], "a").startswith("NOPERM")
