"""Batched numeric kernels in torch: the same code on CPU and GPU, for many calls at once."""
