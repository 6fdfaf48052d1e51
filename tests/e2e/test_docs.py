"""Every example in README.md and docs/*.md runs as written.

The fenced blocks are read from the markdown and run unchanged against real
instances on the default ports (HTTP 8000, gRPC 50051), one block at a time:

- A ```python block is a complete program. It runs in its own interpreter, from
  the repository root, and starts its own instance (``serve.init()``).
- A ```sh block is a shell session. It runs with ``bash -euxo pipefail`` from
  the repository root, with ``HOME`` set to a new temporary folder (so
  ``turnout start`` keeps its state, logs and pid file there) and this
  interpreter's ``bin/`` first on ``PATH`` (``turnout``, ``grpcurl``). Whatever
  instance it leaves running is stopped afterwards.
- Both must exit with status 0 within their timeout.

HTML comments on the line(s) just before a fence (invisible once rendered)
tell the test more about that block:

- ``<!-- not run: REASON -->``: the block is not run. Only for what cannot run
  here: the install one-liners, which CI runs itself (.ci/run), and commands
  that need root.
- ``<!-- file: PATH -->``: the block is the content of PATH in the repository
  (checked equal), e.g. the module a deploy file imports; it is not run itself.
- ``<!-- output -->`` before a ```text block: what the runnable block before it
  prints. Its stdout must match line for line; a line ``...`` matches any lines.

Other languages (text, yaml, json, ini) are not run. ``PENDING`` below lists
blocks that wait for behaviour another branch brings; they are strict xfails,
so each entry fails loudly once that behaviour is merged and must be removed.
``PENDING_MAY_PASS`` lists those that may pass before (non-strict xfails):
remove them once that behaviour is merged.
Rerun everything with ``python -m pytest tests/e2e/test_docs.py -v``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("python", "sh")
PORTS = (8000, 50051)  # the defaults the examples use, as users would
TIMEOUT_S = 90

# (doc, text the block contains) -> the issue point whose merge makes it pass.
PENDING: dict[tuple[str, str], str] = {}
# The same, for blocks that may pass before then, depending on what ran just
# before them: a `turnout start` on port 50051 within about 60 s of the last
# `turnout stop` there (an earlier block's, or an earlier run's) is refused while
# the socket is in TIME_WAIT, until the pre-start check binds with SO_REUSEADDR.
PENDING_MAY_PASS: dict[tuple[str, str], str] = {}

_MARKER = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass
class Block:
    doc: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    markers: list[str]
    expected_output: str | None = None
    pending: list[str] = field(default_factory=list)
    strict: bool = True

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def marker(self, prefix: str) -> str | None:
        for marker in self.markers:
            if marker.startswith(prefix):
                return marker[len(prefix) :].strip()
        return None


def read_blocks(path: Path) -> list[Block]:
    """Fenced blocks of one markdown file, with the markers just before each."""
    blocks: list[Block] = []
    markers: list[str] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        marker = _MARKER.match(line)
        if fence:
            indent, lang = fence.group(1), fence.group(2)
            body: list[str] = []
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                body.append(lines[index].removeprefix(indent))
                index += 1
            doc = str(path.relative_to(ROOT))
            code = "\n".join(body) + "\n"
            blocks.append(Block(doc, index - len(body), lang, code, markers))
            markers = []
        elif marker:
            markers.append(marker.group(1))
        elif line.strip():
            markers = []
        index += 1
    return blocks


def runnable_blocks() -> list[Block]:
    found: list[Block] = []
    for path in DOCS:
        previous: Block | None = None
        for block in read_blocks(path):
            if "output" in block.markers:
                assert previous is not None, f"{block.id}: an output block follows no example"
                previous.expected_output = block.code
                continue
            if block.lang not in RUNNABLE or block.marker("file:") is not None:
                continue
            if block.marker("not run:") is not None:
                assert block.marker("not run:"), f"{block.id}: say why it is not run"
                continue
            block.pending = pending_reasons(block, PENDING)
            if not block.pending:
                block.pending = pending_reasons(block, PENDING_MAY_PASS)
                block.strict = False
            found.append(block)
            previous = block
    return found


def pending_reasons(block: Block, table: dict[tuple[str, str], str]) -> list[str]:
    return [why for (doc, text), why in table.items() if doc == block.doc and text in block.code]


def file_blocks() -> list[Block]:
    return [b for path in DOCS for b in read_blocks(path) if b.marker("file:") is not None]


def params(blocks: list[Block]) -> list[object]:
    return [
        pytest.param(
            block,
            id=block.id,
            marks=[pytest.mark.xfail(strict=block.strict, reason="; ".join(block.pending))]
            if block.pending
            else [],
        )
        for block in blocks
    ]


def output_matches(expected: str, actual: str) -> bool:
    pattern = "".join(
        r"(?:.*\n)*?" if line == "..." else re.escape(line) + r"\n"
        for line in expected.splitlines()
    )
    return re.fullmatch(pattern, actual) is not None


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_ports_free(when: str) -> None:
    deadline = time.monotonic() + 20
    while any(listening(port) for port in PORTS):
        if time.monotonic() > deadline:
            taken = [port for port in PORTS if listening(port)]
            pytest.fail(f"ports {taken} are still taken {when}")
        time.sleep(0.1)


@pytest.fixture
def free_ports(default_ports: None) -> Iterator[None]:
    """The previous example's processes are gone (they stop asynchronously),
    and this one's are gone after it, so that no later test finds the default
    ports taken."""
    wait_ports_free("before the example: the doc examples need the default ports")
    yield
    wait_ports_free("20 s after the example ended: its instance did not stop")


def show(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit status {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


@pytest.mark.parametrize("block", params([b for b in runnable_blocks() if b.lang == "python"]))
def test_python_example_runs(block: Block, free_ports: None, tmp_path: Path) -> None:
    program = tmp_path / (re.sub(r"\W", "_", block.id) + ".py")
    program.write_text(block.code)
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, show(result)
    if block.expected_output is not None:
        assert output_matches(block.expected_output, result.stdout), (
            f"expected:\n{block.expected_output}\n{show(result)}"
        )


@pytest.mark.parametrize("block", params([b for b in runnable_blocks() if b.lang == "sh"]))
def test_shell_example_runs(block: Block, free_ports: None, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_DATA_HOME", "TURNOUT_ADDRESS")}
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        result = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", block.code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        stop_what_was_left(home, env)
    assert result.returncode == 0, show(result)
    if block.expected_output is not None:
        assert output_matches(block.expected_output, result.stdout), (
            f"expected:\n{block.expected_output}\n{show(result)}"
        )


def stop_what_was_left(home: Path, env: dict[str, str]) -> None:
    """Stop the instance a session left running, then any process of it that is left:
    every durable child's command line names its state or log folder under HOME."""
    instance_dir = home / ".local" / "share" / "turnout"
    if (instance_dir / "turnout.pid").exists():
        subprocess.run(
            ["turnout", "stop", "--instance-dir", str(instance_dir), "--timeout", "20"],
            env=env,
            capture_output=True,
            timeout=30,
        )
    for pid in processes_mentioning(str(home)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in file_blocks()])
def test_file_shown_in_the_docs_is_the_file(block: Block) -> None:
    path = ROOT / str(block.marker("file:"))
    assert path.read_text() == block.code, f"{block.id} differs from {path.relative_to(ROOT)}"


def test_every_doc_has_its_examples_collected() -> None:
    # A fence the parser missed (an unclosed block, a typo in a marker) would
    # silently drop examples; the docs have at least this many runnable ones.
    blocks = runnable_blocks()
    assert {b.doc for b in blocks} >= {"README.md", "docs/traffic.md", "docs/runtime.md"}
    assert all(b.code.strip() for b in blocks)
