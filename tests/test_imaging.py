"""Medical image formats: DICOM, NIfTI and high-bit-depth PNG/TIFF -> the RGB image a model sees.

Real scanner files shipped with pydicom and nibabel; every expected pixel is computed here by
hand from the stored data with the window formula ``floor(255 * (v - low) / (high - low) + 0.5)``
clipped to 0..255 (``low, high = center -/+ width / 2``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from cgmed.config import as_dict, build_config
from cgmed.data.imaging import WINDOW_PRESETS, ImageConfig, Window, image_format, open_image, verify_image
from cgmed.errors import BadImageError, ConfigError

CONF_IMAGE = Path(__file__).resolve().parents[1] / "cgmed" / "conf" / "image" / "default.yaml"


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not available offline")
    return Path(path)


def by_hand(value: float, low: float, high: float) -> int:
    """The window formula for one stored value, in plain Python."""
    return min(255, max(0, math.floor(255 * (float(value) - low) / (high - low) + 0.5)))


def gray(image: Image.Image) -> np.ndarray:
    """An output image's one channel (the three are equal for grayscale sources)."""
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.dtype == np.uint8
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return pixels[..., 0]


def ct_small_hu() -> np.ndarray:
    dataset = pydicom.dcmread(dicom_file("CT_small.dcm"))
    return dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(
        dataset.RescaleIntercept
    )


# --- DICOM: rescale, windows, MONOCHROME1 ---------------------------------------------------------


