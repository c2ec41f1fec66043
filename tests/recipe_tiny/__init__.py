"""A tiny generator made by following CONTRIBUTING.md: model, stage, training, CLI, registry."""
