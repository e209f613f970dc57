"""``python -m cgmed.cg`` (for torchrun / accelerate launch)."""

from cgmed.cli.cg import main

if __name__ == "__main__":
    main()
