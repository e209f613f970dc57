"""The CG protocol of the Med-MAT paper: Baseline / Baseline+ / Trained per held-out target, and its report."""
