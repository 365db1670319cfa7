"""Decoding and validation: every rejection has its reason; odd encodings come out as upright RGB."""

import io

import numpy as np
import pytest

from dynamicid.imagefile import ImageRules, Rejected, decode_image, sniff_format
from dynamicid.prep.sample import (
    astronaut,
    broken_files,
    exif_rotated_jpeg,
    jpeg_bytes,
    png_bytes,
    rgba_png,
    sixteen_bit_png,
)

RULES = ImageRules()


@pytest.fixture(scope="module")
def face():
    return astronaut()


@pytest.mark.parametrize("name", list(broken_files(astronaut())))
def test_each_broken_file_is_rejected_with_its_reason(face, name):
    payload, reason = broken_files(face)[name]
    with pytest.raises(Rejected) as caught:
        decode_image(payload, RULES)
    assert caught.value.reason == reason
    assert caught.value.message


def test_format_comes_from_content_not_extension(face):
    assert sniff_format(png_bytes(face)) == "png"
    assert sniff_format(jpeg_bytes(face)) == "jpeg"
    assert sniff_format(b"GIF89a....") == "gif"
    assert sniff_format(b"hello") is None
    buffer = io.BytesIO()
    face.save(buffer, format="WEBP")
    assert decode_image(buffer.getvalue(), RULES).format == "webp"
    for kind in ("BMP", "TIFF"):
        buffer = io.BytesIO()
        face.save(buffer, format=kind)
        assert decode_image(buffer.getvalue(), RULES).format == kind.lower()


def test_a_still_gif_is_read_and_an_animated_one_refused_with_its_reason(face):
    buffer = io.BytesIO()
    face.save(buffer, format="GIF")
    still = decode_image(buffer.getvalue(), RULES)
    assert still.format == "gif" and still.rgb.shape == (512, 512, 3)
    assert abs(still.rgb.astype(int) - np.asarray(face.convert("RGB"), dtype=int)).mean() < 12  # a 256-colour copy
    buffer = io.BytesIO()
    face.save(buffer, format="GIF", save_all=True, append_images=[face.rotate(90)], duration=100, loop=0)
    with pytest.raises(Rejected, match="animated: an animated GIF of 2 frames"):
        decode_image(buffer.getvalue(), RULES)


def test_exif_orientation_is_applied(face):
    decoded = decode_image(exif_rotated_jpeg(face), RULES)
    assert decoded.exif_rotated
    assert decoded.rgb.shape == (512, 512, 3)
    reference = np.asarray(face, dtype=float)
    # Upright: close to the original, far from the stored (turned) pixels.
    assert np.abs(decoded.rgb - reference).mean() < 6
    assert np.abs(np.rot90(decoded.rgb) - reference).mean() > 30


def test_cmyk_jpeg_becomes_rgb(face):
    decoded = decode_image(jpeg_bytes(face.convert("CMYK")), RULES)
    assert decoded.source_mode == "CMYK" and decoded.rgb.shape == (512, 512, 3)
    assert np.abs(decoded.rgb.astype(float) - np.asarray(face)).mean() < 12


def test_sixteen_bit_png_is_scaled_not_clipped(face):
    decoded = decode_image(sixteen_bit_png(face), RULES)
    assert decoded.grayscale
    gray = np.asarray(face.convert("L"), dtype=float)
    assert np.abs(decoded.rgb[..., 0] - gray).max() <= 1


def test_rgba_is_composited_on_white(face):
    decoded = decode_image(rgba_png(face), RULES)
    assert decoded.rgb.shape == (512, 512, 3)
    assert (decoded.rgb[:, :40] == 255).all()  # the transparent strip


def test_large_jpeg_is_decoded_at_reduced_size_but_reports_full_size(face):
    big = face.resize((3000, 3000))
    decoded = decode_image(jpeg_bytes(big), RULES)
    assert (decoded.width, decoded.height) == (3000, 3000)
    assert decoded.decode_scale == 0.5 and decoded.rgb.shape == (1500, 1500, 3)


def test_limits_are_configurable(face):
    data = png_bytes(face)
    with pytest.raises(Rejected, match="too_small"):
        decode_image(data, ImageRules(min_side=600))
    with pytest.raises(Rejected, match="decompression_bomb"):
        decode_image(data, ImageRules(max_pixels=512 * 511))
    with pytest.raises(Rejected, match="too_large_file"):
        decode_image(data, ImageRules(max_bytes=100))


