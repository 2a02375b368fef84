"""``flmctl migrate``: move Flame's metadata (applications, sessions, tasks) into this flo-server.

Flame 0.6's ``flmctl migrate --url sqlite://… --sql <dir>`` creates its session
manager's SQLite database and applies the schema migrations in ``<dir>``. On Flo
there is no schema to migrate (the records live in flo-server's log), so the
meaningful job of the command is moving data: ``--url`` names where it comes
from, and it lands in the cluster of the current context.

========================  ==============================================================
``--url``                 what is imported
========================  ==============================================================
``sqlite:///path/to.db``  a Flame session manager's database (Flame 0.6's own storage);
                          with ``--sql DIR`` its ``*.sql`` migrations are applied first,
                          in name order, exactly as Flame's ``migrate`` would, so an older
                          Flame database is brought to the current schema before it is read
``file:///path/dump``     an export written by ``flmctl migrate --export /path/dump``
``flo://host:port``       another flo-server's flamepy namespace (moving to a new server)
========================  ==============================================================

Examples::

    flmctl migrate --url sqlite:///var/lib/flame/flame.db --sql session_manager/migrations/sqlite
    flmctl migrate --export /backup/flame.jsonl        # this cluster's flamepy records and objects
    flmctl migrate --url file:///backup/flame.jsonl    # into another (or a rebuilt) cluster
    flmctl migrate --url flo://old-host:9000 --dry-run

Existing applications and sessions are kept (counted as skipped), never overwritten.
Imported open sessions get their pending tasks queued again (a task that was running
at the source runs again: at-least-once); clients waiting at the source are not
carried over (they were connected to the old server). Runtime state — executors,
node heartbeats, instance reservations — is not copied: the new cluster's executor
managers start instances for the imported open sessions on their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..core import _runtime
from ..core import records as R
from ..core._store import Conflict, Store
from ..core.config import normalize_endpoint
from ..executor.layout import object_key_now
from ..core.types import FlameError, FlameErrorCode, ResourceRequirement, SessionState, TaskState

__all__ = ["MigrateReport", "import_from", "export_to"]

# Keys that describe what users created; runtime keys (alloc/, ready/, exec/, node/) stay behind.
DATA_PREFIXES = ("app/", "ssn/", "task/", "obj/", "objd/", "blob/")
EXPORT_FORMAT = "flamepy-export-1"
MAX_EXPORT_LINE = 64 * 1024 * 1024  # one exported value (base64) per line, bounded when read back


@dataclass
class MigrateReport:
    applications: int = 0
    sessions: int = 0
    tasks: int = 0
    objects: int = 0
    requeued: int = 0
    skipped: list = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        verb = "Would import" if dry_run else "Imported"
        text = (f"{verb} {self.applications} applications, {self.sessions} sessions, {self.tasks} tasks, "
                f"{self.objects} objects; {self.requeued} pending tasks queued again.")
        if self.skipped:
            text += f"\nSkipped (already present): {', '.join(self.skipped[:20])}"
            if len(self.skipped) > 20:
                text += f" and {len(self.skipped) - 20} more"
        return text


def import_from(store: Store, url: str, sql_dir: Optional[str] = None, dry_run: bool = False) -> MigrateReport:
    """Import Flame metadata from ``url`` (sqlite://, file:// or flo://) into ``store``'s cluster."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        apps, sessions, raw = _read_sqlite(_sqlite_path(url), sql_dir, dry_run)
    elif sql_dir:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "--sql applies to sqlite:// URLs only (Flame's schema)")
    elif parsed.scheme == "file" or not parsed.scheme:
        apps, sessions, raw = _read_records(_read_export(parsed.path if parsed.scheme else url))
    elif parsed.scheme == "flo":
        apps, sessions, raw = _read_records(_read_flo(store, parsed.netloc))
    else:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"unsupported --url scheme <{parsed.scheme}>: use sqlite://, file:// or flo://")
    return _runtime.run(_write(store, apps, sessions, raw, dry_run))


