"""A tiny generator added by following CONTRIBUTING.md: model, stage, training, registry entry."""
