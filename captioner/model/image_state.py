"""What a decoder keeps once per image while the searches reorder its rows (beams, samples).

`ImageState` is the one per-image state of both backends: the Transformer's cross-attention keys,
values and memory bias, which the PyTorch step (`decoders.TransformerDecoder`) and the ONNX
Runtime one (`onnx_backend.OnnxDecoder`) both read through `grouped`.
"""
from __future__ import annotations

import torch


def image_blocks(image_of_row: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the image of each block of rows (G,), rows a block): rows in equal consecutive blocks, one
    per image, as the searches keep them, are one block per image; any other order, a block per row."""
    images, counts = torch.unique_consecutive(image_of_row, return_counts=True)  # (G,), (G,)
    if bool((counts == counts[0]).all()) and len(images.unique()) == len(images):
        return images, int(counts[0])
    return image_of_row, 1


class ImageState:
    """Tensors kept once per image (name -> (N, ...)), and the image of each row (R,).

    The searches reorder rows with `index_select` after every step; here that only re-maps rows
    to images, so nothing is copied per beam (copying the cross-attention state took a fifth of a
    folder's beam search). Reorderings share the images last gathered, so a step copies per-image
    tensors only when the set of images changes (the first step, or images finished and left)."""

    def __init__(self, tensors: dict[str, torch.Tensor], image_of_row: torch.Tensor, gathered: dict | None = None):
        self.tensors = tensors  # name -> (N, ...), N images
        self.image_of_row = image_of_row  # (R,) which of the N images each row belongs to
        self._gathered = gathered if gathered is not None else {}  # shared by reorderings: the images last selected

    def index_select(self, dim: int, indices: torch.Tensor) -> "ImageState":
        assert dim == 0, "rows are on dim 0"
        return ImageState(self.tensors, self.image_of_row.index_select(0, indices), self._gathered)

    def grouped(self) -> dict[str, torch.Tensor]:
        """The tensors of each group of rows (G, ...): rows that come in equal blocks per image (as
        beam search and sampling keep them) are one group per image; any other order, one group per row."""
        images, _ = image_blocks(self.image_of_row)  # (G,)
        key = images.tolist()
        if self._gathered.get("key") != key:
            every_image = key == list(range(len(next(iter(self.tensors.values())))))
            self._gathered.update(key=key, tensors={name: tensor if every_image else tensor.index_select(0, images) for name, tensor in self.tensors.items()})
        return self._gathered["tensors"]
