"""Offline checkpoints in the real file formats, for machines that cannot reach the Hugging Face hub.

Each builder writes files with the same names, keys, shapes and configs as the released model,
filled with random (or locally calibrated) weights. They cost the same compute as the real
weights, so timings and memory measured on them are real figures; what they *say* is not.
`csmlab.weights` calls these builders once and caches the result.
"""
