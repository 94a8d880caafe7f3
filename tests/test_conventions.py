"""pipstrack.conventions against the real thing: Blender's own feature detector says where a
marker of a known pixel lies and which file a clip frame shows, Blender's own "Standard" view
says what a linear image looks like, OpenCV's resampling says where a point lands at the
working size. Nothing here restates a formula to compare the code with."""

import os
import tempfile

import cv2
import numpy as np
import pytest

from pipstrack import conventions as cv


@pytest.fixture(scope="module")
def blender():
    """Blender as a module (bpy), with its user configuration in a temporary folder."""
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="pipstrack-bl-conv-"))
    import bpy

    return bpy


def dots_image(shape, dots):
    """Sharp Gaussian dots (sigma 1 px) centred on the given pixels; Blender's Harris detector
    finds such a dot exactly on its centre pixel."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros(shape)
    for x, y in dots:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0)
    return cv2.cvtColor(np.clip(img * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def detected_markers(bpy, clip):
    """Blender's own feature detector on the scene's current frame: [(clip frame, co)]."""
    from pipstrack.evaluation.clip_editor import clip_editor_context

    ctx = clip_editor_context(bpy, clip)
    with bpy.context.temp_override(**ctx):
        for t in clip.tracking.tracks:
            t.select = True
        if len(clip.tracking.tracks):
            bpy.ops.clip.delete_track()
        assert bpy.ops.clip.detect_features(placement="FRAME", margin=2, threshold=0.05, min_distance=8) == {"FINISHED"}
    return [(m.frame, tuple(m.co)) for t in clip.tracking.tracks for m in t.markers]


def test_pixel_to_marker_is_where_blender_puts_a_detected_feature(blender, tmp_path):
    """A wide, short frame (so a swapped width and height shows) with dots at uneven places (so
    a flipped or half-pixel-shifted axis shows): Blender's markers on them are the dots'
    pixels under marker_to_pixel, and pixel_to_marker of the dots is what Blender stored."""
    H, W = 64, 160
    dots = [(20, 15), (141, 40), (75, 52), (33, 6)]
    cv2.imwrite(str(tmp_path / "dots.0001.png"), dots_image((H, W), dots))
    clip = blender.data.movieclips.load(str(tmp_path / "dots.0001.png"))
    assert tuple(clip.size) == (W, H)
    blender.context.scene.frame_set(1)
    found = sorted(cv.marker_to_pixel(co, width=W, height=H).tolist() for _, co in detected_markers(blender, clip))
    np.testing.assert_allclose(found, sorted(map(list, dots)), atol=1e-4)
    cos = sorted((co for _, co in detected_markers(blender, clip)), key=lambda c: (c[0], c[1]))
    mine = sorted(map(tuple, cv.pixel_to_marker(np.array(dots, float), width=W, height=H)), key=lambda c: (c[0], c[1]))
    np.testing.assert_allclose(cos, mine, atol=1e-6)  # marker co is stored as float32


@pytest.mark.parametrize("ext", ["png", "jp2"])
def test_frame_numbers_are_blenders(blender, tmp_path, ext):
    """An image sequence whose file number moves a dot: on each scene frame, the marker Blender's
    detector puts on the frame it shows sits where the dot of the file that conventions names
    lies (clip starting on scene frame 5, frame offset 2; ``plate_v2.0993.jp2``: the number is
    0993, neither the 2 of ``_v2`` nor of ``.jp2``)."""
    H, W = 48, 160

    def dot(number):
        return 10 + 6 * (number - 990), 20

    for n in range(990, 1012):
        assert cv2.imwrite(str(tmp_path / f"plate_v2.{n:04d}.{ext}"), dots_image((H, W), [dot(n)]))
    first_file = str(tmp_path / f"plate_v2.0993.{ext}")
    name = cv.split_sequence_name(first_file)
    assert (name.number, name.digits, name.tail) == (993, 4, f".{ext}")
    assert name.path(994) == str(tmp_path / f"plate_v2.0994.{ext}")
    clip = blender.data.movieclips.load(first_file)
    clip.frame_start, clip.frame_offset = 5, 2
    scene = blender.context.scene
    for scene_frame in (5, 6, 9, 16):
        scene.frame_set(scene_frame)
        [(marker_frame, co)] = detected_markers(blender, clip)
        clip_frame = cv.scene_to_clip_frame(scene_frame, clip.frame_start)
        assert marker_frame == clip_frame
        assert cv.clip_to_scene_frame(clip_frame, clip.frame_start) == scene_frame
        assert cv.job_index_to_clip_frame(cv.clip_frame_to_job_index(clip_frame)) == clip_frame
        shown = cv.file_number(name.number, clip_frame, clip.frame_offset)
        np.testing.assert_allclose(cv.marker_to_pixel(co, width=W, height=H), dot(shown), atol=1e-4)


def test_display_transform_is_blenders_standard_view(blender, tmp_path):
    """A linear float image saved by Blender through its "Standard" view (8-bit PNG, no
    dither) is, to the level, what display_transform makes of the same values."""
    W, H = 256, 2
    v = np.linspace(0.0, 1.2, W, dtype=np.float32)
    rgb = np.stack([v, v**2, np.sqrt(v / 1.2)], axis=-1)
    img = blender.data.images.new("linear-ramp", W, H, float_buffer=True, alpha=False)
    assert img.colorspace_settings.name == "Linear Rec.709"
    px = np.ones((H, W, 4), np.float32)
    px[..., :3] = rgb[None]
    img.pixels.foreach_set(px.ravel())
    scene = blender.context.scene
    view = scene.view_settings
    view.view_transform, view.look, view.exposure, view.gamma = "Standard", "None", 0.0, 1.0
    scene.render.dither_intensity = 0.0
    fmt = scene.render.image_settings
    fmt.file_format, fmt.color_depth, fmt.color_mode = "PNG", "8", "RGB"
    img.save_render(str(tmp_path / "ramp.png"), scene=scene)
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "ramp.png")), cv2.COLOR_BGR2RGB)[0]
    np.testing.assert_array_equal(got, cv.display_transform(rgb))
    blender.data.images.remove(img)


# -- without Blender -------------------------------------------------------------------------


def test_markers_round_trip_and_frame_edges():
    H, W = 96, 128
    xy = np.array([[0.0, 0.0], [-0.5, -0.5], [127.5, 95.5], [63.25, 17.75]])
    co = cv.pixel_to_marker(xy, width=W, height=H)
    np.testing.assert_array_equal(co[1], [0.0, 1.0])  # the image's top-left corner is Blender's (0, 1)
    np.testing.assert_array_equal(co[2], [1.0, 0.0])
    np.testing.assert_allclose(cv.marker_to_pixel(co, width=W, height=H), xy, rtol=0, atol=1e-12)
    assert cv.inside_frame(xy, width=W, height=H).all()
    assert not cv.inside_frame(np.array([[-0.51, 3], [3, 95.51], [np.nan, 1]]), width=W, height=H).any()
    with pytest.raises(TypeError):
        cv.pixel_to_marker(xy, W, H)  # sizes by keyword only: no order to get wrong


def test_window_inside_means_no_replicated_border_pixel_is_read():
    """The rule the polish, the lead and re-detection match by: a window it calls inside is read
    wholly from the frame by OpenCV's sub-pixel sampler; a hair further out it is not."""
    import cv2

    rng = np.random.default_rng(3)
    H, W, half = 30, 40, 7
    img = rng.uniform(0, 255, (H, W)).astype(np.float32)
    size = (2 * half + 1, 2 * half + 1)
    for x, y in [(half, half), (W - 1 - half, H - 1 - half), (half, 20)]:
        assert cv.window_inside([x, y], width=W, height=H, half=half)
        np.testing.assert_array_equal(
            cv2.getRectSubPix(img, size, (x, y)), img[y - half : y + half + 1, x - half : x + half + 1]
        )
    out = np.array([[half - 0.01, 10], [W - half - 0.99, 10], [20, half - 0.01], [20, H - half - 0.99], [np.nan, 10]])
    assert not cv.window_inside(out, width=W, height=H, half=half).any()


