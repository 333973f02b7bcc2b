"""Replays the chapter's interactive session, then the exit report appears.

Each line is echoed after the prompt and run as the interactive interpreter
would run it, so expression values are printed just as at the real prompt.
"""

import code

SESSION = """\
import pyatexit
c = pyatexit.Counter(8)
c.inc()
c.inc()
c.dec()
c.count
d = pyatexit.Counter()
d.dec()
d.dec()
d.count
"""

console = code.InteractiveConsole()
for line in SESSION.splitlines():
    print(f">>> {line}", flush=True)
    console.push(line)
print(">>> ^D")
