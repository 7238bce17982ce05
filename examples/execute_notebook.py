#!/usr/bin/env python
"""Run examples/quickstart.ipynb top to bottom in a Jupyter kernel and save it with its outputs.

    python examples/execute_notebook.py        # what `make notebook` runs; the run goes to quickstart_out/

The committed notebook holds the outputs of this command, so that a reader sees its tables and
plots without running it. It takes about 5 minutes on 2 CPU cores.
"""

import argparse
import os
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "quickstart.ipynb"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="execute_notebook.py", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".", help="the kernel's working folder; the notebook writes "
                        "quickstart_out/ there (default: .)")
    parser.add_argument("--timeout", type=int, default=3600, help="most seconds per cell (default: 3600)")
    args = parser.parse_args(argv)
    import nbclient
    import nbformat

    # The notebook's own defaults, and the kernel's own matplotlib backend, as a reader's Jupyter has them.
    for key in [key for key in os.environ if key.startswith("QUICKSTART_")] + ["MPLBACKEND"]:
        os.environ.pop(key, None)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(args.workdir).resolve())}}).execute()
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed {NOTEBOOK.name} in {time.perf_counter() - started:.0f} s; outputs saved in it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
