"""An application embedding CPython: a report at each Py_FinalizeEx()."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import c_compiler, child_env, report

PROGRAM = r"""
#include <Python.h>
#include <stdio.h>

int
main(void)
{
    for (int round = 0; round < 2; round++) {
        Py_Initialize();
        if (PyRun_SimpleString("import pyatexit\n"
                               "c = pyatexit.Counter()\n"
                               "c.inc()\n") != 0) {
            return 1;
        }
        if (Py_FinalizeEx() < 0) {
            return 2;
        }
        printf("finalized %d\n", round);
        fflush(stdout);
    }
    return 0;
}
"""


def build_embedding_program(tmp_path: Path) -> Path:
    var = sysconfig.get_config_var
    version = f"{var('VERSION')}{getattr(sys, 'abiflags', '')}"
    source = tmp_path / "embed.c"
    source.write_text(PROGRAM)
    exe = tmp_path / "embed"
    cmd = [
        *c_compiler(),
        str(source),
        "-o",
        str(exe),
        f"-I{sysconfig.get_paths()['include']}",
        f"-L{var('LIBPL')}",
        f"-L{var('LIBDIR')}",
        f"-Wl,-rpath,{var('LIBDIR')}",
        f"-lpython{version}",
        *(var("LIBS") or "").split(),
        *(var("SYSLIBS") or "").split(),
        *(var("LINKFORSHARED") or "").split(),
    ]
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert built.returncode == 0, " ".join(cmd) + "\n" + built.stderr
    return exe


def test_report_at_each_finalize(tmp_path: Path) -> None:
    exe = build_embedding_program(tmp_path)
    site = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]
    env = child_env(
        PYTHONHOME=sys.base_prefix,
        PYTHONPATH=os.pathsep.join(dict.fromkeys(site)),
    )
    result = subprocess.run(
        [str(exe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert (result.stdout, result.stderr, result.returncode) == (
        report(1, 0) + "finalized 0\n" + report(2, 0) + "finalized 1\n",
        "",
        0,
    )
