"""Frame sources and previews against real files written to tmp_path."""

import os
import sys

import cv2
import numpy as np
import pytest

try:
    import pipstrack  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "backend"))

from pipstrack.conventions import display_transform  # noqa: E402
from pipstrack.io.frames import (  # noqa: E402
    ArrayFrames,
    FrameReadError,
    ImageSequenceFrames,
    VideoFrames,
    open_frames,
)
from pipstrack.io.preview import draw_tracks, track_colors, write_preview  # noqa: E402

H, W = 24, 32


def make_clip(T=5, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(T, h, w, 3), dtype=np.uint8)


def write_png_seq(folder, frames, start=1001, pad=4, ext=".png", bits=8):
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        img = f[..., ::-1]
        if bits == 16:
            # +/-100 (< 257/2) must round away
            v = img.astype(np.int32) * 257
            img = np.where(img < 128, v + 100, v - 100).astype(np.uint16)
        assert cv2.imwrite(str(folder / f"shot.{start + k:0{pad}d}{ext}"), img)


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("how", ["folder", "printf", "hash", "one_file"])
def test_png_sequence_8bit(tmp_path, how):
    frames = make_clip()
    d = tmp_path / "seq"
    write_png_seq(d, frames)
    spec = {
        "folder": d,
        "printf": str(d / "shot.%04d.png"),
        "hash": str(d / "shot.####.png"),
        "one_file": d / "shot.1003.png",
    }[how]
    with open_frames(spec) as src:
        assert isinstance(src, ImageSequenceFrames)
        assert len(src) == 5
        assert src.size == (H, W)
        assert src.frame_numbers == [1001, 1002, 1003, 1004, 1005]
        for i in (3, 0, 4):
            got = src.read(i)
            assert got.dtype == np.uint8 and got.shape == (H, W, 3)
            np.testing.assert_array_equal(got, frames[i])
        with pytest.raises(IndexError):
            src.read(5)
        with pytest.raises(IndexError):
            src.read(-1)


def test_png_sequence_16bit_and_grey_and_alpha(tmp_path):
    frames = make_clip(T=3)
    d = tmp_path / "s16"
    write_png_seq(d, frames, bits=16)
    src = open_frames(d)
    np.testing.assert_array_equal(src.read(1), frames[1])  # round((v*257 +/- 100)/257) == v

    g = tmp_path / "grey"
    g.mkdir()
    grey = frames[:, :, :, 0]
    for k in range(3):
        cv2.imwrite(str(g / f"g_{k + 1}.png"), grey[k])
    src = open_frames(g)
    assert src.frame_numbers == [1, 2, 3]
    np.testing.assert_array_equal(src.read(2), np.repeat(grey[2][..., None], 3, axis=2))

    a = tmp_path / "alpha"
    a.mkdir()
    for k in range(2):
        bgra = np.concatenate([frames[k][..., ::-1], np.full((H, W, 1), 7, np.uint8)], axis=2)
        cv2.imwrite(str(a / f"a.{k:03d}.png"), bgra)
    np.testing.assert_array_equal(open_frames(str(a / "a.%03d.png")).read(1), frames[1])


def test_jpeg_and_tiff(tmp_path):
    frames = make_clip(T=3)
    frames[:] = frames[:, :1, :1]  # flat frames survive JPEG nearly exactly
    write_png_seq(tmp_path / "j", frames, ext=".jpg")
    src = open_frames(tmp_path / "j" / "shot.####.jpg")
    assert src.frame_numbers == [1001, 1002, 1003]
    assert np.abs(src.read(2).astype(int) - frames[2]).max() <= 3

    frames = make_clip(T=3, seed=1)
    write_png_seq(tmp_path / "t", frames, ext=".tif", bits=16)
    src = open_frames(tmp_path / "t")
    np.testing.assert_array_equal(src.read(0), frames[0])


def write_exr(path, rgb=None, y=None, half=True):
    import OpenEXR

    dt = np.float16 if half else np.float32
    if y is not None:
        channels = {"Y": y.astype(dt)}
    else:
        channels = {c: np.ascontiguousarray(rgb[..., k]).astype(dt) for k, c in enumerate("RGB")}
    hdr = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(hdr, channels).write(str(path))