@pytest.mark.parametrize(
    "path,expect",
    [
        ("/a/plate.1001.exr", ("/a/plate.", 1001, 4, ".exr")),
        ("plate.1001.jp2", ("plate.", 1001, 4, ".jp2")),
        ("shot_v2.0998.png", ("shot_v2.", 998, 4, ".png")),
        ("/x/plate1001_final.tif", ("/x/plate", 1001, 4, "_final.tif")),
        ("frame7.png", ("frame", 7, 1, ".png")),
    ],
)
def test_sequence_names_split_by_blenders_rule(path, expect):
    got = cv.split_sequence_name(path)
    assert (got.head, got.number, got.digits, got.tail) == expect
    assert cv.split_sequence_name(got.path(got.number)) == got


def test_a_name_without_a_number_is_no_sequence():
    assert cv.split_sequence_name("/a/still.exr") is None
    assert cv.split_sequence_name("/take2/still.exr") is None  # the folder's digits do not count


def test_to_display_by_kind():
    assert cv.to_display(np.array([[[65535, 0, 257]]], np.uint16)).tolist() == [[[255, 0, 1]]]
    srgb = np.array([[[0.5, 1.2, -1.0]]], np.float32)
    assert cv.to_display(srgb, linear=False).tolist() == [[[128, 255, 0]]]
    assert cv.to_display(srgb).tolist() == cv.display_transform(srgb).tolist()


def blob_image(h, w, x, y, sigma):
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((255 * g)[..., None], 3, axis=2)


def centroid(img):
    g = img[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return (g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()


@pytest.mark.parametrize("x,y", [(300.25, 211.7), (640.6, 100.1)])
def test_working_resolution_mapping_matches_real_resampling(x, y):
    """A sub-pixel blob resized by the working-size rule lands where to_working says."""
    H, W = 540, 960
    work = cv.working_size(H, W, 512)
    small = cv.resize_to_working(blob_image(H, W, x, y, sigma=6.0), work)
    assert small.shape[:2] == work
    cx, cy = centroid(small)
    wx, wy = cv.to_working(np.array([x, y]), (H, W), work)
    assert abs(cx - wx) < 0.02 and abs(cy - wy) < 0.02
    np.testing.assert_allclose(cv.to_source(np.array([wx, wy]), (H, W), work), [x, y], atol=1e-9)


def test_working_size_keeps_small_clips_untouched():
    assert cv.working_size(270, 480, 512) == (270, 480)
    assert cv.working_size(270, 480, None) == (270, 480)
    h, w = cv.working_size(2160, 3840, 512)
    assert w == 512 and h % 8 == 0 and abs(h / w - 2160 / 3840) < 0.02
    frame = np.zeros((270, 480, 3), np.uint8)
    assert cv.resize_to_working(frame, (270, 480)) is frame  # no resampling at all
