"""`linearizer train-classifier`: the offline FID feature extractor, trained once and cached."""

from __future__ import annotations

import argparse

from ..cli import add_verb
from .classifier import add_classifier_arguments, run_train_classifier


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the metrics utilities (top level: they belong to no model kind) to the `linearizer` console script."""
    add_classifier_arguments(add_verb(subparsers, "train-classifier", run_train_classifier,
                                      help="train (or load) the MNIST classifier behind the offline FID"))
