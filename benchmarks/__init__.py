"""Benchmarks: rgsweep's loop vs the standard torchvision pipeline, trial packing, sweep overhead."""
