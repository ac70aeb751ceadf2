"""Read and write NIfTI volumes with their geometry (nibabel's RAS+ affine convention).

Reading goes through SimpleITK, which decompresses a KiTS-size ``.nii.gz`` about 2-3x faster than
nibabel. This module is the only place that knows SimpleITK's conventions: its direction/origin
are LPS and its index order is (x, y, z) with the array returned as (z, y, x). We convert them once
so that :func:`read_volume` returns exactly what ``nibabel.load(path)`` would give: the same array
axis order (a transposed, zero-copy view of SimpleITK's buffer) and the same RAS+ affine.

SimpleITK (ITK's zlib reader) does **not** notice a truncated or corrupted gzip stream: it returns
zero-filled or garbled voxels without an error. So every ``.nii.gz`` read is verified against the
CRC-32 and length stored in the gzip trailer (hashing the decompressed bytes costs ~0.05 s for a
300 x 512 x 512 int16 volume); anything unusual falls back to a full streaming check with zlib.

Intensity scaling (``scl_slope``/``scl_inter``, e.g. uint16 with an intercept of -1024 HU) is
applied by SimpleITK; the size checks compare the file with its *stored* data type, not with the
scaled float array.

Geometry follows nibabel. When SimpleITK reads the header differently (a file with no qform and no
sform, or an sform whose scales disagree with pixdim), nibabel's affine is used, with a warning,
so that a mask written on the grid reads back in nibabel exactly like the input. A header with no
qform, no sform and zero voxel sizes describes no grid at all and is refused; so is a qform with
a zero voxel size (nibabel would read it as 1 mm) and a singular sform/qform. ITK's own warnings
are kept off stderr: what they mean is checked here and said in one line.

Before any voxel memory is allocated, the file's size is compared with what the header claims
(``.nii``: the file size; ``.nii.gz``: the gzip trailer's ISIZE, else deflate's largest expansion
or a bounded streaming count). NIfTI-2, which SimpleITK does not read, is read with nibabel.

Writing uses nibabel (explicit sform and qform from one affine, gzip level 1) through an atomic
temporary file, and the result reads back identically with nibabel and SimpleITK. NIfTI stores
voxels in Fortran order; a C-ordered array (what resampling returns) is first copied to Fortran
order by cache-sized tiles on a few threads (:func:`fortran_order`), because nibabel's own strided
copy is several times slower (``benchmarks/results/write_mask.json``).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np
from nibabel import orientations as nio

from kidneyssl.errors import DataError
from kidneyssl.io.atomic import atomic_path
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.system import available_cpus
from kidneyssl.types import shape3

__all__ = ["read_volume", "read_geometry", "write_volume", "write_mask", "fortran_order", "affine_from_sitk",
           "NIFTI_SUFFIXES"]

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk():
    import SimpleITK as sitk

    return sitk


def affine_from_sitk(direction: tuple[float, ...], spacing: tuple[float, ...],
                      origin: tuple[float, ...]) -> np.ndarray:
    """nibabel RAS+ affine from SimpleITK's LPS direction (row-major 3x3), spacing and origin.

    SimpleITK's index (i, j, k) is nibabel's array index, so the columns of ``direction @ diag
    (spacing)`` are the world steps of nibabel's array axes 0, 1, 2; only LPS -> RAS flips x and y.
    """
    direction_m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction_m @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def _check_exists(path: Path) -> None:
    if not path.is_file():
        from kidneyssl.io.paths import describe_missing

        if path.is_symlink() and not path.exists():
            raise DataError(path, "file", "an existing NIfTI file",
                            f"a broken symbolic link to {os.readlink(path)}", hint="the file it pointed to is gone")
        raise DataError(path, "file", "an existing NIfTI file", "missing" if not path.exists()
                        else "not a regular file", hint=describe_missing(path))


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """No ITK warnings on stderr while reading (multi-line C++ messages such as "unexpected
    scales in sform"): what they mean is checked here and said in one line."""
    sitk = _sitk()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _is_nifti2(path: Path) -> bool:
    """NIfTI-2 (a 540-byte header); SimpleITK's NIfTI reader knows NIfTI-1 only."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path), "rb") as fh:
            head = fh.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in struct.unpack("<i", head) + struct.unpack(">i", head)


def _check_affine(path: Path, affine: np.ndarray, source: str = "affine") -> None:
    """Refuse an affine that maps the grid to no volume (NaN, a zero or dependent column)."""
    a = np.asarray(affine, dtype=np.float64)
    columns = np.linalg.norm(a[:3, :3], axis=0) if np.isfinite(a).all() else np.zeros(3)
    if not (columns > 0).all() or abs(np.linalg.det(a[:3, :3])) <= 1e-6 * float(np.prod(columns)):
        raise DataError(path, "geometry", f"an invertible {source} (three independent voxel axes)",
                        f"a singular one {np.round(a[:3], 4).tolist()}",
                        hint="the header describes no 3-D grid; fix its sform/qform")


_AFFINE_ATOL_MM = 1e-3


def _raw_header(path: Path, header_class):
    """The NIfTI header as stored (no fixes applied, unlike ``nibabel.load``)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path), "rb") as fh:
        return header_class.from_fileobj(fh, check=False)


