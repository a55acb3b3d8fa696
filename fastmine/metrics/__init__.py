"""Evaluation metrics: FID, KMMD, MV and target share on pluggable feature extractors.

The offline default extractor is a small digits classifier shipped with fastmine
(``weights/digits_classifier.safetensors``); Inception-v3 features are available when
their weights file is on disk (``inception_weights``) -- nothing is ever downloaded.
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
