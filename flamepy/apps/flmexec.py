"""flmexec's service: Flame's script runner, what the built-in ``flmexec`` runs.

A task's input is Flame's ``Script`` as JSON; the script runs in a fresh directory
with ``input`` on its stdin, and the task's output is Flame's ``ScriptOutput``, the
script's stdout (JSON byte arrays, as 0.6's serde writes ``Vec<u8>``)::

    request  {"language": "python" | "shell", "runtime": null, "code": "print(6 * 7)", "input": null}
    response {"data": [52, 50, 10]}                                  # b"42\\n"

``runtime`` picks the interpreter: a Python version (``"3.11"``, ``"python3.11"``;
default: the service's own Python, which has flamepy, so a script can start a
Runner of its own) or a shell (``sh``, ``bash`` (default), ``zsh``, ``csh``,
``tcsh``, ``ksh``, ``fish``, ``dash``, or one of those under ``/bin`` or ``/usr/bin``).
``input`` is a byte array (or a string, sent as UTF-8). An optional ``timeout``
(seconds) kills the script when it runs longer. A script that exits non-zero, is
killed, or writes more than ``MAX_OUTPUT_BYTES`` fails its task with the exit
status and the tail of its stderr and stdout.

Client side::

    ssn = flamepy.create_session("flmexec")
    out = ssn.invoke(json.dumps({"language": "shell", "code": "echo hi", "input": None}).encode())
    print(bytes(json.loads(out)["data"]))            # b'hi\\n'

Run by the executor manager as ``python -m flamepy.apps.flmexec``; run by hand (no
``FLAME_INSTANCE_ID``) the same command is Flame's ``flmexec`` client::

    python -m flamepy.apps.flmexec -t 2 -l python -c 'print(6 * 7)'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..core.service import FlameService, TaskContext, run

__all__ = ["Script", "ScriptError", "ExecService", "parse_script", "run_script", "encode_output",
           "MAX_CODE_BYTES", "MAX_OUTPUT_BYTES", "MAX_TIMEOUT_S", "SHELLS"]

MAX_CODE_BYTES = 8 << 20          # the script's source
MAX_INPUT_BYTES = 64 << 20        # its stdin
MAX_OUTPUT_BYTES = 16 << 20       # its stdout (the task's output is about 4x that as JSON numbers)
MAX_TIMEOUT_S = 7 * 24 * 3600
TAIL_BYTES = 2048                 # of stderr / stdout quoted in a failure
SHELLS = ("sh", "bash", "zsh", "csh", "tcsh", "ksh", "fish", "dash")
DEFAULT_SHELL = "bash"
# What the instance's own environment says about itself; a script is not that instance.
_INSTANCE_ENV = ("FLAME_SESSION_ID", "FLAME_INSTANCE_ID", "FLAME_INSTANCE_STATE", "FLAME_INSTANCE_ENDPOINT",
                 "FLAME_IDLE_TIMEOUT")
_PYTHON_VERSION = re.compile(r"^(?:python)?(\d+(?:\.\d+)?)$")


class ScriptError(RuntimeError):
    """A script request refused, or a script that failed (the task fails with this message)."""


@dataclass
class Script:
    language: str
    code: str
    runtime: Optional[str] = None
    input: Optional[bytes] = None
    timeout: Optional[float] = None


def parse_script(data: Optional[bytes]) -> Script:
    """A ``Script`` from a task's input bytes, or ScriptError saying what is wrong.

    >>> parse_script(b'{"language": "Shell", "code": "echo hi", "input": [104, 105]}').input
    b'hi'
    """
    if not data:
        raise ScriptError('flmexec needs a script: {"language": "python" | "shell", "code": "...", "input": null}')
    if len(data) > MAX_CODE_BYTES + 4 * MAX_INPUT_BYTES + 4096:
        raise ScriptError(f"flmexec request is {len(data)} bytes, too large")
    try:
        req = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScriptError(f"flmexec request is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ScriptError("flmexec request must be a JSON object")
    language, code = req.get("language"), req.get("code")
    if not isinstance(language, str) or language.lower() not in ("python", "shell"):
        raise ScriptError(f"Unsupported language: {language}")
    if not isinstance(code, str):
        raise ScriptError("flmexec request needs \"code\" (a string)")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise ScriptError(f"script code is larger than {MAX_CODE_BYTES} bytes")
    runtime = req.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise ScriptError("runtime must be a string or null")
    timeout = req.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= MAX_TIMEOUT_S):
        raise ScriptError(f"timeout must be a number of seconds from 0 to {MAX_TIMEOUT_S}")
    return Script(language=language.lower(), code=code, runtime=(runtime or "").strip() or None,
                  input=_input_bytes(req.get("input")), timeout=timeout)


def _input_bytes(value: Any) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, list):
        if len(value) > MAX_INPUT_BYTES:
            raise ScriptError(f"script input is larger than {MAX_INPUT_BYTES} bytes")
        try:
            data = bytes(value)
        except (TypeError, ValueError):
            raise ScriptError("script input must be an array of bytes (integers 0-255), a string or null") from None
    else:
        raise ScriptError("script input must be an array of bytes (integers 0-255), a string or null")
    if len(data) > MAX_INPUT_BYTES:
        raise ScriptError(f"script input is larger than {MAX_INPUT_BYTES} bytes")
    return data


def interpreter(script: Script) -> str:
    """The program that runs ``script``: a path, or ScriptError when this node has none."""
    if script.language == "python":
        if script.runtime is None:
            return sys.executable
        m = _PYTHON_VERSION.match(script.runtime)
        if not m:
            raise ScriptError(f"Unsupported Python runtime: {script.runtime} (want a version like 3.11)")
        version = m.group(1)
        mine = f"{sys.version_info.major}.{sys.version_info.minor}"
        if version in (mine, str(sys.version_info.major)):
            return sys.executable
        found = shutil.which(f"python{version}")
        if found is None:
            raise ScriptError(f"Python {version} is not installed on this node (python{version} is not on PATH)")
        return found
    shell = script.runtime or DEFAULT_SHELL
    name = os.path.basename(shell)
    if name not in SHELLS or ("/" in shell and shell not in (f"/bin/{name}", f"/usr/bin/{name}")):
        raise ScriptError(f"Unsupported shell runtime: {shell}")
    found = shell if "/" in shell and os.access(shell, os.X_OK) else shutil.which(name)
    if found is None:
        raise ScriptError(f"shell {shell} is not installed on this node")
    return found


def _environment() -> dict:
    """The instance's environment, less what describes the instance itself (FLAME_ENDPOINT, credentials,
    PATH, HOME, PYTHONPATH stay, so the script can use flamepy against the same cluster)."""
    return {k: v for k, v in os.environ.items() if k not in _INSTANCE_ENV}


def run_script(script: Script) -> bytes:
    """Run ``script`` to completion in a fresh directory; its stdout, or ScriptError."""
    program = interpreter(script)
    work_dir = tempfile.mkdtemp(prefix=f"flmexec-{script.language}-")
    try:
        entry = os.path.join(work_dir, "main.py" if script.language == "python" else "main.sh")
        with open(entry, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(script.code)
        return _run(program, entry, work_dir, script)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(program: str, entry: str, work_dir: str, script: Script) -> bytes:
    from ..executor.manager import _set_pdeathsig

    # Its own process group, so a timeout or a closed session ends the script's children too.
    proc = subprocess.Popen([program, entry], cwd=work_dir, env=_environment(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_set_pdeathsig)
    out = bytearray()
    err: deque = deque()
    too_big = threading.Event()
    threads = [threading.Thread(target=_read_stdout, args=(proc, out, too_big), daemon=True),
               threading.Thread(target=_read_tail, args=(proc.stderr, err), daemon=True),
               threading.Thread(target=_feed, args=(proc, script.input), daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        try:
            proc.wait(script.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
    finally:
        if proc.poll() is None:      # interrupted (the session closed): take the script down with us
            _kill_group(proc)
            proc.wait()
    for t in threads:
        t.join(5)
    if too_big.is_set():
        raise ScriptError(f"script wrote more than {MAX_OUTPUT_BYTES} bytes to stdout; it was stopped")
    if timed_out:
        raise ScriptError(f"script ran longer than its timeout of {script.timeout} s; it was killed"
                          + _tails(bytes(out), err))
    if proc.returncode != 0:
        how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with code {proc.returncode}")
        raise ScriptError(f"script {how}" + _tails(bytes(out), err))
    return bytes(out)


def _read_stdout(proc: subprocess.Popen, out: bytearray, too_big: threading.Event) -> None:
    while True:
        piece = proc.stdout.read1(65536)
        if not piece:
            return
        if len(out) + len(piece) > MAX_OUTPUT_BYTES:
            too_big.set()
            _kill_group(proc)
            proc.stdout.read()   # drain until the pipe closes
            return
        out += piece


def _read_tail(pipe, tail: deque) -> None:
    size = 0
    while True:
        piece = pipe.read1(65536)
        if not piece:
            return
        tail.append(piece)
        size += len(piece)
        while size - len(tail[0]) >= TAIL_BYTES:
            size -= len(tail.popleft())


def _feed(proc: subprocess.Popen, data: Optional[bytes]) -> None:
    try:
        if data:
            proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):   # the script did not read it all: its business
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tails(stdout: bytes, stderr: deque) -> str:
    err = b"".join(stderr)[-TAIL_BYTES:].decode("utf-8", "replace").strip()
    out = stdout[-TAIL_BYTES:].decode("utf-8", "replace").strip()
    return (f"; stderr: {err}" if err else "") + (f"; stdout: {out}" if out else "")


def encode_output(data: bytes) -> bytes:
    """``ScriptOutput`` as 0.6 encodes it: ``{"data": [byte, ...]}``."""
    return b'{"data":[' + ",".join(map(str, data)).encode() + b"]}"


class ExecService(FlameService):
    """The bytes-level service: one script per task."""

    def on_task_invoke(self, context: TaskContext) -> Optional[bytes]:
        return encode_output(run_script(parse_script(context.input)))


def client(argv: Optional[Sequence[str]] = None) -> int:
    """Flame's ``flmexec`` CLI: ``-c`` code, ``-l shell|python``, ``-r`` runtime, ``-i`` input (text), ``-t`` tasks;
    prints each task's stdout; the exit status is 1 if a task failed."""
    from ..core import client as core_client
    from ..core.types import FlameError

    p = argparse.ArgumentParser(prog="flmexec", description="Flame Executor CLI: run a script in flmexec tasks")
    p.add_argument("-t", "--task-num", type=int, default=10)
    p.add_argument("-c", "--code", required=True, help="the code to run on the workers")
    p.add_argument("-l", "--language", default="shell", type=str.lower, choices=["shell", "python"])
    p.add_argument("-r", "--runtime", help="Python version or shell")
    p.add_argument("-i", "--input", help="the script's stdin (text)")
    args = p.parse_args(argv)
    if not 0 < args.task_num <= 1_000_000:
        p.error("--task-num must be from 1 to 1000000")
    request = json.dumps({"language": args.language, "runtime": args.runtime, "code": args.code,
                          "input": args.input}).encode()
    try:
        parse_script(request)
        started = time.monotonic()
        ssn = core_client.create_session("flmexec")
    except (FlameError, ScriptError) as exc:
        print(f"flmexec: {exc}", file=sys.stderr)
        return 1
    print(f"Session <{ssn.id}> was created in <{int((time.monotonic() - started) * 1000)} ms>, "
          f"start to run <{args.task_num:,}> tasks in the session:\n")
    failed = 0
    try:
        started = time.monotonic()
        for f in ssn.run_many([request] * args.task_num):
            try:
                text = bytes(json.loads(f.result())["data"]).decode("utf-8", "replace")
            except FlameError as exc:
                text, failed = f"failed: {exc.message}", failed + 1
            print(f"Task {f.task_id:<10}: {text.rstrip()}")
        took = time.monotonic() - started
    finally:
        ssn.close()
    print(f"\n\n<{args.task_num:,}> tasks was completed in <{int(took * 1000):,} ms>.\n")
    return 1 if failed else 0


def main() -> None:
    """The service when the executor manager started us, else the ``flmexec`` client."""
    if os.environ.get("FLAME_INSTANCE_ID"):
        run(ExecService())
    else:
        sys.exit(client())


if __name__ == "__main__":
    main()