def _nibabel_affine(path: Path, itk_affine: np.ndarray) -> np.ndarray:
    """The affine nibabel reads for ``path`` when it differs from SimpleITK's, else ``itk_affine``.

    Raises:
        DataError: no qform, no sform and no usable voxel sizes (the header describes no grid).
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))  # header only
    except Exception:  # noqa: BLE001 - not a file nibabel reads: keep SimpleITK's geometry
        return itk_affine
    if not isinstance(image.header, nib.Nifti1Header):  # also Nifti2Header
        return itk_affine
    header = _raw_header(path, type(image.header))  # nibabel's load replaces a zero pixdim by 1
    zooms = [float(z) for z in header["pixdim"][1:4]]
    no_xform = int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0
    usable_zooms = all(np.isfinite(z) and z > 0 for z in zooms)
    if no_xform and not usable_zooms:
        raise DataError(path, "geometry", "voxel sizes (pixdim) or a qform/sform",
                        f"pixdim {zooms} and no qform/sform",
                        hint="the header describes no grid; set the voxel size and orientation")
    if int(header["sform_code"]) == 0 and not usable_zooms:  # the qform scales its axes by pixdim
        raise DataError(path, "geometry", "voxel sizes (pixdim[1..3]) > 0 for the qform",
                        f"pixdim {zooms}", hint="a zero voxel size would be read as 1 mm; set the voxel size")
    affine = np.asarray(cast(Any, image).affine, dtype=np.float64)
    if np.allclose(affine, itk_affine, atol=_AFFINE_ATOL_MM):
        return itk_affine
    _check_affine(path, affine, "sform/qform")
    axcodes = "".join(str(c) for c in nio.aff2axcodes(affine))
    if no_xform:
        log.warning("%s: geometry: no qform/sform, so orientation and origin are unknown; "
                    "following nibabel's convention (%s, origin at the centre): left/right may be "
                    "wrong", path.absolute(), axcodes)
    else:
        log.warning("%s: geometry: SimpleITK and nibabel read this header differently (max "
                    "difference %.4g); using nibabel's affine (%s), which masks are written with",
                    path.absolute(), float(np.abs(affine - itk_affine).max()), axcodes)
    return affine


def read_geometry(path: str | Path) -> Geometry:
    """The :class:`Geometry` of a NIfTI file from its header only (no voxel data is read).

    Raises:
        DataError: missing file, unreadable header, or not a 3-D scalar image.
    """
    path = Path(path)
    _check_exists(path)
    if path.name.endswith(NIFTI_SUFFIXES) and _is_nifti2(path):
        return _nifti2_geometry(path)
    reader = _header_reader(path)
    dims = _header_dims(reader)
    if len(dims) != 3 or reader.GetNumberOfComponents() != 1:
        raise DataError(path, "dimensions", "a 3-D scalar image", f"shape {tuple(dims)}"
                        + (f" with {reader.GetNumberOfComponents()} components"
                           if reader.GetNumberOfComponents() != 1 else ""))
    affine = affine_from_sitk(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    if path.name.endswith(NIFTI_SUFFIXES):
        affine = _nibabel_affine(path, affine)
    _check_affine(path, affine)
    return Geometry(affine=affine, shape=shape3(reader.GetSize()))


def _header_reader(path: Path):
    """A SimpleITK reader that has read ``path``'s header (no voxel data).

    Raises:
        DataError: unreadable header; a singular sform, which SimpleITK rejects with a matrix
            dump, is said in one line.
    """
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as err:
        if path.name.endswith(NIFTI_SUFFIXES):
            _diagnose_header(path)
        raise DataError(path, "header", "a readable NIfTI header", "unreadable file",
                        hint=_short(err)) from None
    return reader


def _diagnose_header(path: Path) -> None:
    """Say why SimpleITK could not read a header nibabel reads (a singular sform/qform)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        affine = np.asarray(cast(Any, image).affine, dtype=np.float64)
    except Exception:  # noqa: BLE001 - not a file nibabel reads either: SimpleITK's message stands
        return
    _check_affine(path, affine, "sform/qform")


