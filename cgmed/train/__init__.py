"""Fine-tuning: ``python -m cgmed.train`` (also ``cgmed-train``) runs :func:`cgmed.train.loop.train`."""
