"""The network as inference runs it: which backend, which precision, and the state that goes
with them (an OpenVINO export and its compiled model).

Backends:

- ``torch``: the network's own modules; on a CPU through its fused inference pass
  (:meth:`DenseUNet3D.inference_forward <kidneyssl.models.unet.DenseUNet3D.inference_forward>`),
  chosen here explicitly; bf16 by ``torch.autocast``.
- ``openvino``: the network exported once and run by OpenVINO's CPU plugin
  (:mod:`kidneyssl.inference.ov_backend`); bf16 by OpenVINO's precision hint. CPU only.
- ``auto``: ``openvino`` when it is installed and the network runs on a CPU, else ``torch``; and
  ``torch`` again once the precision is float32 (asked, measured or after the bf16 mask check):
  OpenVINO's float32 pass is no faster end to end than PyTorch's fused one and needs more memory
  (``results/predict.json``); its gain is bf16.

Who uses which: :func:`kidneyssl.inference.predict.load_model` (``predict``, ``locate``, the
experiment's Table 1) returns an :class:`InferenceModel` with ``backend="auto"``, so the scores of
Table 1 and the masks of ``predict`` come from the same backend and precision. A bare
``nn.Module`` given to :func:`~kidneyssl.inference.segment.segment_image` (validation during
training, whose weights change every epoch) runs on ``torch`` unless a backend is asked for;
asking for ``openvino`` there exports the current weights (a new cache entry per epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Callable, Literal

from kidneyssl.errors import KidneySSLError
from kidneyssl.inference.ov_backend import INSTALL_HINT, openvino_version
from kidneyssl.inference.precision import (
    CHECK_MAX_SCANS,
    PROBE_SHAPE,
    AgreementCheck,
    PrecisionChoice,
    choose_precision,
)
from kidneyssl.inference.strategy import Precision

__all__ = ["Backend", "BACKENDS", "resolve_backend", "torch_logits", "InferenceModel"]

log = logging.getLogger(__name__)

Backend = Literal["torch", "openvino"]
#: Values of a backend request.
BACKENDS = ("auto", "torch", "openvino")


def resolve_backend(requested: str, device: Any = "cpu") -> tuple[Backend, str]:
    """``(backend, why)`` for a request of ``auto``, ``torch`` or ``openvino`` on ``device``.

    Raises:
        ValueError: an unknown request.
        KidneySSLError: ``openvino`` asked for but not installed, or for a non-CPU device.
    """
    import torch

    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    dev = torch.device(device)
    if requested == "torch":
        return "torch", "asked"
    installed = openvino_version() is not None
    if requested == "openvino":
        if dev.type != "cpu":
            raise KidneySSLError(f"the OpenVINO backend runs on the CPU, not on {dev}; use the torch backend there")
        if not installed:
            raise KidneySSLError(f"OpenVINO is not installed: {INSTALL_HINT}, or use the torch backend")
        return "openvino", "asked"
    if dev.type != "cpu":
        return "torch", f"auto: network on {dev.type}"
    if not installed:
        return "torch", f"auto: OpenVINO not installed ({INSTALL_HINT} for faster CPU inference)"
    return "openvino", "auto: OpenVINO installed, network on the CPU"


def torch_logits(module: Any, x: Any) -> Any:
    """Logits of ``module`` for ``x`` with autograd off: its ``inference_forward`` (the fused CPU
    pass of ``DenseUNet3D``) when it has one, else ``module(x)`` (``.logits`` if it has them)."""
    forward = getattr(module, "inference_forward", None)
    if callable(forward):
        return forward(x)
    out = module(x)
    return getattr(out, "logits", out)


class InferenceModel:
    """A segmentation network ready for inference, with its backend and precision.

    Args:
        module: the network (``nn.Module`` in ``eval()`` mode returning logits or a
            ``SegmentationOutput``), on ``device``.
        backend: ``auto``, ``torch`` or ``openvino`` (see the module docstring).
        precision: ``auto`` (speed measured once per machine, mask agreement once per
            checkpoint: :mod:`kidneyssl.inference.precision`), ``fp32`` or ``bf16``.
        device: where the network runs.
        threads: CPU threads for OpenVINO and the probe's cache key (default: torch's setting).

    Attributes:
        backend, backend_reason: what runs the network, and why.
    """

    def __init__(self, module: Any, *, backend: str = "auto", precision: str = "auto", device: Any = "cpu",
                 threads: int | None = None) -> None:
        import torch

        self.module = module
        self.device = torch.device(device)
        self.backend, self.backend_reason = resolve_backend(backend, self.device)
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        self.requested_precision = precision
        self.threads = int(threads) if threads else torch.get_num_threads()
        self._choice: PrecisionChoice | None = None
        self._agreement: AgreementCheck | None = None
        self._openvino: Any = None
        self._announced = False
        self._xml: Any = None
        if precision == "fp32":
            self._choice = PrecisionChoice("fp32", "asked")
            self._settle_backend()
        if self.backend == "openvino":
            self._export()

    def _export(self) -> None:
        """Export for OpenVINO now (cached per weights); when ``auto`` chose OpenVINO and the
        network cannot be exported, fall back to torch with a warning."""
        from kidneyssl.inference.ov_backend import exported_model

        try:
            self._xml = exported_model(self.module)
        except Exception as err:  # noqa: BLE001 - tracing or conversion can fail in many ways
            if not self.backend_reason.startswith("auto"):
                raise
            log.warning("OpenVINO could not export this network (%s: %s); using the torch backend",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.backend, self.backend_reason = "torch", "auto: OpenVINO export failed"

    # --- precision -----------------------------------------------------------------------------

    @property
    def precision_choice(self) -> PrecisionChoice:
        """The precision and why (measured on first use for ``auto``; bf16 chosen by speed gives
        way to fp32 where this checkpoint's bf16 masks are known to disagree)."""
        if self._choice is None:
            choice = choose_precision(self.requested_precision, self.device, backend=self.backend,
                                      probe=self._probe, threads=self.threads, model_key=self._architecture_key())
            if self.requested_precision == "auto" and choice.precision == "bf16":
                from kidneyssl.inference.ov_backend import model_digest

                self._agreement = AgreementCheck(self.backend, self.threads, model_digest(self.module))
                if self._agreement.verdict is not None:
                    choice = self._after_check(choice)
            self._choice = choice
            self._settle_backend()
        return self._choice

    def _settle_backend(self) -> None:
        """``auto`` leaves OpenVINO for torch once the precision is float32 (module docstring)."""
        if (self.backend == "openvino" and self.backend_reason.startswith("auto") and self._choice is not None
                and self._choice.precision == "fp32"):
            self.backend, self.backend_reason = "torch", "auto: float32 runs on PyTorch's fused pass"
            self._openvino = None

    def _after_check(self, choice: PrecisionChoice) -> PrecisionChoice:
        """``choice`` once the check has ended: bf16 where its masks agreed, else fp32 (they
        disagreed, or the scans held too few mask voxels to tell)."""
        assert self._agreement is not None
        verdict, said = self._agreement.verdict, self._agreement.describe()
        if verdict:
            return dataclasses.replace(choice, note=said)
        return dataclasses.replace(choice, precision="fp32", note=said if verdict is None else f"not bf16: {said}")

    @property
    def agreement_pending(self) -> bool:
        """``auto`` chose bf16 by speed and the next scans decide whether its masks agree (they
        run in both precisions, float32 first: plan memory for float32)."""
        choice = self.precision_choice
        return (choice.precision == "bf16" and self._agreement is not None and self._agreement.verdict is None
                and self._agreement.scans < CHECK_MAX_SCANS)

    @property
    def precision(self) -> Precision:
        return self.precision_choice.precision

    def _architecture_key(self) -> str:
        return hashlib.sha256(repr(self.module).encode()).hexdigest()[:16]

    def _probe(self, precision: Precision) -> Callable[[], Any]:
        import torch

        x = torch.randn((1, 1, *PROBE_SHAPE), generator=torch.Generator().manual_seed(0))
        if self.backend == "openvino":
            net = self._openvino_network(precision)
            return lambda: net(x)
        return lambda: self._torch_run(x, precision)

    # --- running -------------------------------------------------------------------------------

    def _torch_run(self, x: Any, precision: Precision) -> Any:
        import contextlib

        import torch

        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == "bf16" \
            else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return torch_logits(self.module, x)

    def _openvino_network(self, precision: Precision) -> Any:
        from kidneyssl.inference.ov_backend import OpenVINONetwork

        return OpenVINONetwork(self._xml, precision, self.threads)

    def _run(self, x: Any, precision: Precision) -> Any:
        if self.backend == "torch":
            return self._torch_run(x.to(self.device), precision)
        if self._openvino is None or self._openvino.precision != precision:
            self._openvino = None  # free the other precision's compiled model first
            self._openvino = self._openvino_network(precision)
        return self._openvino(x)

    def logits(self, x: Any) -> Any:
        """``(B, 1, Z, Y, X)`` logits for ``x`` (on this model's device) in the chosen precision
        (bf16 while :attr:`agreement_pending`: use :meth:`segment` for whole scans, which checks)."""
        return self._run(x, self.precision)

    def segment(self, scan: Callable[[Callable[[Any], Any]], tuple[Any, Any]]) -> tuple[Any, Any]:
        """One scan: ``scan(logits)`` runs inference with ``logits`` and returns ``(result, final
        mask)``. While :attr:`agreement_pending` the scan runs twice, in PyTorch's float32 (what the
        bf16 masks must agree with, and what runs when they do not) and in this backend's bf16; the
        two final masks go to the check, and the result is the kept precision's, so a scan's mask
        does not depend on whether it came first (bf16's while still undecided, as the scans after
        a positive check get)."""
        if not self.agreement_pending:
            return scan(self.logits)
        assert self._agreement is not None and self._choice is not None
        self.release()  # a compiled model held from an earlier scan would add to the float32 pass
        reference = scan(lambda x: self._torch_run(x.to(self.device), "fp32"))
        low = scan(lambda x: self._run(x, "bf16"))
        if self._agreement.add(reference[1], low[1]) is None and self._agreement.scans < CHECK_MAX_SCANS:
            return low
        self._choice = self._after_check(self._choice)
        self._settle_backend()
        if self._choice.precision == "fp32":  # the start said bf16: say once that it changed
            log.info("precision fp32 from here on (%s); backend %s", self._choice.note, self.backend)
        else:
            log.debug("precision %s", self._choice.describe())
        return low if self._choice.precision == "bf16" else reference

    __call__ = logits

    def release(self) -> None:
        """Free backend memory held between calls (OpenVINO's compiled model)."""
        if self._openvino is not None:
            self._openvino.release()

    # --- reporting -----------------------------------------------------------------------------

    def describe(self) -> str:
        """One line: backend (and why), precision (and the measured ratio), threads."""
        return (f"backend {self.backend} ({self.backend_reason}), precision {self.precision_choice.describe()}"
                + (f", {self.threads} OpenVINO threads" if self.backend == "openvino" else ""))

    def announce(self, context: str = "") -> None:
        """Log :meth:`describe` (after ``context``) once: the first call logs, later ones do not."""
        if not self._announced:
            self._announced = True
            log.info("%s%s", f"{context}; " if context else "inference: ", self.describe())
