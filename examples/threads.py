"""Many threads counting on shared and private Counters: the exit report
gives the exact process-wide totals."""

import threading

import pyatexit

THREADS, ROUNDS = 4, 2000
shared = pyatexit.Counter()


def work() -> None:
    own = pyatexit.Counter()
    for _ in range(ROUNDS):
        shared.inc()
        own.dec()


threads = [threading.Thread(target=work) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"shared.count = {shared.count}")  # 8000; the report: 8000 and 8000