def test_display_transform_values():
    x = np.array([0.0, 0.18, 1.0, 4.0, -1.0, np.nan, 0.002], np.float32)
    srgb = lambda v: 1.055 * v ** (1 / 2.4) - 0.055  # noqa: E731
    expect = [0, round(255 * srgb(0.18)), 255, 255, 0, 0, round(255 * 12.92 * 0.002)]
    assert display_transform(x).tolist() == expect
    assert expect[1] == 118
    # One stop down brings 1.0 to 0.5 and 4.0 back into range only at -2 stops.
    assert display_transform(np.float32([1.0]), exposure=-1).tolist() == [round(255 * srgb(0.5))]
    assert display_transform(np.float32([4.0]), exposure=-2).tolist() == [255]
    assert display_transform(np.float32([4.0]), exposure=-3).tolist() == [round(255 * srgb(0.5))]


@pytest.mark.parametrize("half", [True, False])
def test_exr_sequence(tmp_path, half):
    lin = np.zeros((3, H, W, 3), np.float32)
    lin[:, :, :, 0] = 0.18
    lin[:, :, :, 1] = 1.0
    lin[:, :, :, 2] = 4.0
    lin[1, 0, 0] = (0.0, 0.5, 0.25)
    for k in range(3):
        write_exr(tmp_path / f"plate.{1001 + k}.exr", lin[k], half=half)
    src = open_frames(tmp_path / "plate.1002.exr")
    assert src.frame_numbers == [1001, 1002, 1003] and src.size == (H, W)
    got = src.read(1)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, display_transform(lin[1]))
    assert got[5, 5].tolist() == [118, 255, 255]
    linear = src.read_linear(1)
    assert linear.dtype == np.float32 and linear.shape == (H, W, 3)
    np.testing.assert_allclose(linear[0, 0], [0.0, 0.5, 0.25])
    np.testing.assert_allclose(linear[5, 5], [0.18, 1.0, 4.0], rtol=1e-3)
    src2 = open_frames(tmp_path, exposure=-2.0)
    assert src2.read(0)[5, 5].tolist() == display_transform(np.float32([0.18, 1.0, 4.0]), -2).tolist()


def test_exr_grey_channel(tmp_path):
    write_exr(tmp_path / "g.0001.exr", y=np.full((H, W), 0.18, np.float32))
    src = open_frames(tmp_path / "g.0001.exr")
    assert len(src) == 1 and src.read(0)[0, 0].tolist() == [118, 118, 118]


def test_gap_in_sequence(tmp_path):
    frames = make_clip(T=6)
    write_png_seq(tmp_path, frames)
    os.remove(tmp_path / "shot.1003.png")
    os.remove(tmp_path / "shot.1004.png")
    for spec in (tmp_path, tmp_path / "shot.####.png", tmp_path / "shot.1001.png"):
        with pytest.raises(ValueError, match="1003-1004"):
            open_frames(spec)


def test_corrupt_file_and_size_mismatch(tmp_path):
    write_png_seq(tmp_path, make_clip(T=4))
    (tmp_path / "shot.1003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    src = open_frames(tmp_path)
    src.read(1)
    with pytest.raises(FrameReadError, match=r"frame 1003 .*shot\.1003\.png"):
        src.read(2)
    cv2.imwrite(str(tmp_path / "shot.1003.png"), np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(FrameReadError, match=r"shot\.1003\.png.*size"):
        src.read(2)


def test_missing_unknown_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        open_frames(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "nowhere" / "shot.####.png")
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "shot.%04d.png")  # folder exists, nothing matches
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"\.png.*\.exr|\.exr.*\.png"):
        open_frames(tmp_path / "notes.txt")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(FrameReadError, match="broken.mp4"):
        open_frames(tmp_path / "broken.mp4")


