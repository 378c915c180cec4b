"""facenet-pytorch's MTCNN state dicts -> one safetensors file, for the torch-free preprocess worker.

facenet-pytorch 2.6.0 ships ``pnet.pt``, ``rnet.pt`` and ``onet.pt``: plain state dicts of its
``PNet``, ``RNet`` and ``ONet``. Every tensor is kept as float32 under ``<net>.<torch name>``
(``pnet.conv1.weight`` ...), and the set is checked against the shapes those modules declare, so
``shared.contract.features.mtcnn`` can load them with ``safetensors.numpy``. The landmark head
(``onet.dense6_3``) is kept too: the file is the networks as published.
"""

from __future__ import annotations

from pathlib import Path

NETS = ("pnet", "rnet", "onet")
# The shapes facenet-pytorch's modules declare (mtcnn.py): a state dict that differs is not theirs.
SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "pnet": {
        "conv1.weight": (10, 3, 3, 3), "conv1.bias": (10,), "prelu1.weight": (10,),
        "conv2.weight": (16, 10, 3, 3), "conv2.bias": (16,), "prelu2.weight": (16,),
        "conv3.weight": (32, 16, 3, 3), "conv3.bias": (32,), "prelu3.weight": (32,),
        "conv4_1.weight": (2, 32, 1, 1), "conv4_1.bias": (2,),
        "conv4_2.weight": (4, 32, 1, 1), "conv4_2.bias": (4,),
    },
    "rnet": {
        "conv1.weight": (28, 3, 3, 3), "conv1.bias": (28,), "prelu1.weight": (28,),
        "conv2.weight": (48, 28, 3, 3), "conv2.bias": (48,), "prelu2.weight": (48,),
        "conv3.weight": (64, 48, 2, 2), "conv3.bias": (64,), "prelu3.weight": (64,),
        "dense4.weight": (128, 576), "dense4.bias": (128,), "prelu4.weight": (128,),
        "dense5_1.weight": (2, 128), "dense5_1.bias": (2,),
        "dense5_2.weight": (4, 128), "dense5_2.bias": (4,),
    },
    "onet": {
        "conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "prelu1.weight": (32,),
        "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,), "prelu2.weight": (64,),
        "conv3.weight": (64, 64, 3, 3), "conv3.bias": (64,), "prelu3.weight": (64,),
        "conv4.weight": (128, 64, 2, 2), "conv4.bias": (128,), "prelu4.weight": (128,),
        "dense5.weight": (256, 1152), "dense5.bias": (256,), "prelu5.weight": (256,),
        "dense6_1.weight": (2, 256), "dense6_1.bias": (2,),
        "dense6_2.weight": (4, 256), "dense6_2.bias": (4,),
        "dense6_3.weight": (10, 256), "dense6_3.bias": (10,),
    },
}  # fmt: skip


def convert_mtcnn(folder: Path, output: Path) -> None:
    """``folder``/{pnet,rnet,onet}.pt -> ``output`` (safetensors)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for net in NETS:
        # weights_only: the files are pinned by sha256, and still no pickle code may run from them.
        state = torch.load(folder / f"{net}.pt", map_location="cpu", weights_only=True)
        shapes = {name: tuple(value.shape) for name, value in state.items()}
        if shapes != SHAPES[net]:
            raise ValueError(f"{net}.pt is not facenet-pytorch's {net.upper()}: tensors {shapes}")
        tensors |= {
            f"{net}.{name}": value.detach().to(torch.float32).contiguous() for name, value in state.items()
        }
    save_file(tensors, str(output), metadata={"source": "facenet-pytorch 2.6.0 data/{pnet,rnet,onet}.pt"})
