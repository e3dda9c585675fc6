"""Diffusion workloads: the federated teacher, FID-digits, DMD2 and DisBack generators.

Plain PyTorch + diffusers (UNets and schedulers built from config, never downloaded), seeded by
``torch.Generator``; no Flower here.

Import from the submodules (``fedmatch.diffusion.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
