"""Reports: the before/after refinement table and self-contained HTML pages of a run."""