def export_to(store: Store, path: str) -> int:
    """Write every data key of the flamepy namespace to ``path`` (JSON lines); returns how many."""
    async def collect():
        out = []
        for prefix in DATA_PREFIXES:
            keys = await store.scan(prefix)
            for i in range(0, len(keys), 256):
                part = keys[i:i + 256]
                out += [(k, v[0]) for k, v in zip(part, await store.mget(part)) if v is not None]
        return out
    items = _runtime.run(collect())
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"format": EXPORT_FORMAT, "keys": len(items)}) + "\n")
        for key, value in items:
            f.write(json.dumps({"k": key, "v": base64.b64encode(value).decode()}) + "\n")
    os.replace(tmp, path)  # a reader never sees half an export
    return len(items)


# -- sources --------------------------------------------------------------------------------------------------

def _sqlite_path(url: str) -> str:
    # sqlite:///abs/path (Flame's form) or sqlite://rel/path; a query (?mode=rwc) is ignored
    rest = url[len("sqlite://"):].split("?", 1)[0]
    if not rest:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"no database path in <{url}>")
    return rest


def _read_sqlite(path: str, sql_dir: Optional[str], dry_run: bool):
    if not os.path.isfile(path) and not sql_dir:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} is not a file")
    if sql_dir and not os.path.isdir(sql_dir):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{sql_dir} is not a directory")
    scratch = None
    if sql_dir and dry_run:  # DDL commits as it goes: a dry run migrates a scratch copy, never the database
        scratch = tempfile.NamedTemporaryFile(suffix=".db", delete=False)
        scratch.close()
        if os.path.isfile(path):
            shutil.copyfile(path, scratch.name)
        path = scratch.name
    db = sqlite3.connect(path)
    try:
        db.row_factory = sqlite3.Row
        if sql_dir:
            _apply_migrations(db, sql_dir)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = {"applications", "sessions", "tasks"} - tables
        if missing:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                             f"{path} is not a Flame session manager database (no {', '.join(sorted(missing))} "
                             "table); pass --sql with Flame's migrations to create the schema")
        apps = [_app_from_row(dict(r)) for r in db.execute("SELECT * FROM applications")]
        sessions = []
        for row in db.execute("SELECT * FROM sessions ORDER BY creation_time, id"):
            row = dict(row)
            tasks = [_task_from_row(row["id"], dict(t)) for t in
                     db.execute("SELECT * FROM tasks WHERE ssn_id=? ORDER BY id", (row["id"],))]
            sessions.append((_session_from_row(row), tasks))
        return apps, sessions, []
    except sqlite3.DatabaseError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot read {path}: {exc}") from None
    finally:
        db.close()
        if scratch is not None:
            os.unlink(scratch.name)


def _apply_migrations(db: sqlite3.Connection, sql_dir: str) -> None:
    """Flame's migrate: run each ``*.sql`` of the directory once, in name order, recorded in _sqlx_migrations
    (the table sqlx keeps, so Flame's own session manager accepts the database afterwards)."""
    db.execute("CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, "
               "installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, "
               "checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)")
    done = {r[0] for r in db.execute("SELECT version FROM _sqlx_migrations")}
    for name in sorted(os.listdir(sql_dir)):
        if not name.endswith(".sql"):
            continue
        version_text, _, description = name[:-4].partition("_")
        if not version_text.isdigit() or int(version_text) in done:
            continue
        with open(os.path.join(sql_dir, name), "rb") as f:
            script = f.read()
        # One script and its bookkeeping row in one transaction, so a failed step is retried next time.
        db.executescript("BEGIN;\n" + script.decode() + "\nINSERT INTO _sqlx_migrations (version, description, "
                         f"success, checksum, execution_time) VALUES ({int(version_text)}, "
                         f"'{description.replace(chr(39), '')}', 1, X'{hashlib.sha384(script).hexdigest()}', 0);"
                         "\nCOMMIT;")


