"""`python -m rankalign`: the same as the `rankalign` command."""

from rankalign.cli import main

if __name__ == "__main__":
    main(prog_name="rankalign")
