"""Importing the CLI (and the light modules the phases share) loads no heavy library: `construct --help`
stays fast, and `train/validate.py` does not drag faiss and PIL in through `evaluate/__init__`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "zarr", "faiss", "PIL", "transformers", "open_clip", "segmentation_models_pytorch")


def _loaded_after(statement: str) -> set[str]:
    """Which of HEAVY a fresh interpreter holds after running `statement` (this process has them all)."""
    probe = f"import sys, json; {statement}; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_cli_import_loads_no_heavy_library():
    assert _loaded_after("import construct.cli") == set()


def test_help_runs_without_heavy_libraries():
    assert _loaded_after("from click.testing import CliRunner; from construct.cli import main; "
                         "assert CliRunner().invoke(main, ['--help']).exit_code == 0") == set()


@pytest.mark.parametrize("package", ["construct.store", "construct.backbones", "construct.head",
                                     "construct.evaluate", "construct.refine"])
def test_package_init_is_lazy(package):
    assert _loaded_after(f"import {package}") == set()


def test_validation_does_not_load_the_report_libraries():
    assert _loaded_after("import construct.train.validate") & {"faiss", "PIL"} == set()


def test_lazy_reexports_resolve():
    from construct.evaluate import format_table
    from construct.evaluate.table import format_table as direct
    from construct.store import FeatureStore
    from construct.store.feature_store import FeatureStore as store_direct

    assert format_table is direct and FeatureStore is store_direct
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import construct.store

        construct.store.nope  # noqa: B018
