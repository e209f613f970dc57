"""Evaluation: answer parsing, option scoring / generation, accuracy with intervals."""
