"""The library never imports Prefect: checked in a fresh interpreter."""

import subprocess
import sys


def test_lrs_core_does_not_import_prefect() -> None:
    code = (
        "import sys, pkgutil, importlib, lrs_core\n"
        "for m in pkgutil.walk_packages(lrs_core.__path__, 'lrs_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "roots = ('prefect', 'flows', 'tasks')\n"
        "leaked = sorted(k for k in sys.modules if k.split('.')[0] in roots)\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