def _nifti2_geometry(path: Path) -> Geometry:
    """Geometry of a NIfTI-2 file, from nibabel (SimpleITK does not read NIfTI-2)."""
    import nibabel as nib

    try:
        image = cast(Any, nib.load(str(path)))
    except Exception as err:  # noqa: BLE001 - nibabel's many header errors: one line
        raise DataError(path, "header", "a readable NIfTI-2 header", "unreadable file", hint=_short(err)) from None
    shape = tuple(int(n) for n in image.shape)
    if len(shape) != 3:
        raise DataError(path, "dimensions", "a 3-D scalar image", f"shape {shape}")
    header = image.header
    zooms = [float(z) for z in header["pixdim"][1:4]]
    if int(header["sform_code"]) == 0 and not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(path, "geometry", "voxel sizes (pixdim[1..3]) > 0", f"pixdim {zooms}",
                        hint="a zero voxel size would be read as 1 mm; set the voxel size")
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(path, affine, "sform/qform")
    return Geometry(affine=affine, shape=shape3(shape))


def _read_nifti2(path: Path, geometry: Geometry, check_nan: bool) -> Volume:
    """A NIfTI-2 file through nibabel (sizes, gzip stream and NaN/inf checked as for NIfTI-1)."""
    import nibabel as nib

    image = cast(Any, nib.load(str(path)))
    header = image.header
    stored = np.dtype(header.get_data_dtype())
    vox_offset = int(header["vox_offset"])
    _check_size(path, geometry.shape, stored.itemsize * 8, vox_offset)
    try:
        array = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(path, "data", "readable voxel data", "unreadable file", hint=_short(err)) from None
    if path.name.endswith(".gz"):
        _verify_gzip(path, array, vox_offset, False, int(np.prod(geometry.shape)) * stored.itemsize)
    if array.dtype.kind == "f" and array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    if check_nan and array.dtype.kind == "f":
        _refuse_non_finite(path, array)
    return Volume(array, geometry)


def _refuse_non_finite(path: Path, array: np.ndarray) -> None:
    lo, hi = np.min(array), np.max(array)
    if np.isfinite(lo) and np.isfinite(hi):
        return
    n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    found = " and ".join(f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "infinite")) if n) + " voxels"
    raise DataError(path, "values", "finite voxels (no NaN, no infinity)", found)


#: The largest expansion of deflate (zlib's worst case is 1032:1), plus room for gzip's header.
_MAX_DEFLATE_RATIO = 1032


def _check_size(path: Path, shape: tuple[int, ...], bitpix: int, vox_offset: int) -> None:
    """Refuse a file too small for what its header says, before any voxel memory is allocated.

    ``.nii``: the file size. ``.nii.gz``: the size stored in the gzip trailer (ISIZE, the
    decompressed size modulo 2**32); when it differs, a size beyond what deflate could expand
    this file to is refused at once, anything else is decompressed in a bounded stream (no
    voxel array) and counted.
    """
    needed = vox_offset + int(np.prod(shape, dtype=np.int64)) * max(int(bitpix), 8) // 8
    size = path.stat().st_size
    what = f"{needed} bytes of header and voxel data ({'x'.join(map(str, shape))} voxels of {bitpix} bits, " \
           "as the header says)"
    hint = "a truncated file or a wrong header; nothing was read"
    if not path.name.endswith(".gz"):
        if size < needed:
            raise DataError(path, "size", what, f"a file of {size} bytes", hint=hint)
        return
    if needed > _MAX_DEFLATE_RATIO * size + 1024:
        raise DataError(path, "size", what, f"a {size}-byte gzip file, which decompresses to at most "
                        f"{_MAX_DEFLATE_RATIO * size} bytes", hint=hint)
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, 2)
            (isize,) = struct.unpack("<I", fh.read(4))
    except OSError as err:
        raise DataError(path, "gzip", "an intact gzip stream", "unreadable file", hint=_short(err)) from None
    if isize == needed & 0xFFFFFFFF:
        return
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < needed and (chunk := fh.read(min(1 << 24, needed - total))):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(path, "gzip", "an intact gzip stream", "corrupt or truncated data",
                        hint=_short(err)) from None
    if total < needed:
        raise DataError(path, "size", what, f"{total} decompressed bytes", hint=hint)


