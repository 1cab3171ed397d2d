"""Synthetic conveyor world: rendered part images with ground truth, Q&A, the line tasks, a camera.

    world.py           render_scene(seed) -> (BGR image, SceneInfo); parts, defects (checked visible)
    qa.py              pretraining questions, answers and captions
    line3.py           the line-3 bin rule ("Which bin does this part go to?")
    line5.py           the line-5 spec check ("Does this part meet the line 5 spec?")
    splits.py          disjoint seed ranges per task and split
    samples.py         in-memory (image, question, answer, scene) samples for training loops
    dataset_writer.py  PNG + data.jsonl + scenes.jsonl datasets (`crome-edge data synth`)
    camera.py          SyntheticCamera (cv2.VideoCapture-like) and write_video (`crome-edge data video`)

OpenCV + numpy only (no torch), so the runtime and its tests can use the camera too.
"""
