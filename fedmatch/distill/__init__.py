"""Dataset distillation: DSA, DM, NCFM, gradient matching and the synthetic-set evaluation.

Plain PyTorch, device-agnostic, seeded by a ``torch.Generator``; no Flower here.

Import from the submodules (``fedmatch.distill.<module>``): this package imports nothing
itself, so that two threads importing different submodules (Flower loads the ServerApp
and the ClientApp concurrently) can never deadlock on a package import cycle.
"""
