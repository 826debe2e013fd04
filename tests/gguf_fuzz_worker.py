"""Worker for tests/test_gguf_fuzz.py: runs `edgerun inspect` and a 2-token `edgerun run` on each
file named on the command line, in one process, reporting per file on stdout:

    BEGIN i / END i <inspect rc> <run rc> / TRACEBACK i <exception>

A hang is cut by faulthandler (the process exits; the harness sees BEGIN without END and the
"Timeout" dump on stderr); a signal kills the process (the harness sees the negative code).
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import sys
import traceback


def main(paths: list[str], per_file_s: float) -> int:
    from edgerun import cli

    for i, p in enumerate(paths):
        print(f"BEGIN {i}", flush=True)
        faulthandler.dump_traceback_later(per_file_s, exit=True)
        rcs = []
        for argv in (["inspect", p], ["run", "-m", p, "-p", "hi there", "-n", "2", "--temp", "0",
                                      "--threads", "1"]):
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    rcs.append(cli.main(argv))
            except SystemExit as e:  # argparse or an explicit exit: fine, it is a clean exit
                rcs.append(e.code if isinstance(e.code, int) else 1)
            except BaseException as e:  # noqa: BLE001 - the fuzz test counts these
                tb = traceback.format_exc().replace("\n", " | ")
                print(f"TRACEBACK {i} {argv[0]} {type(e).__name__}: {tb}", flush=True)
                rcs.append(-999)
        faulthandler.cancel_dump_traceback_later()
        print(f"END {i} {rcs[0]} {rcs[1]}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("EDGERUN_HUGEPAGES", "0")
    sys.exit(main(sys.argv[2:], float(sys.argv[1])))
