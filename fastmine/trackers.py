"""Streaming a run to experiment trackers through Accelerate's tracker API.

``log.trackers`` names them (``[tensorboard]``, ``[wandb, tensorboard]``: any name Accelerate
knows); unset, a run with a folder streams to TensorBoard when it is installed (``pip install
'fastmine[tensorboard]'``: offline event files in ``RUN_DIR/trackers/``), and to nothing
otherwise. Every logged row goes out as scalars (a list such as the selector π as one scalar
per entry), every sample grid as an image, the run's settings as hyperparameters. Only the
main process writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import leaves, to_dict


def resolve_names(names) -> list:
    """The trackers to start (names are checked in config.validate)."""
    if names is None:
        # Accelerate, imported when a run starts rather than with fastmine (it takes a while)
        from accelerate.utils import is_tensorboard_available

        return ["tensorboard"] if is_tensorboard_available() else []
    return list(names)


def scalars(row: dict) -> dict:
    """The numbers of a metrics row; a list becomes one entry per element (``selector_probs/0``)."""
    out = {}
    for key, value in row.items():
        if key == "step":
            continue
        if isinstance(value, (list, tuple)):
            out.update({f"{key}/{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Trackers:
    """The run's trackers, started with its settings; a no-op when there are none."""

    def __init__(self, names, run_dir, config):
        self.items = []
        names = resolve_names(names)
        if names:
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            run_name, folder = Path(run_dir).name, str(Path(run_dir) / "trackers")
            tracker = cls(run_name, folder) if cls.requires_logging_directory else cls(run_name)
            tracker.start()
            # hyperparameters must be plain values: lists and mappings go as their text
            params = {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
                      for k, v in leaves(to_dict(config))}
            tracker.store_init_configuration(params)
            self.items.append(tracker)

    def log(self, row: dict, step: int):
        values = scalars(row)
        for tracker in self.items:
            tracker.log(values, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int):
        """``image``: uint8 [H, W, C]."""
        for tracker in self.items:
            if tracker.name == "tensorboard":
                tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({name: [image]}, step=step)

    def finish(self):
        for tracker in self.items:
            tracker.finish()
        self.items = []
