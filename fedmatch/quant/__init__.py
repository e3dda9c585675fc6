"""Post-training quantization of the diffusion UNet: fake-quant framework, EDA-DM and DGQ.

Plain PyTorch, no Flower: ``quantizers`` (uniform per-tensor / per-channel / per-timestep and
log2), ``dgq`` (outlier-aware group quantization), ``attention`` (DGQ's cross-attention
quantization as a diffusers attention processor), ``qmodules`` (quantized Conv2d / Linear and
:func:`quantize_unet`), ``calibrate`` (calibration data, min-max calibration, mergeable
statistics for federated calibration), ``edadm`` (TDAC sample selection) and ``reconstruct``
(fine-grained block reconstruction).

Import from the submodules (``fedmatch.quant.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