def _json(text, default):
    if text is None or text == "":
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _app_from_row(row: dict) -> dict:
    schema = _json(row.get("schema"), None)
    attrs = {"shim": row.get("shim") or 0, "image": row.get("image"), "description": row.get("description"),
             "labels": _json(row.get("labels"), []), "command": row.get("command"),
             "arguments": _json(row.get("arguments"), []), "environments": _json(row.get("environments"), {}),
             "working_directory": row.get("working_directory"), "max_instances": row.get("max_instances"),
             "delay_release": row.get("delay_release"), "url": row.get("url"), "installer": row.get("installer"),
             "schema": schema if isinstance(schema, dict) else None}
    rec = R.app_to_record(row["name"], attrs, int(row["creation_time"]) * 1000)  # Flame stores seconds
    rec["state"] = int(row.get("state") or 0)
    return rec


def _session_from_row(row: dict) -> dict:
    cpu, mem, gpu = row.get("resreq_cpu"), row.get("resreq_memory"), row.get("resreq_gpu")
    resreq = R.DEFAULT_RESREQ if cpu is None and mem is None else ResourceRequirement(cpu or 0, mem or 0, gpu or 0)
    rec = R.new_session_record(row["id"], row["application"], row.get("common_data"), row.get("min_instances") or 0,
                               row.get("max_instances"), row.get("batch_size") or 1, row.get("priority") or 0,
                               resreq, int(row["creation_time"]) * 1000)
    rec["state"] = int(row["state"])
    if row.get("completion_time"):
        rec["dtime"] = int(row["completion_time"]) * 1000
    return rec


_STATE_EVENT = {int(TaskState.RUNNING): "Task state was updated to <Running>",
                int(TaskState.SUCCEED): "Task was completed with state <Succeed>",
                int(TaskState.FAILED): "Task failed (imported from Flame without its message)",
                int(TaskState.CANCELLED): "Task was cancelled because its session was closed"}


def _task_from_row(sid: str, row: dict) -> tuple[dict, Optional[bytes], Optional[bytes]]:
    ctime = int(row["creation_time"]) * 1000
    rec = R.new_task_record(sid, int(row["id"]), None, None, ctime)
    state = int(row["state"])
    rec["state"] = state
    if row.get("completion_time"):
        rec["dtime"] = int(row["completion_time"]) * 1000
    if state in _STATE_EVENT:
        rec["events"].append([state, _STATE_EVENT[state], rec["dtime"] or ctime])
    return rec, row.get("input"), row.get("output")


def _read_export(path: str) -> Iterator[tuple[str, bytes]]:
    if not os.path.isfile(path):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} is not a file")
    with open(path, encoding="utf-8", errors="replace") as f:  # not text at all: refused below, not a crash
        head = f.readline(MAX_EXPORT_LINE)
        if _json(head, {}).get("format") != EXPORT_FORMAT:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                             f"{path} is not a flmctl export (first line must name {EXPORT_FORMAT})")
        for n, line in enumerate(iter(lambda: f.readline(MAX_EXPORT_LINE), ""), start=2):
            try:
                item = json.loads(line)
                yield str(item["k"]), base64.b64decode(item["v"], validate=True)
            except (ValueError, KeyError, TypeError):
                raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path}:{n}: not an export line") from None


def _read_flo(store: Store, netloc: str) -> list[tuple[str, bytes]]:
    source = Store(normalize_endpoint(netloc), client_options=store.client_options)

    async def collect():
        await source.connect()
        try:
            out = []
            for prefix in DATA_PREFIXES:
                keys = await source.scan(prefix)
                for i in range(0, len(keys), 256):
                    part = keys[i:i + 256]
                    out += [(k, v[0]) for k, v in zip(part, await source.mget(part)) if v is not None]
            return out
        finally:
            await source.close()
    return _runtime.run(collect())


def _read_records(items) -> tuple[list, list, list]:
    """Split raw keys into application records, (session, [(task, None, None)]) and the rest (objects, blobs)."""
    apps, sessions, tasks, raw = [], {}, {}, []
    for key, value in items:
        if not key.startswith(DATA_PREFIXES):
            continue  # an export holds only data keys; anything else is not ours to write
        if key.startswith("app/"):
            apps.append(R.unpack(value))
        elif key.startswith("ssn/"):
            rec = R.unpack(value)
            sessions[rec["id"]] = rec
        elif key.startswith("task/"):
            rec = R.unpack(value)
            tasks.setdefault(rec["ssn"], []).append((rec, None, None))
        else:
            raw.append((object_key_now(key), value))  # an object of the old key layout lands in today's
    ordered = sorted(sessions.values(), key=lambda r: (r["ctime"], r["id"]))
    return apps, [(s, sorted(tasks.get(s["id"], []), key=lambda t: t[0]["id"])) for s in ordered], raw


