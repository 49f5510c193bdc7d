"""What a SQLite read costs a worker thread while the event loop's thread is busy: a row at a time, or one row of JSON.

Python's sqlite3 lets go of the GIL for every row it steps. A thread that lets go of the GIL while another thread
runs Python must wait to get it back, up to a switch interval (5 ms) each time. Moonborn's database thread reads
while the event loop is busy with a thousand streams starting, so a read of 256 rows waited ~256 times
(chat.services._TurnSql reads one row of JSON on SQLite instead). This measures one read of N rows (three text
columns) both ways, alone and with another thread running Python the whole time, in a fresh in-memory database.

    .venv/bin/python bench/sqlite_gil.py                 # 256 rows, 5 reads each way
    .venv/bin/python bench/sqlite_gil.py --rows 40 --reads 3
"""

import argparse
import json
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE message (id INTEGER PRIMARY KEY, role TEXT, content TEXT)")
    db.executemany(
        "INSERT INTO message (role, content) VALUES (?, ?)",
        [("user", f"line {number} " + "x" * 60) for number in range(args.rows)],
    )

    def rows() -> int:
        return len(db.execute("SELECT id, role, content FROM message").fetchall())

    def one_row() -> int:
        (text,) = db.execute("SELECT json_group_array(json_array(id, role, content)) FROM message").fetchone()
        return len(json.loads(text))

    busy = threading.Event()

    def loop() -> None:  # stands for the event loop: Python, all the time
        spins = 0
        while busy.is_set():
            spins += 1

    def timed(read: Callable[[], int]) -> str:
        times = []
        for _ in range(args.reads):
            began = time.perf_counter()
            assert read() == args.rows
            times.append((time.perf_counter() - began) * 1e3)
        return f"median {statistics.median(times):7.2f} ms (max {max(times):7.2f})"

    for label in ("alone", "with a busy thread"):
        if label != "alone":
            busy.set()
            spinner = threading.Thread(target=loop)
            spinner.start()
            time.sleep(0.05)
        print(f"{args.rows} rows, a row at a time, {label}: {timed(rows)}", flush=True)
        print(f"{args.rows} rows, one row of JSON, {label}: {timed(one_row)}", flush=True)
    busy.clear()
    spinner.join()


if __name__ == "__main__":
    main()
