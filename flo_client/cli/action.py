"""``flo action``: list, invoke (--wait), status.

Examples::

    flo action list
    RUN=$(flo action invoke resize '{"id": 1}')
    flo action status "$RUN"
    flo action invoke resize '{"id": 1}' --wait --timeout 60    # prints the output
"""

from __future__ import annotations

import click

from ..action import ActionInvokeOptions, ActionListOptions, ActionRunStatus, RunStatus
from ..client import FloClient
from .session import PAYLOAD, CliError, FloGroup, Session, flo_command, json_bytes, table, text_of, when

ACTION_LIST_BOUND = 10_000


@click.group(cls=FloGroup)
def action() -> None:
    """Actions run by workers: list, invoke, status."""


def run_doc(st: ActionRunStatus) -> dict:
    return {"run_id": st.run_id, "status": st.status.name, "attempt": st.attempt, "created_at_ms": st.created_at_ms,
            "started_at_ms": st.started_at_ms, "completed_at_ms": st.completed_at_ms,
            "output": json_bytes(st.output), "error": st.error_message, "worker_id": st.worker_id,
            "outcome": st.outcome}


def run_text(st: ActionRunStatus) -> str:
    rows = [("run_id", st.run_id), ("status", st.status.name), ("attempt", st.attempt),
            ("created", when(st.created_at_ms)), ("started", when(st.started_at_ms)),
            ("completed", when(st.completed_at_ms)), ("worker", st.worker_id or "-")]
    rows += [(name, value) for name, value in (("outcome", st.outcome), ("error", st.error_message),
                                               ("output", text_of(st.output) if st.output is not None else None))
             if value is not None]
    return "\n".join(f"{name + ':':<11}{value}" for name, value in rows)


@action.command("list")
@click.argument("prefix", default="")
@flo_command
async def action_list(session: Session, client: FloClient, prefix: str) -> None:
    """The registered actions (those starting with PREFIX) and their pending / running runs.

    \b
    Example:
      flo action list
    """
    actions, cursor = [], None
    while len(actions) < ACTION_LIST_BOUND:
        page = await client.action.list(ActionListOptions(prefix=prefix or None, cursor=cursor, limit=1000))
        actions += page.actions
        cursor = page.cursor
        if not page.has_more:
            break
    rows = [(a.name, a.timeout_ms, a.max_retries, a.pending, a.running, a.owner or "-") for a in actions]
    docs = [{"name": a.name, "timeout_ms": a.timeout_ms, "max_retries": a.max_retries, "pending": a.pending,
             "running": a.running, "owner": a.owner, "version": a.version} for a in actions]
    session.emit({"actions": docs},
                 table(("ACTION", "TIMEOUT_MS", "MAX_RETRIES", "PENDING", "RUNNING", "OWNER"), rows) if rows else None)
    if not rows:
        session.note("(no actions)")


@action.command("invoke")
@click.argument("name", metavar="ACTION")
@click.argument("input_data", metavar="[INPUT]", type=PAYLOAD, default=b"")
@click.option("--wait", is_flag=True, help="Wait for the run to finish and print its output.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With --wait: give up after this long.")
@click.option("--priority", type=click.IntRange(0, 255), help="Lower goes first (server default 10).")
@click.option("--idempotency-key", help="Repeating it within 24 h returns the first run.")
@flo_command
async def action_invoke(session: Session, client: FloClient, name: str, input_data: bytes, wait: bool,
                        timeout: float | None, priority: int | None, idempotency_key: str | None) -> None:
    """Start a run of ACTION with INPUT ('-' reads stdin) and print its run id.

    With --wait, print the run's output instead; a run that fails, times out or is
    cancelled exits 1 with its error.

    \b
    Examples:
      flo action invoke resize '{"id": 1}'
      flo action invoke resize - --wait < job.json
    """
    options = ActionInvokeOptions(priority=priority, idempotency_key=idempotency_key)
    if not wait:
        started = await client.action.invoke(name, input_data, options)
        return session.emit({"action": name, "run_id": started.run_id}, started.run_id)
    done = await client.action.call(name, input_data, None if timeout is None else int(timeout * 1000), options)
    completed = done.status == RunStatus.COMPLETED
    session.emit({"action": name, **run_doc(done)}, text_of(done.output) if completed else None)
    if not completed:
        because = f": {done.error_message}" if done.error_message else ""
        raise CliError(f"run {done.run_id} {done.status.name}{because}")


@action.command("status")
@click.argument("run_id")
@flo_command
async def action_status(session: Session, client: FloClient, run_id: str) -> None:
    """The state of run RUN_ID: status, attempts, times, worker, output or error.

    \b
    Example:
      flo action status act-2a
    """
    st = await client.action.status(run_id)
    session.emit(run_doc(st), run_text(st))
