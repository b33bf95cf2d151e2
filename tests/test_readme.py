"""The README stays true: its CLI reference is the commands' own --help, and CI runs its test command."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup_commands() -> list[str]:
    """The bash blocks of the Set up section, in order: the demo, then the tests."""
    section = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_cli_reference_matches_help():
    tool = _load_tool()
    readme = (ROOT / "README.md").read_text()
    assert tool.with_reference(readme) == readme, "run: python tools/cli_reference.py"


def test_every_command_documented():
    readme = (ROOT / "README.md").read_text()
    for name in ("demo", "synth", "extract", "train", "refine", "eval"):
        assert f"### `construct {name}`" in readme


def test_ci_runs_the_readme_test_command():
    demo, tests = _setup_commands()
    assert "construct demo" in demo
    test_command = tests.split(" && ")[-1]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci
    assert 'pip install -q -e ".[dev]"' in "\n".join(ci) and '.venv/bin/pip install -e ".[dev]"' in tests


def test_python_example_names_the_api():
    """The README's Python example calls what the API has (tests/test_api.py checks what the calls do)."""
    import dataclasses

    import construct
    from construct.api import Prediction, Segmenter

    section = (ROOT / "README.md").read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    assert "construct.load(" in code and callable(construct.load)
    assert set(re.findall(r"\bseg\.(\w+)", code)) <= set(dir(Segmenter))
    assert set(re.findall(r"\bpred\.(\w+)", code)) <= {f.name for f in dataclasses.fields(Prediction)}
    assert {"predict", "predict_folder", "segment_slide"} <= set(re.findall(r"\bseg\.(\w+)\(", code))
