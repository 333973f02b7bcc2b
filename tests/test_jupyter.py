"""A Jupyter kernel: the report of a kernel shut down normally reaches the
kernel process's own standard output (the Jupyter server's terminal or log),
once, though ipykernel points descriptor 1 at a pipe that its own thread
reads.  Real kernels, started by jupyter_client and nbclient as Jupyter
starts them; each test's driver prints nothing itself, so its whole stdout
is the kernel's."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHAPTER_SESSION, import_optional, report, run_python

pytestmark = [pytest.mark.jupyter]
import_optional("jupyter_client")

# The kernel's Jupyter and IPython folders in the test's own (no profile or
# startup file of the user's), and each check failing the driver loudly.
PRELUDE = """
import os, sys
for name in ("CONFIG", "DATA", "RUNTIME"):
    os.environ[f"JUPYTER_{name}_DIR"] = os.path.abspath(f"jupyter-{name.lower()}")
os.environ["IPYTHONDIR"] = os.path.abspath("ipython")
os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
"""

# The chapter's session in one cell, and the kernel's interpreter is this one.
CELL = CHAPTER_SESSION + "import sys\nprint(sys.executable, c.count, d.count)\n"

KERNEL_MANAGER = (
    PRELUDE
    + """
from jupyter_client.manager import KernelManager

# A shutdown that takes longer (a busy machine) must not become a kill.
km = KernelManager(kernel_name="python3", shutdown_wait_time=120)
km.start_kernel(extra_arguments=sys.argv[1:])
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
printed = []

def output(msg):
    if msg["msg_type"] == "stream":
        printed.append(msg["content"]["text"])

reply = kc.execute_interactive(CELL, timeout=60, output_hook=output)
assert reply["content"]["status"] == "ok", reply["content"]
assert "".join(printed) == f"{sys.executable} 9 -2\\n", printed
kc.stop_channels()
km.shutdown_kernel(now=False)
"""
)


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param([], id="descriptors-captured"),
        pytest.param(["--IPKernelApp.capture_fd_output=False"], id="not-captured"),
    ],
)
def test_a_kernel_shut_down_reports_on_its_stdout(
    tmp_path: Path, arguments: list[str]
) -> None:
    # The kernel's arguments follow the driver's code.
    driver = f"CELL = {CELL!r}\n" + KERNEL_MANAGER
    done = run_python("", args=("-c", driver, *arguments), cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout == report(2, 3), done.stderr


NOTEBOOK = (
    PRELUDE
    + """
import nbformat
from nbclient import NotebookClient
from traitlets.config import Config

cells = [nbformat.v4.new_code_cell(line) for line in LINES]
nb = nbformat.v4.new_notebook(cells=cells)
# A shutdown that takes longer (a busy machine) must not become a kill.
config = Config()
config.KernelManager.shutdown_wait_time = 120
NotebookClient(nb, kernel_name="python3", timeout=60, config=config).execute()
def shown(cell):
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for o in cell.outputs)
shown = [shown(cell) for cell in nb.cells]
assert [s for s in shown if s] == ["9", "-2"], shown
"""
)


def test_a_notebook_executed_by_nbclient_reports_once(tmp_path: Path) -> None:
    """As `jupyter nbconvert --execute` runs it: one cell per line of the
    chapter's session, then the kernel shut down gracefully."""
    lines = CHAPTER_SESSION.splitlines()
    done = run_python(f"LINES = {lines!r}\n" + NOTEBOOK, cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout == report(2, 3), done.stderr


def then_a_cell(code: str) -> str:
    """The kernel manager's driver, with a second cell run after CELL: a
    cell of its own, as ipykernel flushes a cell's output through the
    sys.stdout it finds at the end of that cell."""
    then = (
        f"reply = kc.execute_interactive({code!r}, timeout=60)\n"
        'assert reply["content"]["status"] == "ok", reply["content"]\n'
        "kc.stop_channels()\n"
    )
    return f"CELL = {CELL!r}\n" + KERNEL_MANAGER.replace("kc.stop_channels()\n", then)


@pytest.mark.parametrize(
    "replacement",
    [
        pytest.param("import io, sys\nsys.stdout = io.StringIO()\n", id="StringIO"),
        pytest.param(
            "import os, sys\nsys.stdout = os.fdopen(1, 'w', 1)\n", id="own-descriptor-1"
        ),
        pytest.param("import sys\nsys.stdout = sys.__stdout__\n", id="sys.__stdout__"),
    ],
)
def test_a_cell_that_replaces_sys_stdout_does_not_lose_the_report(
    tmp_path: Path, replacement: str
) -> None:
    """A cell that leaves sys.stdout replaced: a StringIO, which does not
    matter anywhere else, or a file object of its own on descriptor 1,
    whose report goes to the standard output the process had.  In a
    kernel that is ipykernel's pipe, and the report belongs on the kernel's
    real standard output, as without the replacement."""
    driver = then_a_cell(replacement)
    done = run_python("", args=("-c", driver), cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout == report(2, 3), done.stderr


@pytest.mark.parametrize(
    "replacement",
    [
        pytest.param("", id="untouched"),
        pytest.param("import io, sys\nsys.stderr = io.StringIO()\n", id="StringIO"),
    ],
)
def test_the_report_that_falls_back_to_stderr_reaches_the_kernels_stderr(
    tmp_path: Path, replacement: str
) -> None:
    """PYATEXIT_DUMP_FILE that cannot be opened: the line that says why and
    the report go to standard error by the rule of standard output, the
    kernel's real one, whatever a cell left in sys.stderr."""
    driver = then_a_cell(replacement)
    missing = tmp_path / "missing" / "counts.txt"
    done = run_python(
        "",
        args=("-c", driver),
        cwd=tmp_path,
        env={"PYATEXIT_DUMP_FILE": str(missing)},
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    # The kernel's standard error has ipykernel's own lines too.
    fallback = (
        f"pyatexit: cannot append the report to PYATEXIT_DUMP_FILE={missing}: "
        "No such file or directory\n" + report(2, 3)
    )
    assert done.stderr.count(fallback) == 1, done.stderr
    assert done.stderr.count("dump_inc_dec_count() ====") == 1, done.stderr
