"""Evaluation metrics: FID, KMMD, MV and target share on pluggable feature extractors.

The digits' extractor is a small classifier shipped with fastmine
(``weights/digits_classifier.safetensors``); Inception-v3 (the FID standard for 3-channel
images) and LPIPS's AlexNet use their published weights, fetched on first use into fastmine's
cache (:mod:`fastmine.hub`), or local files given explicitly.
"""

from .features import (
    DIGITS_WEIGHTS_PATH,
    INCEPTION_WEIGHTS_FILENAME,
    DigitsFeatureNet,
    InceptionFeatures,
    digits_weights_metadata,
    get_feature_extractor,
    load_digits_feature_net,
)
from .scores import extract, fid, kmmd, mv, target_share

__all__ = [
    "DIGITS_WEIGHTS_PATH",
    "INCEPTION_WEIGHTS_FILENAME",
    "DigitsFeatureNet",
    "InceptionFeatures",
    "digits_weights_metadata",
    "get_feature_extractor",
    "load_digits_feature_net",
    "extract",
    "fid",
    "kmmd",
    "mv",
    "target_share",
]