def test_an_invalid_exif_orientation_means_upright(face):
    """EXIF orientation is 1..8; a file that says 9 is neither turned nor recorded as rotated."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 9
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(face)).save(buffer, format="JPEG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), RULES)
    assert not decoded.exif_rotated
    assert np.abs(decoded.rgb.astype(float) - np.asarray(face, dtype=float)).mean() < 6


def test_the_header_check_reads_the_header_and_the_readers_agree_on_files(face, tmp_path):
    """`check_header` opens the file and reads only its header, so a file cut after the header passes it;
    the path readers give what `decode_image` gives on the bytes."""
    from dynamicid.imagefile import check_header, load_image, open_image

    whole = png_bytes(face)
    (tmp_path / "face.png").write_bytes(whole)
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 3])
    assert check_header(str(tmp_path / "cut.png")) == face.size
    with pytest.raises(Rejected) as caught:  # decoding it is refused with the reason, not a crash
        load_image(str(tmp_path / "cut.png"))
    assert caught.value.reason == "truncated"
    np.testing.assert_array_equal(load_image(str(tmp_path / "face.png")).rgb, decode_image(whole, RULES).rgb)
    np.testing.assert_array_equal(np.asarray(open_image(str(tmp_path / "face.png"))), decode_image(whole, RULES).rgb)
    with pytest.raises(Rejected) as missing:
        check_header(str(tmp_path / "nowhere.png"))
    assert missing.value.reason == "read_error"


class _CountingTurbo:
    """simplejpeg, counting the decodes it was asked for and those it gave."""

    def __init__(self, module):
        self.module, self.asked, self.gave = module, 0, 0

    def decode_jpeg(self, *args, **kwargs):
        self.asked += 1
        pixels = self.module.decode_jpeg(*args, **kwargs)
        self.gave += 1
        return pixels


def _both_decoders(monkeypatch, data: bytes, rules: ImageRules = RULES):
    """(libjpeg-turbo's result, Pillow's result, the counter) for the same bytes."""
    import dynamicid.imagefile as imagefile

    counter = _CountingTurbo(imagefile._simplejpeg)
    monkeypatch.setattr(imagefile, "_simplejpeg", counter)
    turbo = decode_image(data, rules)
    monkeypatch.setattr(imagefile, "_simplejpeg", None)
    pillow = decode_image(data, rules)
    monkeypatch.setattr(imagefile, "_simplejpeg", counter.module)
    return turbo, pillow, counter


def _with_orientation(image, orientation: int, **save) -> bytes:
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), **save)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "side, save",
    [
        (700, {"quality": 90}),  # full size
        (2700, {"quality": 92, "subsampling": 0}),  # 4:4:4, decoded at 1/2
        (2700, {"quality": 85, "subsampling": 1}),  # 4:2:2
        (2700, {"quality": 95, "subsampling": 2, "progressive": True}),
        (5400, {"quality": 80}),  # decoded at 1/4
    ],
)
def test_libjpeg_turbo_gives_pillows_pixels(face, monkeypatch, side, save):
    """prep decodes colour JPEGs with simplejpeg; every pixel and every fact is what Pillow's decode gives,
    at each reduced scale, subsampling and progressive coding, so prepared outputs do not change."""
    big = face.resize((side, side * 3 // 4))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", **save)
    turbo, pillow, counter = _both_decoders(monkeypatch, buffer.getvalue())
    assert counter.gave == 1  # the fast path really ran
    np.testing.assert_array_equal(turbo.rgb, pillow.rgb)
    assert (turbo.width, turbo.height, turbo.decode_scale) == (pillow.width, pillow.height, pillow.decode_scale)
    assert turbo.rgb.flags.c_contiguous and turbo.rgb.shape[2] == 3
    expected_scale = {700: 1.0, 2700: 0.5, 5400: 0.25}[side]
    assert turbo.decode_scale == expected_scale


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_the_array_as_pillow_turns_the_image(face, monkeypatch, orientation):
    wide = face.crop((0, 0, 512, 300))  # not square, so a wrong turn shows in the shape as well
    turbo, pillow, counter = _both_decoders(monkeypatch, _with_orientation(wide, orientation))
    assert counter.gave == 1
    np.testing.assert_array_equal(turbo.rgb, pillow.rgb)
    assert (turbo.width, turbo.height, turbo.exif_rotated) == (pillow.width, pillow.height, pillow.exif_rotated)
    transposes = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}  # Pillow's Transpose member per orientation
    from PIL import Image

    stored = np.asarray(Image.open(io.BytesIO(_with_orientation(wide, 1))).convert("RGB"))
    expected = stored if orientation == 1 else np.asarray(Image.fromarray(stored).transpose(transposes[orientation]))
    np.testing.assert_array_equal(turbo.rgb, expected)


def test_a_jpeg_libjpeg_turbo_refuses_goes_to_pillow_for_its_reason(face, monkeypatch):
    """A cut JPEG: simplejpeg refuses it, and Pillow's decode gives the rejection its usual reason; a JPEG with
    stray bytes before a marker (a warning Pillow passes over) decodes as Pillow decodes it."""
    whole = jpeg_bytes(face.resize((1400, 1000)))
    import dynamicid.imagefile as imagefile

    counter = _CountingTurbo(imagefile._simplejpeg)
    monkeypatch.setattr(imagefile, "_simplejpeg", counter)
    with pytest.raises(Rejected) as caught:
        decode_image(whole[: len(whole) // 2], RULES)
    assert caught.value.reason == "truncated" and counter.asked == 1 and counter.gave == 0
    monkeypatch.setattr(imagefile, "_simplejpeg", counter.module)

    marker = whole.index(b"\xff\xda")  # start of scan: stray bytes before it make libjpeg warn
    stray = whole[:marker] + b"\x00\x00" + whole[marker:]
    turbo, pillow, counter = _both_decoders(monkeypatch, stray)
    assert counter.asked == 1 and counter.gave == 0
    np.testing.assert_array_equal(turbo.rgb, pillow.rgb)


def test_other_jpegs_are_pillows(face, monkeypatch):
    """Grey, CMYK: Pillow alone decodes them, as before."""
    for image in (face.convert("L"), face.convert("CMYK")):
        turbo, pillow, counter = _both_decoders(monkeypatch, jpeg_bytes(image))
        assert counter.asked == 0
        np.testing.assert_array_equal(turbo.rgb, pillow.rgb)