def _header_dims(reader) -> list[int]:
    """The NIfTI ``dim`` field (SimpleITK silently drops trailing axes in some cases)."""
    try:
        ndim = int(reader.GetMetaData("dim[0]"))
        return [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1)]
    except RuntimeError:  # not a NIfTI file (no such key): trust SimpleITK's size
        return [int(s) for s in reader.GetSize()]


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:200] if text else type(err).__name__


class _ImageBuffer:
    """Exposes a SimpleITK image's pixel buffer to numpy and keeps the image alive with it."""

    def __init__(self, image) -> None:
        sitk = _sitk()
        self._image = image
        view = sitk.GetArrayViewFromImage(image)
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], False)  # we own the image: allow writes
        self.__array_interface__ = interface


def _verify_gzip(path: Path, data: np.ndarray, vox_offset: int, fast_ok: bool,
                 stored_nbytes: int | None = None) -> bool:
    """Raise DataError when the gzip stream of ``path`` is truncated or corrupt.

    Fast path: CRC-32 of (header bytes + the decoded voxel bytes) against the gzip trailer.
    Otherwise (multi-member gzip, scaled data, odd byte order, NaNs that niftilib replaced by
    0) decompress the stream with zlib.

    Args:
        stored_nbytes: bytes of voxel data in the file (its stored type, before any scaling);
            default ``data.nbytes``.

    Returns:
        True when ``data`` is byte-for-byte the file's voxel data (fast path succeeded).
    """
    stored_nbytes = data.nbytes if stored_nbytes is None else stored_nbytes
    with open(path, "rb") as fh:
        fh.seek(-8, 2)
        crc_stored, size_stored = struct.unpack("<II", fh.read(8))
    if fast_ok and data.flags.c_contiguous:
        expected_size = (vox_offset + data.nbytes) & 0xFFFFFFFF
        if expected_size == size_stored:
            with gzip.open(path, "rb") as fh:
                head = fh.read(vox_offset)
            crc = zlib.crc32(memoryview(cast(Any, data)).cast("B"), zlib.crc32(head))
            if crc == crc_stored:
                return True
    # Slow path: stream the whole file through zlib (checks every member's CRC and length).
    try:
        with gzip.open(path, "rb") as fh:
            total = 0
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(path, "gzip", "an intact gzip stream", "corrupt or truncated data",
                        hint=_short(err)) from None
    if total < vox_offset + stored_nbytes:
        raise DataError(path, "gzip", f"{vox_offset + stored_nbytes} decompressed bytes",
                        f"{total}")
    return False


def read_volume(path: str | Path, check_nan: bool = True) -> Volume:
    """Read a 3-D NIfTI image as a :class:`Volume` (array in nibabel's axis order, RAS+ affine).

    The array has the file's stored data type, or float (float32; float64 for float64 data)
    when the header scales the stored values (``scl_slope``/``scl_inter``: e.g. uint16 + intercept -1024 gives HU), and equals
    ``nibabel.load(path).get_fdata()`` (to float32 precision when scaled); it is a (Fortran-ordered) transposed
    view of SimpleITK's buffer, like nibabel's own arrays.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        check_nan: reject floating-point data containing NaN or +-infinity (without it, NaN
            voxels read as 0: SimpleITK's niftilib replaces them).

    NIfTI-2 files (which SimpleITK does not read) are read with nibabel, with the same checks.

    Raises:
        DataError: missing file (or a broken link), unreadable header, a header whose grid is
            singular or has a zero voxel size, a file smaller than its header says (checked before
            any voxel memory is allocated), corrupt/truncated gzip, not a 3-D scalar image, or
            NaN/infinite voxels. The message names the file.
    """
    path = Path(path)
    geometry = read_geometry(path)  # existence, header and 3-D checks
    if path.name.endswith(NIFTI_SUFFIXES) and _is_nifti2(path):
        return _read_nifti2(path, geometry, check_nan)
    reader = _header_reader(path)
    if path.name.endswith(NIFTI_SUFFIXES):  # before SimpleITK allocates what the header claims
        _check_size(path, geometry.shape, int(_meta_float(reader, "bitpix", 8.0)),
                    int(_meta_float(reader, "vox_offset", 352.0)))
    try:
        with _itk_warnings_off():
            image = reader.Execute()
    except RuntimeError as err:
        raise DataError(path, "data", "readable voxel data", "unreadable file",
                        hint=_short(err)) from None
    buffer = np.asarray(_ImageBuffer(image))  # (z, y, x) = nibabel order reversed
    if buffer.shape[::-1] != geometry.shape:
        raise DataError(path, "shape", f"{geometry.shape}", f"{buffer.shape[::-1]} voxels read")
    exact = False
    # Bytes of voxel data in the file: its stored type (bitpix), not the (scaled) array's.
    bitpix = int(_meta_float(image, "bitpix", 8.0 * buffer.itemsize))
    stored_nbytes = buffer.size * max(bitpix, 8) // 8
    if path.name.endswith(".gz"):
        fast_ok = (_meta_float(image, "scl_slope", 1.0) in (0.0, 1.0)
                   and _meta_float(image, "scl_inter", 0.0) == 0.0
                   and buffer.dtype.byteorder in ("=", "|", "<"))
        exact = _verify_gzip(path, buffer, int(_meta_float(image, "vox_offset", 352.0)),
                             fast_ok and stored_nbytes == buffer.nbytes, stored_nbytes)
    array = buffer.transpose(2, 1, 0)
    stored_float = int(_meta_float(image, "datatype", 16.0 if array.dtype.kind == "f" else 0.0)) in (16, 64, 1536)
    if check_nan and stored_float and np.issubdtype(array.dtype, np.floating):
        # niftilib (inside SimpleITK) silently replaces NaN by 0; when the buffer is not
        # byte-identical to the file, look at the file itself (nibabel; rare, slower).
        _refuse_non_finite(path, buffer if exact else _stored_floats(path))
    return Volume(array, geometry)


