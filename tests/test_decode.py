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


def test_gif_is_refused_with_its_own_reason(face):
    buffer = io.BytesIO()
    face.save(buffer, format="GIF")
    with pytest.raises(Rejected, match="unsupported_format"):
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
