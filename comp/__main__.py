"""``python -m comp`` runs the CLI (and lets ``torchrun -m comp`` start it)."""

from comp.cli import main

if __name__ == "__main__":
    main()
