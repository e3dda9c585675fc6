"""Configuration -> math: build the math packages' objects and arguments from a RunConfig.

The math packages (``fedmatch/align``, ``distill``, ``diffusion``, ``quant``,
``baselines``) take explicit arguments and know nothing of the run config; strategies and
client workloads call these functions to turn the validated ``RunConfig`` (and its tables)
into those arguments.
"""
