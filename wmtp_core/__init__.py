"""WMTP core library: model, data, weighting, training and evaluation. Imports neither dagster nor dvc."""

__version__ = "0.1.0"
