"""The OpenVINO backend: the segmentation network exported to OpenVINO's model format once, and
compiled by OpenVINO's CPU plugin for each input shape it meets.

OpenVINO (``pip install kidneyssl[openvino]``) is optional and imported only here, inside
functions. Export traces the network's module path (``forward`` with autograd on, so none of the
CPU inference shortcuts of :mod:`kidneyssl.models.cpu_forward` or ``blocks.Conv3d`` enter the
graph) with a free input shape, and is cached in the user's cache folder under
``openvino/<digest>-ov<version>/model.xml``: the digest covers the network's architecture
(``repr``) and every weight, so a changed checkpoint (or a network still training) gets its own
export, and an OpenVINO upgrade re-exports. The most recently used :data:`KEEP_EXPORTS` exports
are kept.

The export computes GroupNorm from per-channel means (two reductions over the voxels, then
per-channel scale and shift) instead of PyTorch's ``group_norm``: OpenVINO lowers the latter to a
reshape to (groups, rest) and a normalisation that needs the plain channel-first layout, and the
layout conversions around every one of the 38 GroupNorms took about a third of a half volume's
time; the per-channel form keeps the convolutions' blocked layout (``results/backends.json``).
Each mean over the voxels is taken one axis at a time, as a sum divided by the axis length:
OpenVINO merges consecutive ``ReduceMean`` ops (and a mean over several axes is one) into a single
reduction whose float32 accumulation over a whole half volume drifts, so float32 OpenVINO masks
differed from PyTorch's; a sum followed by a division is not merged, and no sum spans more than one
axis (``results/openvino_fp32_accuracy.json``).

Compilation is per static input shape: a model compiled for one shape ran a half volume faster
than the same model compiled with free dimensions (``results/backends.json``), and compiling takes
a fraction of a second. Only the latest compiled model is kept in memory, since each holds its
activation memory. Compiled models are kept on disk (``<cache>/openvino-compiled/<key>.blob``, the
:data:`KEEP_COMPILED` most recent), since loading one is faster than compiling it
(``results/openvino_compile_cache.json``). They are exported and imported here rather than through
OpenVINO's own model cache (``CACHE_DIR``): that cache rewrites a blob in place while another
process may be reading it through a memory map, which killed that process with SIGBUS (two
``torchrun`` ranks predicting at once, or two ``predict`` runs); each blob here is written to a
temporary name and renamed, and read whole, so a reader sees one complete blob or none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kidneyssl.inference.cache import cache_dir, prune, publish_folder, write_bytes
from kidneyssl.inference.device import cpu_model_name

__all__ = [
    "INSTALL_HINT",
    "KEEP_EXPORTS",
    "KEEP_COMPILED",
    "openvino_version",
    "model_digest",
    "export_openvino",
    "exported_model",
    "OpenVINONetwork",
]

log = logging.getLogger(__name__)

#: What to tell a user without OpenVINO.
INSTALL_HINT = "pip install kidneyssl[openvino]"
#: Exports kept in the cache folder (each ~10 MB for the paper network).
KEEP_EXPORTS = 8
#: Compiled models kept in ``<cache>/openvino-compiled`` (each ~12 MB for the paper network; one
#: per half-volume shape and precision).
KEEP_COMPILED = 16
_EXPORT_VERSION = 3
_EXAMPLE_SHAPE = (1, 1, 32, 32, 32)


def openvino_version() -> str | None:
    """OpenVINO's version string, or ``None`` when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(getattr(openvino, "__version__", "unknown"))


def model_digest(module: Any) -> str:
    """SHA-256 over the network's class, architecture (``repr``, which names every layer and
    GroupNorm grouping) and weights (every state-dict tensor's name, dtype, shape and bytes)."""
    import torch

    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _spatial_mean(x: Any, merged: bool = False) -> Any:
    """``x.mean(dim=(2, 3, 4), keepdim=True)``, exported as one sum per axis, each divided by that
    axis's length (see the module docstring); ``merged=True`` is the single multi-axis mean, for
    benchmarks."""
    if merged:
        return x.mean(dim=(2, 3, 4), keepdim=True)
    for dim in (4, 3, 2):
        x = x.sum(dim, keepdim=True) / x.shape[dim]
    return x