def test_folder_with_two_sequences(tmp_path):
    write_png_seq(tmp_path, make_clip(T=2))
    cv2.imwrite(str(tmp_path / "other.0001.png"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="more than one"):
        open_frames(tmp_path)


def test_array_frames_validation():
    clip = make_clip(T=2)
    src = ArrayFrames(clip)
    assert len(src) == 2 and src.size == (H, W) and src.frame_numbers == [0, 1]
    np.testing.assert_array_equal(src.read(1), clip[1])
    with pytest.raises(ValueError, match="uint8"):
        ArrayFrames(clip.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        ArrayFrames(clip[..., 0])


# --------------------------------------------------------------------------- video

VT, VH, VW = 30, 64, 96


def counter_frame(i):
    """A frame whose index can be read back from 5 big black/white blocks."""
    f = np.full((VH, VW, 3), 90, np.uint8)
    f[:, :, 2] = (i * 7) % 200
    for b in range(5):
        if (i >> b) & 1:
            f[8:40, 4 + b * 18 : 20 + b * 18] = 255
        else:
            f[8:40, 4 + b * 18 : 20 + b * 18] = 0
    return f


def decode_counter(f):
    bits = [f[16:32, 8 + b * 18 : 16 + b * 18].mean() > 128 for b in range(5)]
    return sum(1 << b for b, on in enumerate(bits) if on)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    path = tmp_path_factory.mktemp("mov") / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (VW, VH))
    assert w.isOpened()
    for i in range(VT):
        w.write(counter_frame(i)[..., ::-1])
    w.release()
    cap = cv2.VideoCapture(str(path))
    seq = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        seq.append(f[..., ::-1])
    cap.release()
    return path, np.stack(seq)


def test_video_sequential_and_counter(movie):
    path, seq = movie
    with open_frames(path) as src:
        assert isinstance(src, VideoFrames)
        assert len(src) == VT == len(seq)
        assert src.size == (VH, VW) and src.frame_numbers == list(range(VT))
        for i in range(VT):
            f = src.read(i)
            assert decode_counter(f) == i
            np.testing.assert_array_equal(f, seq[i])


@pytest.mark.parametrize("cache_size", [1, 4, 16])
def test_video_random_access_matches_sequential(movie, cache_size):
    path, seq = movie
    src = VideoFrames(path, cache_size=cache_size)
    order = list(np.random.default_rng(cache_size).permutation(VT))
    order += list(range(VT)) + list(range(VT - 1, -1, -1)) + [29, 0, 28, 1, 15, 14, 15]
    for i in order:
        f = src.read(i)
        assert decode_counter(f) == i
        np.testing.assert_array_equal(f, seq[i])
    # read(i) after read(j > i)
    src.read(25)
    np.testing.assert_array_equal(src.read(3), seq[3])
    src.close()


# --------------------------------------------------------------------------- preview


def test_track_colors_and_draw():
    c = track_colors(8)
    assert c.shape == (8, 3) and c.dtype == np.uint8
    assert len({tuple(x) for x in c}) == 8
    np.testing.assert_array_equal(track_colors(3), c[:3])

    frame = np.full((100, 120, 3), 40, np.uint8)
    xy = np.array([[[10.0, 20.0], [50.0, 50.0]], [[30.25, 40.5], [60.0, 70.0]]])
    vis = np.array([[True, True], [True, False]])
    out = draw_tracks(frame, xy, vis, radius=4)
    assert out is not frame and (frame == 40).all()
    np.testing.assert_array_equal(out[40, 30], c[0])  # filled dot at (x=30.25, y=40.5)
    assert (out[30, 20] != 40).any()  # tail segment between the two positions
    assert (out[70, 64] != 40).any()  # ring of the occluded point

    ring = draw_tracks(frame, np.array([[[60.0, 70.0]]]), np.array([[False]]), radius=6)
    assert (ring[70, 60] == 40).all()  # occluded: hollow centre
    assert (ring[70, 66] != 40).any() and (ring[64, 60] != 40).any()


def make_preview_inputs(T=6):
    clip = np.full((T, 60, 80, 3), 30, np.uint8)
    src = ArrayFrames(clip)
    xy = np.zeros((T, 2, 2))
    xy[:, 0, 0] = 10 + 5 * np.arange(T)
    xy[:, 0, 1] = 20
    xy[:, 1] = (40, 45)
    vis = np.ones((T, 2), bool)
    return src, xy, vis


def test_preview_mp4(tmp_path):
    src, xy, vis = make_preview_inputs()
    out = tmp_path / "p.mp4"
    calls = []
    write_preview(src, xy, vis, out, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert sorted(os.listdir(tmp_path)) == ["p.mp4"]
    back = VideoFrames(out)
    assert len(back) == 6 and back.size == (60, 80)
    f = back.read(4)
    col = track_colors(2)
    assert np.abs(f[20, 30].astype(int) - col[0]).max() < 40
    assert np.abs(f[45, 40].astype(int) - col[1]).max() < 40


def test_preview_png_sequence(tmp_path):
    src, xy, vis = make_preview_inputs()
    src.frame_numbers = list(range(1001, 1007))
    write_preview(src, xy, vis, tmp_path / "prev.####.png", frame_indices=range(6), tail=3)
    names = sorted(os.listdir(tmp_path))
    assert names == [f"prev.{n}.png" for n in range(1001, 1007)]
    back = open_frames(tmp_path)
    assert len(back) == 6 and back.frame_numbers[0] == 1001
    col = track_colors(2)
    np.testing.assert_array_equal(back.read(2)[20, 20], col[0])

    write_preview(src, xy[:2], vis[:2], tmp_path / "dir", frame_indices=[3, 4])
    assert sorted(os.listdir(tmp_path / "dir")) == ["preview.1004.png", "preview.1005.png"]


def test_preview_downscales_large_frames(tmp_path):
    src = ArrayFrames(np.zeros((2, 1200, 2400, 3), np.uint8))
    xy = np.array([[[1200.0, 600.0]]] * 2)
    write_preview(src, xy, np.ones((2, 1), bool), tmp_path / "big.png")
    img = cv2.imread(str(tmp_path / "big.0001.png"))
    assert img.shape == (960, 1920, 3)
    assert img[480, 960].any()


class FailingFrames(ArrayFrames):
    def _read(self, index):
        if index == 3:
            raise FrameReadError("frame 3 (<test>): boom")
        return super()._read(index)


@pytest.mark.parametrize("name", ["fail.mp4", "fail.%04d.png"])
def test_preview_atomic_on_failure(tmp_path, name):
    _, xy, vis = make_preview_inputs()
    src = FailingFrames(np.zeros((6, 60, 80, 3), np.uint8))
    with pytest.raises(FrameReadError, match="boom"):
        write_preview(src, xy, vis, tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_exr_data_window_and_single_image(tmp_path):
    import OpenEXR

    a = np.full((2, 3), 1.0, np.float32)
    hdr = {
        "compression": OpenEXR.ZIP_COMPRESSION,
        "type": OpenEXR.scanlineimage,
        "dataWindow": (np.array([4, 1], np.int32), np.array([6, 2], np.int32)),
        "displayWindow": (np.array([0, 0], np.int32), np.array([9, 4], np.int32)),
    }
    OpenEXR.File(hdr, {"R": a, "G": a, "B": a}).write(str(tmp_path / "dw.exr"))
    src = open_frames(tmp_path / "dw.exr")  # no number in the name: one frame
    assert len(src) == 1 and src.size == (5, 10) and src.frame_numbers == [0]
    img = src.read(0)
    assert img[1:3, 4:7].min() == 255 and img.sum() == 255 * 3 * 6

    cv2.imwrite(str(tmp_path / "still.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="linear"):
        open_frames(tmp_path / "still.png").read_linear(0)


# -- DPX and Cineon --------------------------------------------------------------------------
BLENDER_WRITES_FILM = r"""
import sys, bpy
src, out = sys.argv[1], sys.argv[2]
img = bpy.data.images.load(src)
s = bpy.context.scene.render.image_settings
for fmt, depth, ext in (("DPX", "8", "dpx"), ("DPX", "10", "dpx"), ("DPX", "12", "dpx"), ("DPX", "16", "dpx"),
                        ("CINEON", None, "cin")):
    s.file_format = fmt
    if depth:
        s.color_depth = depth
    img.save_render(f"{out}/plate_{fmt}_{depth}.0001.{ext}")
"""


@pytest.fixture(scope="module")
def blender_film(tmp_path_factory):
    """DPX (8, 10, 12 and 16 bits) and Cineon files written by Blender itself from one photo crop."""
    pytest.importorskip("bpy")
    import subprocess

    from pipstrack.evaluation.harness import load_photo

    d = tmp_path_factory.mktemp("film")
    src = np.ascontiguousarray(load_photo("astronaut")[100:137, 200:253])  # odd sizes: line padding
    cv2.imwrite(str(d / "src.png"), cv2.cvtColor(src, cv2.COLOR_RGB2BGR))
    subprocess.run(
        [sys.executable, "-c", BLENDER_WRITES_FILM, str(d / "src.png"), str(d)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return d, src


def test_dpx_from_blender_decodes_to_the_linear_picture_it_wrote(blender_film):
    """Blender writes DPX as linear values (transfer characteristic 'linear'): every bit depth
    decodes to the sRGB-decoded source within its quantisation, as float32 linear, and through
    the display transform back to the source's 8-bit values."""
    from pipstrack.io.frames import decode_image, decode_image_bytes

    d, src = blender_film
    s = src / 255.0
    linear = np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)
    for depth, step in (("8", 1 / 255), ("10", 1 / 1023), ("12", 1 / 4095), ("16", 1 / 65535)):
        path = str(d / f"plate_DPX_{depth}.0001.dpx")
        img = decode_image(path)
        assert img.dtype == np.float32 and img.shape == src.shape, depth
        assert np.abs(img - linear).max() <= step + 1e-4, depth  # Blender truncates to its steps
        np.testing.assert_array_equal(decode_image_bytes(open(path, "rb").read(), ".dpx"), img)
        if depth != "8":  # 8 (and 10) bits of linear values lose the shadows' 8-bit steps
            shown = open_frames(path).read(0)
            assert np.abs(shown.astype(int) - src).max() <= (3 if depth == "10" else 1), depth


def test_cineon_from_blender_decodes_as_log_code_values(blender_film):
    """Cineon is log: its 10-bit code values come out as uint16, in the source's order of
    brightness (a log curve keeps it: rank correlation per channel), RGB not swapped."""
    from pipstrack.io.frames import decode_image

    d, src = blender_film
    img = decode_image(str(d / "plate_CINEON_None.0001.cin"))
    assert img.shape == src.shape and img.dtype == np.uint16

    def ranks(v):
        return np.argsort(np.argsort(v.ravel(), kind="stable")).astype(float)

    for c in range(3):
        for other in range(3):
            r = np.corrcoef(ranks(src[..., c]), ranks(img[..., other]))[0, 1]
            assert (r > 0.99) if c == other else (r < 0.99), (c, other, r)


def _dpx_bytes(values, bits, packing, order=">", descriptor=50, transfer=1):
    """A minimal DPX file (the header fields the decoder reads) holding ``values`` (H, W, C)."""
    import struct

    h, w, c = values.shape
    n = w * c
    flat = values.reshape(h, n).astype(np.uint64)
    if bits == 10 and packing in (1, 2):
        words = -(-n // 3)
        padded = np.zeros((h, 3 * words), np.uint64)
        padded[:, :n] = flat
        shifts = (22, 12, 2) if packing == 1 else (20, 10, 0)
        trip = padded.reshape(h, words, 3)
        data = sum(trip[..., k] << np.uint64(s) for k, s in enumerate(shifts)).astype(order + "u4").tobytes()
    elif bits == 16:
        data = flat.astype(order + "u2").tobytes()
    else:
        raise ValueError(bits)
    head = bytearray(2048)
    struct.pack_into(order + "4sI", head, 0, b"SDPX" if order == ">" else b"XPDS", 2048)
    struct.pack_into(order + "HII", head, 770, 1, w, h)
    struct.pack_into(order + "BBBBHHI", head, 800, descriptor, transfer, 0, bits, packing, 0, 2048)
    return bytes(head) + data


@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("packing", [1, 2])
def test_dpx_10bit_methods_and_byte_orders(order, packing):
    from pipstrack.io import film

    rng = np.random.default_rng(packing)
    values = rng.integers(0, 1024, (5, 7, 3))
    img = film.decode(_dpx_bytes(values, 10, packing, order))
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(np.round(img / 65535 * 1023).astype(int), values)
    rgba = rng.integers(0, 65536, (4, 3, 4))
    abgr = film.decode(_dpx_bytes(rgba[..., ::-1], 16, 0, order, descriptor=52))
    np.testing.assert_array_equal(abgr, rgba[..., :3])  # ABGR stored, RGB out, alpha dropped


def test_bad_dpx_files_say_what_is_wrong(tmp_path):
    from pipstrack.io.frames import FrameReadError, decode_image

    values = np.full((8, 8, 3), 512)
    good = _dpx_bytes(values, 10, 1)
    cases = {
        "cut.0001.dpx": (good[:-100], "truncated"),
        "rle.0001.dpx": (good[:806] + b"\x00\x01" + good[808:], "run-length"),
        "cmyk.0001.dpx": (good[:800] + bytes([100]) + good[801:], "descriptor 100"),
        "text.0001.dpx": (b"hello, not a plate" * 10, "not a DPX"),
    }
    for name, (data, why) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FrameReadError, match=why):
            decode_image(str(tmp_path / name))
        with pytest.raises(FrameReadError, match=why):
            open_frames(str(tmp_path / name)).read(0)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_exr_in_a_sequence_names_the_frame(tmp_path, keep):
    """An EXR cut off while it was copied (a render still being written): an error that names
    the frame and says truncated, never a picture with black or stale rows."""
    import OpenEXR

    img = np.random.default_rng(1).random((64, 80, 3)).astype(np.float16)
    for i in range(3):
        OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"RGB": img}).write(str(tmp_path / f"r.{i + 1:04d}.exr"))
    data = (tmp_path / "r.0002.exr").read_bytes()
    (tmp_path / "r.0002.exr").write_bytes(data[: int(len(data) * keep)])
    src = open_frames(str(tmp_path / "r.0001.exr"))
    src.read(0)
    with pytest.raises(FrameReadError, match=r"frame 2 .*truncated"):
        src.read(1)


BLENDER_WRITES_8BIT = r"""
import sys, bpy
src, out = sys.argv[1], sys.argv[2]
img = bpy.data.images.load(src)
s = bpy.context.scene.render.image_settings
for fmt, ext in (("PNG", "png"), ("TARGA", "tga"), ("TARGA_RAW", "tga"), ("BMP", "bmp"), ("WEBP", "webp"),
                 ("HDR", "hdr"), ("DPX", "dpx")):
    s.file_format = fmt
    if fmt == "DPX":
        s.color_depth = "16"
    img.save_render(f"{out}/plate_{fmt}.0001.{ext}")
"""


def test_targa_bmp_webp_and_hdr_from_blender(tmp_path):
    """Formats Blender writes that OpenCV alone does not cover: Targa (RLE and raw, through
    Pillow) and BMP decode exactly as the PNG Blender wrote beside them; WebP within its lossy
    coding; Radiance HDR as linear values, as the 16-bit linear DPX beside it."""
    pytest.importorskip("bpy")
    import subprocess

    from pipstrack.evaluation.harness import load_photo
    from pipstrack.io.frames import decode_image, decode_image_bytes

    src = np.ascontiguousarray(load_photo("astronaut")[100:137, 200:253])
    cv2.imwrite(str(tmp_path / "src.png"), cv2.cvtColor(src, cv2.COLOR_RGB2BGR))
    subprocess.run([sys.executable, "-c", BLENDER_WRITES_8BIT, str(tmp_path / "src.png"), str(tmp_path)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    png = decode_image(str(tmp_path / "plate_PNG.0001.png"))
    for fmt, ext in (("TARGA", "tga"), ("TARGA_RAW", "tga"), ("BMP", "bmp")):
        path = str(tmp_path / f"plate_{fmt}.0001.{ext}")
        np.testing.assert_array_equal(decode_image(path), png, err_msg=fmt)
        np.testing.assert_array_equal(decode_image_bytes(open(path, "rb").read(), f".{ext}"), png, err_msg=fmt)
        np.testing.assert_array_equal(open_frames(path).read(0), png, err_msg=fmt)
    webp = decode_image(str(tmp_path / "plate_WEBP.0001.webp"))
    assert webp.shape == png.shape and np.abs(webp.astype(int) - png).mean() < 3
    hdr, dpx = (decode_image(str(tmp_path / f"plate_{f}.0001.{e}")) for f, e in (("HDR", "hdr"), ("DPX", "dpx")))
    assert hdr.dtype == np.float32 and np.allclose(hdr, dpx, rtol=0.02, atol=2e-3)
    cut = tmp_path / "cut.0001.tga"
    data = (tmp_path / "plate_TARGA_RAW.0001.tga").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrameReadError, match="truncated|cannot decode"):
        decode_image(str(cut))


def test_multilayer_exr_reads_the_combined_pass(tmp_path):
    """A Blender multilayer EXR (passes named ViewLayer.Pass.Channel): the combined pass."""
    import OpenEXR

    rng = np.random.default_rng(4)
    combined, depth = rng.random((16, 24, 3)).astype(np.float32), rng.random((16, 24)).astype(np.float32)
    channels = {f"ViewLayer.Combined.{c}": np.ascontiguousarray(combined[..., k]) for k, c in enumerate("RGB")}
    channels.update({"ViewLayer.Combined.A": np.ones((16, 24), np.float32), "ViewLayer.Depth.Z": depth})
    channels.update({f"ViewLayer.AO.{c}": np.zeros((16, 24), np.float32) for c in "RGB"})
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, channels).write(str(tmp_path / "ml.0001.exr"))
    from pipstrack.io.frames import decode_image

    np.testing.assert_array_equal(decode_image(str(tmp_path / "ml.0001.exr")), combined)
