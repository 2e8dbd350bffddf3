"""The model: the encoder and decoder networks, the concept detector, the vocabulary, the model config and model folders (save and load)."""