def test_ct_small_is_rescaled_to_hounsfield_units_and_windowed():
    hu = ct_small_hu()
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)  # the rescaled HU range of CT_small.dcm
    cfg = ImageConfig(windows={"CT": {"center": 40, "width": 400}})
    out = gray(open_image(dicom_file("CT_small.dcm"), cfg))
    low, high = -160.0, 240.0
    for row, col in [np.unravel_index(hu.argmin(), hu.shape), np.unravel_index(hu.argmax(), hu.shape)]:
        assert out[row, col] == by_hand(hu[row, col], low, high)
    inside = np.argwhere((hu > low) & (hu < high))
    assert len(inside) > 100  # the soft-tissue window shows a good part of the phantom
    for row, col in inside[:: len(inside) // 25]:
        assert out[row, col] == by_hand(hu[row, col], low, high)
    assert (out[hu <= low] == 0).all() and (out[hu >= high] == 255).all()


def test_ct_without_any_window_spans_its_own_hu_range():
    """CT_small has no WindowCenter: minimum..maximum HU map to 0..255."""
    hu = ct_small_hu()
    out = gray(open_image(dicom_file("CT_small.dcm")))
    assert out[64, 64] == by_hand(hu[64, 64], -896.0, 1167.0) == 222  # 904 HU
    assert out[0, 0] == by_hand(hu[0, 0], -896.0, 1167.0) == 6  # -849 HU
    assert out[hu == hu.min()].max() == 0 and out[hu == hu.max()].min() == 255


def test_window_presets_apply_by_the_records_modality():
    hu = ct_small_hu()
    cfg = ImageConfig(windows={"CT": "ct_lung"})
    assert cfg.windows["CT"] == Window(-600, 1500) == WINDOW_PRESETS["ct_lung"]
    out = gray(open_image(dicom_file("CT_small.dcm"), cfg, modality="ct"))
    assert out[64, 64] == by_hand(hu[64, 64], -1350.0, 150.0) == 255
    assert out[0, 0] == by_hand(hu[0, 0], -1350.0, 150.0) == 85


def test_mr_uses_the_files_own_window_before_the_configured_one():
    dataset = pydicom.dcmread(dicom_file("MR_small.dcm"))
    stored = dataset.pixel_array.astype(np.float64)
    assert (float(dataset.WindowCenter), float(dataset.WindowWidth)) == (600.0, 1600.0)
    configured = {"MR": {"center": 300, "width": 200}}

    own = gray(open_image(dicom_file("MR_small.dcm"), ImageConfig(windows=configured)))
    config = gray(
        open_image(dicom_file("MR_small.dcm"), ImageConfig(windows=configured, dicom_window="config"))
    )
    minmax = gray(
        open_image(dicom_file("MR_small.dcm"), ImageConfig(windows=configured, dicom_window="minmax"))
    )
    for row, col in [(0, 0), (32, 32), (20, 40), (50, 10)]:
        value = stored[row, col]
        assert own[row, col] == by_hand(value, -200.0, 1400.0)
        assert config[row, col] == by_hand(value, 200.0, 400.0)
        assert minmax[row, col] == by_hand(value, stored.min(), stored.max())


def test_the_records_modality_comes_before_the_files_modality_tag():
    windows = {"MRI": {"center": 300, "width": 200}, "mr": {"center": 0, "width": 4000}}
    cfg = ImageConfig(windows=windows, dicom_window="config")
    stored = pydicom.dcmread(dicom_file("MR_small.dcm")).pixel_array.astype(np.float64)
    by_record = gray(open_image(dicom_file("MR_small.dcm"), cfg, modality="MRI"))
    by_tag = gray(open_image(dicom_file("MR_small.dcm"), cfg))  # the file's Modality is MR
    assert by_record[32, 32] == by_hand(stored[32, 32], 200.0, 400.0)
    assert by_tag[32, 32] == by_hand(stored[32, 32], -2000.0, 2000.0)


def test_monochrome1_is_inverted(tmp_path):
    dataset = pydicom.dcmread(dicom_file("MR_small.dcm"))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    dataset.save_as(inverted)
    normal = gray(open_image(dicom_file("MR_small.dcm")))
    assert (gray(open_image(inverted)) == 255 - normal).all()


def test_enhanced_multiframe_functional_groups_give_rescale_and_window(tmp_path):
    """Rescale and window of an enhanced file live in its (shared) functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    dataset = pydicom.dcmread(dicom_file("CT_small.dcm"))
    transform, voi, group = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = dataset.RescaleSlope, dataset.RescaleIntercept
    voi.WindowCenter, voi.WindowWidth = 40, 400
    group.PixelValueTransformationSequence = Sequence([transform])
    group.FrameVOILUTSequence = Sequence([voi])
    del dataset.RescaleSlope, dataset.RescaleIntercept
    dataset.SharedFunctionalGroupsSequence = Sequence([group])
    enhanced = tmp_path / "enhanced.dcm"
    dataset.save_as(enhanced)
    expected = open_image(
        dicom_file("CT_small.dcm"), ImageConfig(windows={"CT": {"center": 40, "width": 400}})
    )
    assert open_image(enhanced).tobytes() == expected.tobytes()


# --- DICOM: frames, color, compression, file structure --------------------------------------------


def test_multiframe_shows_the_middle_or_the_configured_frame():
    path = dicom_file("rtdose.dcm")
    frames = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert frames.shape == (15, 10, 10)
    for cfg, index in [
        (ImageConfig(), 7),
        (ImageConfig(dicom_frame=0), 0),
        (ImageConfig(dicom_frame=14), 14),
    ]:
        frame = frames[index]
        out = gray(open_image(path, cfg))
        expected = [[by_hand(v, frame.min(), frame.max()) for v in row] for row in frame]
        assert out.tolist() == expected
    with pytest.raises(
        BadImageError, match=r"rtdose\.dcm.*frame 15 does not exist.*15 frame\(s\), valid 0\.\.14"
    ):
        open_image(path, ImageConfig(dicom_frame=15))


def test_rgb_and_ybr_dicoms_are_shown_in_rgb():
    rgb_path = dicom_file("examples_rgb_color.dcm")
    stored = pydicom.dcmread(rgb_path).pixel_array
    assert np.array_equal(np.asarray(open_image(rgb_path)), stored)

    ybr_path = dicom_file("SC_ybr_full_422_uncompressed.dcm")
    raw = pydicom.pixels.pixel_array(ybr_path, raw=True)
    as_rgb = pydicom.pixels.convert_color_space(raw, "YBR_FULL", "RGB")
    assert np.array_equal(np.asarray(open_image(ybr_path)), as_rgb)
    assert not np.array_equal(as_rgb, raw)

    multiframe = dicom_file("SC_rgb_rle_2frame.dcm")
    assert np.array_equal(np.asarray(open_image(multiframe)), pydicom.dcmread(multiframe).pixel_array[1])


def test_16_bit_rgb_and_palette_dicoms_keep_their_full_scale():
    path = dicom_file("SC_rgb_rle_16bit.dcm")
    stored = pydicom.dcmread(path).pixel_array
    out = np.asarray(open_image(path))
    for row, col in [(0, 0), (10, 10), (50, 50), (99, 99)]:
        assert out[row, col].tolist() == [by_hand(v, 0, 65535) for v in stored[row, col]]
    palette = open_image(dicom_file("examples_palette.dcm"))
    assert palette.mode == "RGB" and palette.size == (800, 350)
    assert len(np.unique(np.asarray(palette).reshape(-1, 3), axis=0)) > 100


@pytest.mark.skipif(not get_decoder(JPEG2000Lossless).is_available, reason="no JPEG 2000 decoder installed")
def test_a_compressed_dicom_decodes_where_a_plugin_is_installed():
    lossless = open_image(dicom_file("MR_small_jp2klossless.dcm"))
    assert lossless.tobytes() == open_image(dicom_file("MR_small.dcm")).tobytes()


@pytest.mark.skipif(get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed")
def test_a_compressed_dicom_without_its_plugin_is_refused_naming_the_plugins():
    with pytest.raises(BadImageError) as caught:
        open_image(dicom_file("MR_small_jpeg_ls_lossless.dcm"))
    message = str(caught.value)
    assert "MR_small_jpeg_ls_lossless.dcm" in message and "JPEG-LS Lossless" in message
    assert "pylibjpeg" in message and "pyjpegls" in message and "fix: install" in message


def test_bad_dicoms_are_bad_images_naming_the_file(tmp_path):
    with pytest.raises(BadImageError, match=r"MR_truncated\.dcm.*pixel data"):
        open_image(dicom_file("MR_truncated.dcm"))
    with pytest.raises(
        BadImageError, match=r"rtplan\.dcm: DICOM file holds no pixel data \(RT Plan Storage\)"
    ):
        open_image(dicom_file("rtplan.dcm"))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(dicom_file("CT_small.dcm").read_bytes()[:20000])
    with pytest.raises(BadImageError, match=r"cut\.dcm"):
        open_image(cut)
    not_dicom = tmp_path / "note.dcm"
    not_dicom.write_text("not a DICOM file\n" * 20)
    with pytest.raises(BadImageError, match=r"note\.dcm: cannot decode this DICOM file \(InvalidDicomError"):
        open_image(not_dicom)


def test_dicom_is_recognised_without_extension_and_without_header(tmp_path):
    scanner_name = tmp_path / "IM000001"
    shutil.copy(dicom_file("CT_small.dcm"), scanner_name)
    assert image_format(scanner_name) == "dicom"
    expected = open_image(dicom_file("CT_small.dcm")).tobytes()
    assert open_image(scanner_name).tobytes() == expected

    dataset = pydicom.dcmread(dicom_file("CT_small.dcm"))
    dataset.preamble = None
    del dataset.file_meta
    headerless = tmp_path / "headerless.dcm"
    pydicom.dcmwrite(headerless, dataset, enforce_file_format=False)
    assert headerless.read_bytes()[128:132] != b"DICM"
    assert open_image(headerless).tobytes() == expected


# --- NIfTI ----------------------------------------------------------------------------------------


def percentile_scaled(values: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    low, high = np.percentile(values, percentiles)
    return np.array([[by_hand(v, low, high) for v in row] for row in values], dtype=np.uint8)


def test_nifti_middle_slice_matches_get_fdata_after_percentile_scaling():
    path = Path(NIBABEL_DATA) / "anatomical.nii"
    volume = nibabel.load(path).get_fdata()
    middle = volume[..., volume.shape[2] // 2]
    assert np.array_equal(gray(open_image(path)), percentile_scaled(middle))
    first_rows = volume[3, :, :]
    assert np.array_equal(
        gray(open_image(path, ImageConfig(nifti_slice={"axis": 0, "index": 3}))),
        percentile_scaled(first_rows),
    )


def test_nifti_4d_shows_its_first_volume_and_a_window_when_configured():
    path = Path(NIBABEL_DATA) / "example4d.nii.gz"
    volume = nibabel.load(path).get_fdata()
    assert volume.ndim == 4
    middle = volume[:, :, volume.shape[2] // 2, 0]
    assert np.array_equal(gray(open_image(path)), percentile_scaled(middle))
    cfg = ImageConfig(windows={"MRI": {"center": 1000, "width": 2000}})
    windowed = gray(open_image(path, cfg, modality="MRI"))
    for row, col in [(0, 0), (64, 48), (30, 70), (100, 20)]:
        assert windowed[row, col] == by_hand(middle[row, col], 0.0, 2000.0)


def test_nifti_slice_out_of_range_names_file_axis_index_and_range():
    path = Path(NIBABEL_DATA) / "anatomical.nii"
    with pytest.raises(BadImageError) as caught:
        open_image(path, ImageConfig(nifti_slice={"axis": 2, "index": 25}))
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "slice index 25 on axis 2 is out of range" in message and "valid 0..24" in message
    assert "image.nifti_slice.index" in message


# --- PNG / TIFF -----------------------------------------------------------------------------------


def twelve_bit_ramp() -> np.ndarray:
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)


def test_a_12_bit_png_keeps_its_levels(tmp_path):
    path = tmp_path / "xray16.png"
    Image.fromarray(twelve_bit_ramp()).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
        legacy = np.asarray(stored.convert("RGB"))[..., 0]
    assert round(float((legacy == 255).mean()), 3) == 0.938  # what convert("RGB") did to it

    out = gray(open_image(path))
    ramp = twelve_bit_ramp().astype(np.float64)
    low, high = np.percentile(ramp, [0.5, 99.5])
    assert len(np.unique(out)) == 256
    assert (np.diff(out.ravel().astype(int)) >= 0).all()
    assert out.ravel().tolist() == [by_hand(v, low, high) for v in range(4096)]
    # only the values beyond the percentiles (and those within half a step of them) saturate
    assert (out == 255).mean() < 0.01 and (out == 0).mean() < 0.01

    full_range = gray(open_image(path, ImageConfig(percentiles=[0, 100])))
    assert full_range.ravel().tolist() == [by_hand(v, 0, 4095) for v in range(4096)]


def test_high_bit_depth_tiff_modes_are_scaled_by_window_or_percentiles(tmp_path):
    ramp = twelve_bit_ramp()
    big_endian = tmp_path / "be.tif"
    Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes()).save(big_endian)
    signed = tmp_path / "int32.tif"
    Image.fromarray(ramp.astype(np.int32) - 1024).save(signed)
    floats = tmp_path / "float.tif"
    float_values = ramp.astype(np.float32) / 4095
    float_values[0, 0] = np.nan
    Image.fromarray(float_values).save(floats)

    with Image.open(signed) as stored:
        assert stored.mode == "I"
    cfg = ImageConfig(windows={"CT": {"center": 0, "width": 1000}}, percentiles=[0, 100])
    windowed = gray(open_image(signed, cfg, modality="CT"))
    assert windowed.ravel().tolist() == [by_hand(v - 1024, -500, 500) for v in range(4096)]
    assert gray(open_image(big_endian, cfg)).ravel().tolist() == [by_hand(v, 0, 4095) for v in range(4096)]
    as_floats = gray(open_image(floats, cfg))
    assert as_floats[0, 0] == 0 and as_floats[63, 63] == 255 and len(np.unique(as_floats)) == 256


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK"])
def test_8_bit_images_convert_exactly_as_before(tmp_path, mode):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    source.save(path)
    with Image.open(path) as stored:
        expected = stored.convert("RGB").tobytes()
    converted = open_image(path)
    assert converted.mode == "RGB" and converted.tobytes() == expected


def test_bad_raster_files_are_bad_images_naming_the_file(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:800])
    text = tmp_path / "text.png"
    text.write_text("no image here")
    for path in (truncated, jpeg, text, tmp_path / "missing.png", tmp_path):
        with pytest.raises(BadImageError, match=str(path.name)):
            open_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match=r"good\.png.*DecompressionBombError"):
        open_image(good)
    with pytest.raises(BadImageError, match=r"CT_small\.dcm: image of 128 x 128 pixels exceeds"):
        open_image(dicom_file("CT_small.dcm"))


def test_verify_image_also_runs_the_formats_integrity_check(tmp_path):
    """A PNG whose pixel-data checksum is wrong still decodes; the data checks refuse it."""
    path = tmp_path / "bad_crc.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)
    data = bytearray(path.read_bytes())
    chunk = data.index(b"IDAT")
    length = int.from_bytes(data[chunk - 4 : chunk], "big")
    data[chunk + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    path.write_bytes(bytes(data))
    assert open_image(path).size == (8, 8)
    with pytest.raises(BadImageError, match=r"bad_crc\.png: fails the image's integrity check"):
        verify_image(path)
    verify_image(dicom_file("CT_small.dcm"), ImageConfig(dicom_frame=3))  # single frame: frame ignored


# --- the image config group -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"windows": {"CT": "ct_lungs"}}, "image.windows.CT"),
        ({"windows": {"CT": {"center": 40, "width": 0}}}, "image.windows.CT.width"),
        ({"windows": {"CT": {"center": 40}}}, "image.windows.CT"),
        ({"windows": {"CT": "ct_lung", "ct": "ct_brain"}}, "image.windows.ct"),
        ({"windows": ["CT"]}, "image.windows"),
        ({"percentiles": [99.5, 0.5]}, "image.percentiles"),
        ({"percentiles": [0, 100, 50]}, "image.percentiles"),
        ({"nifti_slice": {"axis": 3}}, "image.nifti_slice.axis"),
        ({"nifti_slice": {"index": -1}}, "image.nifti_slice.index"),
        ({"dicom_frame": -2}, "image.dicom_frame"),
        ({"dicom_window": "auto"}, "image.dicom_window"),
        ({"window": {"CT": "ct_lung"}}, "image.window"),
    ],
)
def test_bad_settings_name_their_key_and_fix(settings, key):
    with pytest.raises(ConfigError) as caught:
        build_config(ImageConfig, settings, "image")
    assert caught.value.key == key and "fix:" in str(caught.value)


def test_the_config_group_defaults_are_the_dataclasses_and_describe_round_trips():
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(CONF_IMAGE.read_text()) == {"defaults": ["schema", "_self_"]}
    schema = as_dict(ImageConfig())
    assert schema == {
        "windows": {},
        "dicom_window": "file",
        "dicom_frame": None,
        "nifti_slice": {"axis": 2, "index": None},
        "percentiles": [0.5, 99.5],
        "processor_cache": "auto",
    }
    cfg = build_config(
        ImageConfig, {**schema, "windows": {"CT": "ct_brain", "MRI": {"center": 1, "width": 2}}}, "image"
    )
    described = cfg.describe()
    assert described["windows"] == {
        "CT": {"center": 40.0, "width": 80.0},
        "MRI": {"center": 1.0, "width": 2.0},
    }
    assert json.loads(json.dumps(described)) == described
    assert build_config(ImageConfig, described, "image") == cfg