def _stored_floats(path: Path) -> np.ndarray:
    import nibabel as nib

    data = np.asanyarray(cast(Any, nib.load(str(path))).dataobj)
    return data if np.issubdtype(data.dtype, np.floating) else np.zeros(1, np.float32)


def _meta_float(image, key: str, default: float) -> float:
    try:
        return float(image.GetMetaData(key))
    except (RuntimeError, ValueError):
        return default


def _nifti_suffix(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: output must end with .nii.gz or .nii")


def fortran_order(array: np.ndarray, tile: int = 32, threads: int | None = None) -> np.ndarray:
    """``array`` (3-D) in Fortran memory order: itself when it already is, else a copy made tile
    by tile (``tile`` x ``tile`` columns of the last two axes, whole along the first, so source and
    target of each copy stay in cache) on ``threads`` threads (default: the available cores, at
    most 4; numpy releases the GIL while copying)."""
    if array.ndim != 3 or array.flags.f_contiguous:
        return array
    if threads is None:
        threads = min(4, available_cpus())
    out = np.empty(array.shape[::-1], dtype=array.dtype)  # C order of the reversed axes

    def columns(j0: int) -> None:
        for k0 in range(0, array.shape[2], tile):
            out[k0:k0 + tile, j0:j0 + tile, :] = array[:, j0:j0 + tile, k0:k0 + tile].T

    starts = range(0, array.shape[1], tile)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(columns, starts))
    else:
        for j0 in starts:
            columns(j0)
    return out.T


def write_volume(array: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write ``array`` with ``geometry`` as NIfTI (``.nii.gz`` or ``.nii``), atomically.

    The stored data type is ``array``'s. sform and qform both encode ``geometry.affine`` (code 1,
    scanner), so nibabel and SimpleITK read back the same affine.

    Raises:
        ValueError: ``array``'s shape differs from ``geometry.shape``, or a bad file suffix.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _nifti_suffix(path)
    array = np.asarray(array)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"{path}: array shape {array.shape} differs from geometry shape "
                         f"{geometry.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(fortran_order(array), geometry.affine)
    image.set_sform(geometry.affine, code=1)
    image.set_qform(geometry.affine, code=1)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(image, tmp)
    return path


def write_mask(mask: np.ndarray, path: str | Path, like: Geometry) -> Path:
    """Write a label mask (uint8) on the grid ``like`` (e.g. the input scan's geometry).

    Raises:
        ValueError: the mask's shape differs from ``like.shape`` or its values do not fit uint8
            integers (0..255).
    """
    mask = np.asarray(mask)
    if tuple(mask.shape) != like.shape:
        raise ValueError(f"{path}: mask shape {mask.shape} differs from the reference grid "
                         f"{like.shape}; map predictions back with PreprocessRecord.restore first")
    if mask.dtype != np.uint8:
        if mask.dtype != bool:
            lo, hi = (mask.min(), mask.max()) if mask.size else (0, 0)
            if lo < 0 or hi > 255 or (np.issubdtype(mask.dtype, np.floating)
                                      and not np.array_equal(mask, np.round(mask))):
                raise ValueError(f"{path}: mask values must be integers in 0..255, "
                                 f"found range [{lo}, {hi}]")
        mask = mask.astype(np.uint8)
    return write_volume(mask, like, path)
