"""`linearizer train-classifier`: the offline FID feature extractor, trained once and cached."""

from __future__ import annotations

import argparse

from .classifier import add_classifier_arguments, run_train_classifier


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the metrics commands to the `linearizer` console script."""
    p = subparsers.add_parser("train-classifier", help="train (or load) the MNIST classifier behind the offline FID")
    add_classifier_arguments(p).set_defaults(func=run_train_classifier)
