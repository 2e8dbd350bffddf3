"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class CaptionerError(Exception):
    """Base class: the message says what went wrong and what to do next."""


class ImageError(CaptionerError):
    """An image could not be read, decoded or is unsafe to decode."""


class DatasetError(CaptionerError):
    """A dataset folder or annotation file is missing or of the wrong layout."""


class CheckpointError(CaptionerError):
    """A checkpoint is missing, from another version, or does not match its config."""
