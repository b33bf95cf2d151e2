"""`python -m construct` behaves like the `construct` console script (needed for torchrun)."""

from construct.cli import main

if __name__ == "__main__":
    main()
