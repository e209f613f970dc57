"""``python -m cgmed.train`` so launchers can run ``accelerate launch ... -m cgmed.train`` / ``torchrun -m``."""

from cgmed.cli.train import main

if __name__ == "__main__":
    main()