def _export_group_norm(norm: Any, merged_mean: bool = False) -> Any:
    """A module computing ``norm`` (an ``nn.GroupNorm`` over a 5-D input) from per-channel means:
    the group mean, then the mean square of the centred values (no cancellation), then one
    per-channel affine map. The same function as ``norm``; it exports to layout-neutral ops."""
    import torch

    class ChannelGroupNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.groups, self.eps = int(norm.num_groups), float(norm.eps)
            self.weight, self.bias = norm.weight, norm.bias

        def _per_channel(self, stat: torch.Tensor, n: int, c: int) -> torch.Tensor:
            # (N, C, 1, 1, 1) channel means -> their group's mean, repeated for each channel
            group = stat.reshape(n, self.groups, c // self.groups).mean(-1, keepdim=True)
            return group.expand(n, self.groups, c // self.groups).reshape(n, c, 1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, c = x.shape[0], x.shape[1]
            centred = x - self._per_channel(_spatial_mean(x, merged_mean), n, c)
            var = self._per_channel(_spatial_mean(centred * centred, merged_mean), n, c)
            scale = torch.rsqrt(var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight.view(1, c, 1, 1, 1)
            out = centred * scale
            return out + self.bias.view(1, c, 1, 1, 1) if self.bias is not None else out

    return ChannelGroupNorm()


#: GroupNorm forms an export can take: ``channel`` (shipped), and for benchmarks ``merged`` (the
#: per-channel form with one multi-axis mean, exports before version 3) and ``torch`` (PyTorch's).
GROUP_NORM_FORMS = ("channel", "merged", "torch")


def _logits_module(module: Any, group_norm: str = "channel") -> Any:
    """A copy of ``module`` returning its logits, with every GroupNorm in the ``group_norm`` form
    (:data:`GROUP_NORM_FORMS`)."""
    import copy

    import torch

    net = copy.deepcopy(module)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm) and group_norm != "torch":
                setattr(parent, name, _export_group_norm(child, merged_mean=group_norm == "merged"))

    class Logits(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            return getattr(out, "logits", out)

    return Logits(net).eval()


def export_openvino(module: Any, folder: Path, *, group_norm: str = "channel") -> Path:
    """Trace ``module`` (logits of a ``(1, 1, Z, Y, X)`` input, any multiple-of-16 size) and save
    it as ``folder/model.xml`` (+ ``model.bin``, float32 weights). Returns the ``.xml`` path.
    ``group_norm`` other than ``channel`` is for benchmarks (:data:`GROUP_NORM_FORMS`)."""
    if group_norm not in GROUP_NORM_FORMS:
        raise ValueError(f"group_norm must be one of {', '.join(GROUP_NORM_FORMS)}, got {group_norm!r}")
    import openvino as ov
    import torch

    wrapper = _logits_module(module, group_norm)  # a copy in eval mode: ``module`` is untouched
    # Autograd on: the traced graph is the plain module path (see the module docstring).
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape checks that do not enter the graph
        traced = torch.jit.trace(wrapper, torch.zeros(_EXAMPLE_SHAPE), check_trace=False)
    ov_model = ov.convert_model(traced, input=[ov.PartialShape([1, 1, -1, -1, -1])])
    xml = folder / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return xml


def exported_model(module: Any, folder: Path | None = None) -> Path:
    """The OpenVINO export of ``module``: from the cache when it holds this digest and OpenVINO
    version, else exported now (atomically). ``folder`` defaults to ``<cache>/openvino``."""
    version = openvino_version()
    if version is None:
        raise ImportError(f"OpenVINO is not installed ({INSTALL_HINT})")
    root = folder if folder is not None else cache_dir("openvino")
    target = root / f"{model_digest(module)[:32]}-ov{version.split('-')[0]}-e{_EXPORT_VERSION}"
    xml = target / "model.xml"
    if xml.is_file() and (target / "model.bin").is_file():
        os.utime(target)  # most recently used, for prune
        return xml
    t0 = time.perf_counter()
    publish_folder(target, lambda tmp: export_openvino(module, tmp))
    log.info("exported the network to OpenVINO in %.1f s: %s", time.perf_counter() - t0, target)
    prune(root, KEEP_EXPORTS)
    return xml


def _files_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _core() -> Any:
    """The process's one OpenVINO ``Core``, shared by every network: several ``Core``s in one
    process crash it with SIGSEGV (openvinotoolkit/openvino#35338), and one ``Core`` holds the
    plugins, which compile any number of models."""
    import openvino as ov

    return ov.Core()


class OpenVINONetwork:
    """A predictor ``(1, 1, Z, Y, X)`` float tensor -> logits tensor run by OpenVINO's CPU plugin.

    Args:
        xml: the exported model (:func:`exported_model`).
        precision: ``fp32`` or ``bf16`` (OpenVINO's inference-precision hint; a CPU without bf16
            support runs float32 whatever the hint).
        threads: OpenVINO's inference threads (the thread count the user set for torch).
    """

    def __init__(self, xml: Path, precision: str = "fp32", threads: int = 1) -> None:
        import openvino as ov

        self._ov = ov
        self._core = _core()
        self._model = self._core.read_model(str(xml))
        self._xml_key = _files_digest(Path(xml), Path(xml).with_suffix(".bin"))
        self.precision = precision
        self.threads = int(threads)
        self._shape: tuple[int, ...] | None = None
        self._request: Any = None
        self._compiled: Any = None
        #: Whether the latest compiled model was loaded from ``<cache>/openvino-compiled``.
        self.loaded_from_cache = False

    def _config(self) -> dict[str, Any]:
        return {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}

    def _blob_path(self, shape: tuple[int, ...]) -> Path:
        """Where the model compiled for ``shape`` is kept: keyed by the exported files, the shape,
        the compile settings, OpenVINO's version and the processor (a home folder may be shared
        by machines with other instruction sets)."""
        key = json.dumps({"model": self._xml_key, "shape": list(shape), "config": self._config(),
                          "openvino": openvino_version(), "cpu": cpu_model_name(),
                          "machine": platform.machine()}, sort_keys=True)
        return cache_dir("openvino-compiled") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.blob"

    def _load_compiled(self, blob: Path) -> Any:
        """The compiled model kept in ``blob``, or ``None`` (missing, pruned meanwhile, or not
        importable: written by another OpenVINO build, say)."""
        try:
            data = blob.read_bytes()
            compiled = self._core.import_model(data, "CPU", self._config())
        except Exception as err:  # noqa: BLE001 - any failure only means compiling again
            if blob.exists():
                log.debug("could not load the compiled model %s (%s); compiling again", blob, err)
            return None
        try:
            os.utime(blob)  # most recently used, for prune
        except OSError:
            pass
        return compiled

    def _compile(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        self._request = self._compiled = None  # free the previous shape's memory first
        t0 = time.perf_counter()
        blob = self._blob_path(shape)
        self._compiled = self._load_compiled(blob)
        self.loaded_from_cache = self._compiled is not None
        if self._compiled is None:
            model = self._model.clone()
            model.reshape({0: self._ov.PartialShape(list(shape))})
            self._compiled = self._core.compile_model(model, "CPU", self._config())
            # A cache that cannot be written is only a lost shortcut.
            write_bytes(blob, self._compiled.export_model().getvalue())
            prune(blob.parent, KEEP_COMPILED)
        self._request = self._compiled.create_infer_request()
        self._shape = shape
        log.debug("OpenVINO %s for %s (%s) in %.2f s", "loaded" if self.loaded_from_cache else "compiled",
                  "x".join(map(str, shape)), self.precision, time.perf_counter() - t0)

    @property
    def compiled_shape(self) -> tuple[int, ...] | None:
        """The input shape of the compiled model held in memory (``None``: none held)."""
        return self._shape

    def release(self) -> None:
        """Free the compiled model and its memory (compiled again on the next call)."""
        self._request = self._compiled = self._shape = None

    def __call__(self, x: Any) -> Any:
        import torch

        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        self._compile(tuple(array.shape))
        out = self._request.infer({0: array})
        return torch.from_numpy(np.array(out[0], dtype=np.float32, copy=True))
