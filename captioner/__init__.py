"""captioner: photo in, English caption out. A frozen EfficientNet-Lite encoder, a feature cache,
trainable LSTM / attention / Transformer decoders, beam search and coco-caption metrics."""
from .api import Caption, Captioner, list_models
from .errors import CaptionerError, CheckpointError, DatasetError, ImageError

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "CaptionerError", "CheckpointError", "DatasetError", "ImageError", "__version__", "list_models"]
