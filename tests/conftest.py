"""Session-wide test settings.

After the last report is printed, the test process ends with `os._exit`, skipping the
interpreter's teardown of native libraries. Several test modules start and stop an
in-process Ray one after another, and Ray's background threads can outlive a
`ray.shutdown()` (ray-project/ray#31145): tearing the interpreter down then sometimes
segfaults after every test has passed (seen once in a fresh-clone CI run: "563 passed",
then make's "Segmentation fault"). Ray is shut down first if it is still up, so no
process is left behind; a crash inside a test still fails the run as before.
"""
from __future__ import annotations

import os
import sys

_status = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
    _status["code"] = int(exitstatus)


def pytest_unconfigure(config):
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_status["code"])
