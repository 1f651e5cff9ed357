"""The digest of a network's weights that a bundle's manifest records (``weights_sha256``).

A device's templates are comparable only with codes of the network that made them: it records
this digest beside them and refuses a bundle of other weights (``agent.store``). The digest is
taken over the tensors themselves, not the checkpoint file, so that saving the same weights again
(another pickle protocol, another torch version, the keys in another order) keeps it, and every
format and precision exported from one checkpoint carries the same value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors sorted by name: for each, its name, dtype and shape (each
    length-prefixed, so no two state dicts share a byte stream), then its raw bytes, on the
    CPU, contiguous, in the machine's (little-endian) byte order."""
    import torch  # here: the command line's --help must not wait for torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        t = tensor.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        for part in (name, str(t.dtype), repr(tuple(t.shape))):
            field = part.encode("utf-8")
            h.update(len(field).to_bytes(8, "little") + field)
        h.update(len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()
