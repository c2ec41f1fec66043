"""Training entry points: one module per model, each writing a weights folder."""
