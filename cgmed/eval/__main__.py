"""``python -m cgmed.eval`` (for torchrun / accelerate launch)."""

from cgmed.cli.eval import main

if __name__ == "__main__":
    main()
