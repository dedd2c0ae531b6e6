"""The `pvkd` program from a checkout that is not installed (the GPU machine: PYTHONPATH=<checkout> only).

An install maps the top-level ``stages/`` folder to ``pvkd.stages`` (pyproject's package-dir);
with the checkout merely on PYTHONPATH that mapping is missing and ``python -m pvkd`` fails on
``import pvkd.stages``. This registers the mapping, then runs the CLI with the given arguments:

    PYTHONPATH=$PWD python3 bench/pvkd_src.py cache-logits --params ... --teacher ... --out ...

Installed (``.venv``), it runs the installed program unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def register_stages() -> None:
    try:
        import pvkd.stages  # noqa: F401 - installed (editable or not): nothing to do
        return
    except ModuleNotFoundError:
        pass
    stages = Path(__file__).resolve().parents[1] / "stages"
    spec = importlib.util.spec_from_file_location("pvkd.stages", stages / "__init__.py",
                                                  submodule_search_locations=[str(stages)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pvkd.stages"] = module
    spec.loader.exec_module(module)
    import pvkd

    pvkd.stages = module


if __name__ == "__main__":
    register_stages()
    from pvkd.cli import main

    sys.argv[0] = "pvkd"
    main()
