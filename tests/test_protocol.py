"""Unit tests of the wire protocol's validation (no sockets, no torch)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pipstrack.wire import protocol as P


def hdr(**fields):
    h = {"v": P.PROTOCOL_VERSION}
    h.update(fields)
    return json.dumps(h).encode()


def submit(**over):
    h = {
        "v": P.PROTOCOL_VERSION,
        "type": "submit",
        "job": "j1",
        "frame_count": 10,
        "frame_shape": [64, 96, 3],
        "dtype": "uint8",
        "colour": "srgb",
        "queries": [[0, 10.0, 20.0], [3, 95.5, 63.5]],
        "options": {"frame_range": [0, 9], "direction": "both", "working_size": 512, "iters": 6},
    }
    for k, v in over.items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def code_of(fn, *a):
    with pytest.raises(P.ProtocolError) as e:
        fn(*a)
    return e.value.code


def test_protocol_imports_without_torch_or_opencv():
    """The backend's own import of the wire format stays light (the extension's copy is checked
    with torch and OpenCV made unimportable: tests/test_layout.py)."""
    code = "import sys, pipstrack.wire.protocol; assert not {'torch', 'cv2'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_header_roundtrip_and_types():
    h, payload = P.parse([P.header(P.PING, None, jobs=[]), b"x"])
    assert h["type"] == "ping" and payload == [b"x"]
    assert code_of(P.parse, [hdr(type="nonsense")]) == P.E_BAD_TYPE
    assert code_of(P.parse, [hdr(type="pong")]) == P.E_BAD_TYPE  # a server type sent to the server
    assert code_of(P.parse, []) == P.E_BAD_MESSAGE
    assert code_of(P.parse, [b"\xff\xfe garbage"]) == P.E_BAD_MESSAGE
    assert code_of(P.parse, [b"[1, 2]"]) == P.E_BAD_MESSAGE
    assert code_of(P.parse, [b'{"v": 1, "type": "ping", "x": NaN}']) == P.E_BAD_MESSAGE
    assert code_of(P.parse, [b'{"type": "ping"}']) == P.E_BAD_FIELD
    assert code_of(P.parse, [b'{"v": "1", "type": "ping"}']) == P.E_BAD_FIELD
    assert code_of(P.parse, [b"{" + b" " * P.MAX_HEADER_BYTES + b"}"]) == P.E_TOO_LARGE
    assert code_of(P.parse, [P.header(P.PING)] + [b""] * P.MAX_PARTS) == P.E_TOO_LARGE


def test_version_mismatch_is_clear():
    with pytest.raises(P.ProtocolError) as e:
        P.parse([hdr(type="hello").replace(b'"v": 1', b'"v": 99')])
    assert e.value.code == P.E_VERSION and "99" in e.value.message and str(P.PROTOCOL_VERSION) in e.value.message


@pytest.mark.parametrize("job", [None, "", 5, "x" * 65, "bad\nid"])
def test_job_id_checked(job):
    h = {"v": P.PROTOCOL_VERSION, "type": "cancel"}
    if job is not None:
        h["job"] = job
    assert code_of(P.parse, [json.dumps(h).encode()]) == P.E_BAD_FIELD


def test_submit_good_json_and_binary():
    spec = P.check_submit(submit(), [])
    assert (spec.height, spec.width, spec.dtype, spec.first, spec.last, spec.iters) == (64, 96, "uint8", 0, 9, 6)
    assert spec.frame_bytes == 64 * 96 * 3
    q = np.array([[0, 1, 2], [9, 3, 4.5]])
    spec2 = P.check_submit(submit(queries="binary", points=2), [q.astype("<f8").tobytes()])
    np.testing.assert_array_equal(spec2.queries, q)
    # the client's own encoding validates
    h, payload = P.parse(spec2.submit_message())
    assert P.check_submit(h, payload).queries.shape == (2, 3)
    assert (spec2.refine, spec2.comotion) == (True, True)
    off = P.check_submit(submit(options={"refine": True, "comotion": False}), [])
    assert P.check_submit(*P.parse(off.submit_message())).comotion is False  # survives the round trip


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("frame_count", 0, P.E_BAD_FIELD),
        ("frame_count", "10", P.E_BAD_FIELD),
        ("frame_count", True, P.E_BAD_FIELD),
        ("frame_count", P.MAX_FRAMES + 1, P.E_BAD_FIELD),
        ("frame_shape", [64, 96], P.E_BAD_FIELD),
        ("frame_shape", [64, 96, 4], P.E_BAD_FIELD),
        ("frame_shape", [0, 96, 3], P.E_BAD_FIELD),
        ("frame_shape", [64.0, 96, 3], P.E_BAD_FIELD),
        ("frame_shape", [P.MAX_SIDE + 1, 96, 3], P.E_BAD_FIELD),
        ("frame_shape", [16384, 16384, 3], P.E_TOO_LARGE),
        ("dtype", "float64", P.E_BAD_FIELD),
        ("dtype", "int16", P.E_BAD_FIELD),
        ("colour", "rec709", P.E_BAD_FIELD),
        ("colour", "linear", P.E_BAD_FIELD),  # linear uint8
        ("source", "http", P.E_BAD_FIELD),
        ("queries", [], P.E_BAD_FIELD),
        ("queries", [[0, 1]], P.E_BAD_FIELD),
        ("queries", [[0, "a", 2]], P.E_BAD_FIELD),
        ("queries", [[0, True, 2]], P.E_BAD_FIELD),
        ("queries", "csv", P.E_BAD_FIELD),
        ("queries", [[0.5, 1, 2]], P.E_BAD_FIELD),
        ("queries", [[10, 1, 2]], P.E_BAD_FIELD),
        ("queries", [[0, 96, 2]], P.E_BAD_FIELD),
        ("queries", [[0, 1, -0.6]], P.E_BAD_FIELD),
        ("queries", [[0, 1e308 * 10, 2]], P.E_BAD_FIELD),
        ("options", [], P.E_BAD_FIELD),
        ("options", {"speed": 2}, P.E_BAD_FIELD),
        ("options", {"frame_range": [3, 2]}, P.E_BAD_FIELD),
        ("options", {"frame_range": [0, 10]}, P.E_BAD_FIELD),
        ("options", {"direction": "sideways"}, P.E_BAD_FIELD),
        ("options", {"working_size": 8}, P.E_BAD_FIELD),
        ("options", {"iters": 0}, P.E_BAD_FIELD),
        ("options", {"iters": 33}, P.E_BAD_FIELD),
        ("options", {"frame_range": [2, 9]}, P.E_BAD_FIELD),  # query on frame 0 outside the range
        ("options", {"refine": 1}, P.E_BAD_FIELD),
        ("options", {"comotion": "no"}, P.E_BAD_FIELD),
    ],
)
def test_submit_rejects(field, value, code):
    h = submit(**{field: value})
    assert code_of(P.check_submit, h, []) == code


def test_submit_binary_queries_checked():
    good = np.zeros((2, 3))
    assert code_of(P.check_submit, submit(queries="binary", points=3), [good.tobytes()]) == P.E_BAD_PAYLOAD
    assert code_of(P.check_submit, submit(queries="binary", points=2), []) == P.E_BAD_PAYLOAD
    assert code_of(P.check_submit, submit(queries="binary"), [good.tobytes()]) == P.E_BAD_FIELD
    nan = good.copy()
    nan[1, 2] = np.nan
    assert code_of(P.check_submit, submit(queries="binary", points=2), [nan.tobytes()]) == P.E_BAD_FIELD
    assert code_of(P.check_submit, submit(), [b"extra"]) == P.E_BAD_PAYLOAD


def test_frames_checked_against_the_job():
    spec = P.check_submit(submit(dtype="float16", colour="linear"), [])
    img = np.zeros((64, 96, 3), np.float16)
    first, imgs = P.check_frames({"job": "j1", "first": 2, "count": 2}, [img.tobytes(), memoryview(img)], spec)
    assert first == 2 and imgs[0].shape == (64, 96, 3) and imgs[0].dtype == np.float16
    bad = [
        ({"first": 2, "count": 2}, [img.tobytes()], P.E_BAD_PAYLOAD),  # count vs frames
        ({"first": 2, "count": 1}, [img.astype(np.float32).tobytes()], P.E_BAD_PAYLOAD),  # wrong dtype size
        ({"first": 2, "count": 1}, [img[:, :95].tobytes()], P.E_BAD_PAYLOAD),  # wrong shape
        ({"first": 9, "count": 2}, [img.tobytes()] * 2, P.E_BAD_FIELD),  # past the end
        ({"first": -1, "count": 1}, [img.tobytes()], P.E_BAD_FIELD),
        ({"first": 0, "count": 0}, [], P.E_BAD_FIELD),
        ({"first": 0, "count": P.MAX_FRAMES_PER_MESSAGE + 1}, [], P.E_BAD_FIELD),
        ({"count": 1}, [img.tobytes()], P.E_BAD_FIELD),
    ]
    for h, payload, code in bad:
        assert code_of(P.check_frames, {"job": "j1", **h}, payload, spec) == code, h
    assert code_of(P.check_paths, {"job": "j1", "first": 0, "paths": ["a.png"]}, [], spec) == P.E_BAD_STATE


def test_paths_checked():
    spec = P.check_submit(submit(source="paths"), [])
    assert P.check_paths({"first": 1, "paths": ["a.png", "b.png"]}, [], spec) == (1, ["a.png", "b.png"])
    assert code_of(P.check_paths, {"first": 9, "paths": ["a", "b"]}, [], spec) == P.E_BAD_FIELD
    assert code_of(P.check_paths, {"first": 0, "paths": [3]}, [], spec) == P.E_BAD_FIELD
    assert code_of(P.check_paths, {"first": 0, "paths": ["a"]}, [b"x"], spec) == P.E_BAD_PAYLOAD
    assert code_of(P.check_frames, {"first": 0, "count": 1}, [b"x"], spec) == P.E_BAD_STATE


def test_trajectories_roundtrip_and_checked():
    xy = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    vis = np.array([[1, 0, 1]] * 4, bool)
    conf = np.full((4, 3), 0.5, np.float32)
    parts = P.trajectories_message(P.RESULT, "j", 5, xy, vis, conf, seconds=1.5)
    h, payload = P.parse([bytes(parts[0])] + [np.asarray(p).tobytes() for p in parts[1:]], allowed=P.SERVER_TYPES)
    out = P.read_trajectories(h, payload)
    np.testing.assert_array_equal(out["xy"], xy)
    np.testing.assert_array_equal(out["visible"], vis)
    assert out["first"] == 5 and list(out["frame_indices"]) == [5, 6, 7, 8] and out["seconds"] == 1.5
    assert code_of(P.read_trajectories, h, payload[:2]) == P.E_BAD_PAYLOAD
    assert code_of(P.read_trajectories, h, [payload[0][:-4], payload[1], payload[2]]) == P.E_BAD_PAYLOAD
    assert out["verified"] is None  # not asked for, not sent: what an older server gives


def test_verified_frames_travel_only_to_a_client_that_asks():
    xy = np.zeros((4, 3, 2), np.float32)
    vis = np.ones((4, 3), bool)
    conf = np.ones((4, 3), np.float32)
    verified = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]], bool)
    parts = P.trajectories_message(P.RESULT, "j", 0, xy, vis, conf, verified=verified)
    assert len(parts) == 5
    h, payload = P.parse([bytes(parts[0])] + [np.asarray(p).tobytes() for p in parts[1:]], allowed=P.SERVER_TYPES)
    out = P.read_trajectories(h, payload)
    np.testing.assert_array_equal(out["verified"], verified)
    assert "verified" not in {k for k, v in out.items() if v is True}  # decoded, not left as the header flag
    assert code_of(P.read_trajectories, h, payload[:3]) == P.E_BAD_PAYLOAD  # announced, then missing
    # the request is a top-level submit field: the new client sends it, an old one does not
    spec = P.check_submit(
        json.loads(
            P.JobSpec(
                "j", 4, 8, 8, "uint8", "srgb", np.zeros((1, 3)), 0, 3, "both", None, 6, "frames"
            ).submit_message()[0]
        ),
        [np.zeros(3).tobytes()],
    )
    assert spec.verified is True
    hdr_old = dict(v=1, type="submit", job="k", frame_count=4, frame_shape=[8, 8, 3], queries=[[0, 1.0, 1.0]])
    assert P.check_submit(hdr_old, []).verified is False


def test_progress_and_loopback():
    assert P.check_progress({"done": 3, "total": 7}) == (3, 7)
    assert code_of(P.check_progress, {"done": 8, "total": 7}) == P.E_BAD_FIELD
    assert (
        P.is_loopback("tcp://127.0.0.1:5555") and P.is_loopback("tcp://localhost:1") and P.is_loopback("tcp://[::1]:5")
    )
    assert P.is_loopback("ipc:///tmp/x")
    assert (
        not P.is_loopback("tcp://0.0.0.0:5555")
        and not P.is_loopback("tcp://*:5555")
        and not P.is_loopback("tcp://10.0.0.2:1")
    )


def test_error_codes_are_distinct_strings():
    assert len(set(P.ERROR_CODES)) == len(P.ERROR_CODES)
    h, _ = P.parse(P.error_message(P.E_UNKNOWN_JOB, "no", "j"), allowed=P.SERVER_TYPES)
    assert h["code"] == "unknown_job" and h["job"] == "j"


def test_submit_keyframed_anchors_checked():
    rows = np.array([[0, 0, 10.0, 20.0], [0, 9, 30.0, 40.0], [1, 4, 5.0, 5.0]])
    h = submit(queries="binary", points=2, anchors=3)
    spec = P.check_submit(h, [rows.tobytes()])
    anchors = spec.anchors()
    assert spec.points == 2 and len(anchors) == 2
    np.testing.assert_array_equal(anchors[0], rows[:2, 1:])
    np.testing.assert_array_equal(anchors[1], rows[2:, 1:])
    again = P.check_submit(json.loads(spec.submit_message()[0]), spec.submit_message()[1:])
    np.testing.assert_array_equal(again.point_index, spec.point_index)

    def bad(r, **kw):
        return code_of(
            P.check_submit,
            submit(queries="binary", points=kw.get("points", 2), anchors=len(r)),
            [np.asarray(r, float).tobytes()],
        )

    assert bad([[0, 0, 1, 1], [2, 1, 1, 1]]) == P.E_BAD_FIELD  # point index out of range
    assert bad([[0, 0, 1, 1], [0, 1, 1, 1]]) == P.E_BAD_FIELD  # point 1 has no anchor
    assert bad([[0, 0, 1, 1], [0, 0, 2, 2], [1, 0, 1, 1]]) == P.E_BAD_FIELD  # two anchors on one frame
    assert bad([[0.5, 0, 1, 1], [1, 0, 1, 1]]) == P.E_BAD_FIELD
    assert (
        code_of(P.check_submit, submit(queries="binary", points=2, anchors=3), [rows[:2].tobytes()]) == P.E_BAD_PAYLOAD
    )
    assert code_of(P.check_submit, submit(options={"partial_interval": -1}), []) == P.E_BAD_FIELD
    assert code_of(P.check_submit, submit(source="video"), []) == P.E_BAD_FIELD  # no 'video' path
    assert P.check_submit(submit(source="video", video="/clips/a.mov"), []).video == "/clips/a.mov"
