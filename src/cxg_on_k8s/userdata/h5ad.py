"""A wrong or truncated dataset must be refused at fetch time with the reason, not make cellxgene
fail late and obscurely after the pod looked healthy. Every .h5ad is an HDF5 file whose
superblock records how long it must be, which is checked without h5py in the data containers'
image.
"""

from __future__ import annotations

import struct
from pathlib import Path

from cxg_on_k8s.userdata.errors import ExitCode, UserDataError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock, of 512 bytes or a larger power of two.
_USER_BLOCK_MIN = 512
_UNDEFINED_ADDRESS = 0xFFFFFFFFFFFFFFFF


def _hdf5_end(superblock: bytes) -> int | None:
    """File size the HDF5 superblock records (its absolute end-of-file address); None if unknown.

    Layouts from the HDF5 file format specification, section II.A: versions 0 and 1 keep the
    address after 16 (v0) or 20 (v1) bytes of fixed fields plus base and free-space addresses;
    versions 2 and 3 after 4 bytes plus base and extension addresses. libhdf5 refuses a file
    shorter than this ("truncated file"), and so does this check.
    """
    if len(superblock) < 13:
        return None
    version = superblock[8]
    if version in (0, 1):
        size_of_offsets = superblock[13]
        start = (24 if version == 0 else 28) + 2 * size_of_offsets
    elif version in (2, 3):
        size_of_offsets = superblock[9]
        start = 12 + 2 * size_of_offsets
    else:
        return None
    formats = {2: "<H", 4: "<I", 8: "<Q"}
    if size_of_offsets not in formats or len(superblock) < start + size_of_offsets:
        return None
    (end,) = struct.unpack_from(formats[size_of_offsets], superblock, start)
    undefined = _UNDEFINED_ADDRESS >> (64 - 8 * size_of_offsets)
    return None if end == undefined else end


def check_h5ad(path: Path, *, source: str) -> None:
    """Raise CORRUPT unless ``path`` is a complete HDF5 file, as every .h5ad is.

    Checks the signature (at 0, 512, 1024, ... since HDF5 allows a user block) and that the file
    is as long as its superblock says, which catches a truncated upload without needing h5py.
    """
    size = path.stat().st_size
    fix = "Fix: upload the .h5ad again (written by anndata's write_h5ad) or correct spec.dataset."
    if size == 0:
        raise UserDataError(ExitCode.CORRUPT, f"dataset {source}: the file is empty. {fix}")
    with path.open("rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
        offset = 0
        while offset < size:
            f.seek(offset)
            superblock = f.read(64)
            if superblock.startswith(HDF5_SIGNATURE):
                end = _hdf5_end(superblock)
                if end is not None and end > size:
                    raise UserDataError(
                        ExitCode.CORRUPT,
                        f"dataset {source}: truncated .h5ad ({size} bytes, its HDF5 superblock says {end}). {fix}",
                    )
                return
            offset = _USER_BLOCK_MIN if offset == 0 else offset * 2
    raise UserDataError(
        ExitCode.CORRUPT,
        f"dataset {source}: not an .h5ad (no HDF5 signature; the file starts with {head!r}). {fix}",
    )