# -- the writer -----------------------------------------------------------------------------------------------

async def _write(store: Store, apps: list, sessions: list, raw: list, dry_run: bool) -> MigrateReport:
    report = MigrateReport()
    for rec in apps:
        if await store.get(R.k_app(rec["name"])) is not None:
            report.skipped.append(f"application {rec['name']}")
            continue
        report.applications += 1
        if not dry_run:
            try:
                await store.put(R.k_app(rec["name"]), R.pack(rec), if_absent=True)
            except Conflict:
                report.applications -= 1
                report.skipped.append(f"application {rec['name']}")
    # Objects (head records, deltas, blob chunks) are written only where the key is free (CAS 0): an object
    # that already exists here keeps its own bytes.
    heads = [k for k, _ in raw if k.startswith("obj/")]
    if dry_run:
        present = await store.mget(heads) if heads else []
        report.objects = sum(1 for p in present if p is None)
    elif raw:
        versions = await store.put_many([(k, v, 0) for k, v in raw])
        report.objects = sum(1 for (k, _), ver in zip(raw, versions) if ver is not None and k.startswith("obj/"))
    for ssn, tasks in sessions:
        await _write_session(store, ssn, tasks, report, dry_run)
    return report


async def _write_session(store: Store, ssn: dict, tasks: list, report: MigrateReport, dry_run: bool) -> None:
    sid = ssn["id"]
    if await store.get(R.k_ssn(sid)) is not None:
        report.skipped.append(f"session {sid}")
        return
    is_open = ssn["state"] == int(SessionState.OPEN)
    counts = {c: 0 for c in R.COUNTERS}
    records, pending = [], []
    for rec, input_data, output_data in tasks:
        rec = dict(rec, reply=None, instance=None)  # the source's waiting clients and instances are gone
        if rec["state"] == int(TaskState.RUNNING):
            rec["state"] = int(TaskState.PENDING)  # it was running at the source: it runs again here
            rec["events"] = list(rec.get("events") or []) + [
                [int(TaskState.PENDING), "Task was queued again by flmctl migrate (it was running at the source)",
                 rec["ctime"]]]
        if input_data is not None or output_data is not None:
            rec["input"], in_chunks = R.split_blob(input_data)
            rec["output"], out_chunks = R.split_blob(output_data)
            records += in_chunks + out_chunks
        counts[{0: "pending", 2: "succeed", 3: "failed", 4: "cancelled"}[rec["state"]]] += 1
        if rec["state"] == int(TaskState.PENDING):
            pending.append(rec["id"])
        records.append((R.k_task(sid, rec["id"]), R.pack(rec)))
    ssn = dict(ssn, bind_failures=0, broken=None)
    report.sessions += 1
    report.tasks += len(tasks)
    report.requeued += len(pending) if is_open else 0
    if dry_run:
        return
    try:
        await store.put(R.k_ssn(sid), R.pack(ssn), if_absent=True)
    except Conflict:
        report.sessions -= 1
        report.skipped.append(f"session {sid}")
        return
    last = max((rec["id"] for rec, _, _ in tasks), default=0)
    meta = [(R.k_appssn(ssn["app"], sid), b""), (R.k_seq(sid), str(last).encode())]
    meta += [(R.k_cnt(sid, c), str(n).encode()) for c, n in counts.items() if n]
    if is_open:
        meta.append((R.k_open(sid), ssn["app"].encode()))
    await store.put_many(records + meta)
    if is_open and pending:  # records are in before the messages that name them
        for first, last_id in R.id_runs(pending):
            await store.enqueue(R.q_tasks(sid), R.chunk_payload(first, last_id), R.PRIORITY_FRESH)

