"""Explain's default preprocessing is ImageNet's evaluation transform (resize 256, centre crop 224),
and the maps go back onto the original photo through the crop's frame."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn

import camkit
from camkit.inputs import PhotoFrame, boxes_to_photo, map_to_photo, resize_and_normalize

PHOTO = np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8)   # chelsea's size


def test_default_preprocess_is_torchvisions_resize_256_centre_crop_224():
    ours = camkit.Preprocess(mean=0.0, std=1.0)(PHOTO)
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(Image.fromarray(PHOTO))
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max() <= 1.5 / 255       # PIL rounds its antialiased resize to uint8


@pytest.mark.parametrize("height, width", [(309, 206), (253, 1012), (428, 856), (300, 451), (224, 224), (97, 500)])
def test_resized_size_is_torchvisions_integer_form(height, width):
    # torchvision's Resize(256): long = int(256 * long / short). 309 x 206 -> 256 * 309 / 206 = 384.0 exactly, which
    # int(309 * (256 / 206)) would floor to 383 through float rounding.
    expected = tuple(T.Resize(256)(Image.new("RGB", (width, height))).size[::-1])
    assert camkit.Preprocess()._resized_size(height, width) == expected


def test_crop_none_squashes_the_whole_picture_as_before():
    rgb = torch.from_numpy(PHOTO).permute(2, 0, 1).float() / 255
    expected = resize_and_normalize(rgb, (224, 224), camkit.IMAGENET_MEAN, camkit.IMAGENET_STD)
    torch.testing.assert_close(camkit.Preprocess(crop=None)(PHOTO), expected)


def test_frame_is_the_crop_in_photo_pixels():
    # 300 x 451 -> short side 256: 256 x int(451 * 256 / 300) = 256 x 384; crop offsets (16, 80)
    frame = camkit.Preprocess().frame(300, 451)
    scale_x, scale_y = 384 / 451, 256 / 300
    assert frame == PhotoFrame(300, 451, pytest.approx((80 / scale_x, 16 / scale_y, 304 / scale_x, 240 / scale_y)))
    assert camkit.Preprocess(crop=None).frame(300, 451).box == (0.0, 0.0, 451.0, 300.0)


@pytest.mark.parametrize("crop, message", [(0.0, "crop must be in"), (1.5, "crop must be in"), (-1, "224/256")])
def test_bad_crop_is_refused(crop, message):
    with pytest.raises(ValueError, match=message):
        camkit.Preprocess(crop=crop)


def test_map_to_photo_fills_the_crop_and_leaves_the_border_unseen():
    frame = PhotoFrame(10, 20, (5.0, 0.0, 15.0, 10.0))        # the input is photo columns 5..14
    ramp = np.tile(np.arange(10, dtype=np.float64), (10, 1))   # value = input column
    on_photo = map_to_photo(ramp, frame)
    assert on_photo.shape == (10, 20)
    assert np.isnan(on_photo[:, :5]).all() and np.isnan(on_photo[:, 15:]).all()
    np.testing.assert_allclose(on_photo[:, 5:15], ramp)        # one photo pixel per input pixel here


def test_boxes_to_photo_maps_the_whole_input_onto_the_crop():
    frame = camkit.Preprocess().frame(300, 451)
    box = boxes_to_photo([[0, 0, 223, 223]], frame, (224, 224))
    # the crop's edges 93.96, 18.75, 357.04, 281.25: pixels 93..356 x 18..280 start inside it
    assert box.tolist() == [[93, 18, 356, 280]]


def test_explanation_of_a_photo_keeps_it_and_its_frame():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    exp = camkit.explain(model, [PHOTO], layers="1", preprocess=camkit.Preprocess(32))
    assert exp.images.shape[-2:] == (32, 32)
    assert exp.photos[0] is not None and exp.photos[0].shape == PHOTO.shape
    on_photo = exp.photo_map("gradcam", index=0)
    assert on_photo.shape == (300, 451)
    seen = ~np.isnan(on_photo)
    # 300 x 451 -> 37 x 55, centre 32 x 32: photo columns 98.4..360.8 and rows 16.2..275.7 were seen
    assert seen[17:275, 99:360].all()
    assert not seen[:, :98].any() and not seen[:, 361:].any() and not seen[:16].any() and not seen[276:].any()
    box = exp.boxes("gradcam", on_photo=True)[0]
    assert (box[:, 0] >= 0).all() and (box[:, 2] <= 450).all()
    with pytest.raises(ValueError, match="for tensor inputs give sizes="):
        camkit.explain(model, exp.images, layers="1").boxes("gradcam", on_photo=True)
