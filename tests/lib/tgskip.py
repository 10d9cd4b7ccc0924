"""tgskip — skips are a third state, never a quiet pass.

Every skip is appended, one line each, to the file named by $TG_SKIP_LOG
(scripts/test.sh sets it per test target and counts the lines: "N passed,
N failed, N skipped"; under CI an unlisted skip fails the run, see
tests/expected-skips).  Without $TG_SKIP_LOG the line goes to stderr.

    from tgskip import main, skip_program
    skip_program("no gateway binary at %s" % path)   # whole program: exits 0
    main()                                           # unittest.main, skips logged
"""

import os
import sys
import unittest


def log_skip(what, reason):
    line = "%s: %s" % (what, reason.replace("\n", " "))
    path = os.environ.get("TG_SKIP_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    print("SKIPPED " + line, file=sys.stderr)


def skip_program(reason):
    """Record that the whole program was skipped, and exit 0."""
    log_skip(os.path.basename(sys.argv[0]), reason)
    sys.exit(0)


def main(verbosity=2):
    """unittest.main, with every skipped test recorded through log_skip."""
    prog = unittest.main(verbosity=verbosity, exit=False)
    res = prog.result
    for test, reason in res.skipped:
        log_skip(test.id(), reason)
    sys.exit(0 if res.wasSuccessful() else 1)
