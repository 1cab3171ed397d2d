"""Synthetic conveyor world: rendered part images with ground truth, Q&A, the line-3 task, a camera.

OpenCV + numpy only (no torch), so the runtime and its tests can use the camera too.
"""
