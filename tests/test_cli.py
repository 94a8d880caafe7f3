"""`pipstrack track` and friends as a user runs them: a real process, real files."""

import json
import subprocess
import sys

import cv2
import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pipstrack", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def plate(tmp_path_factory, sample_clip):
    """The sample clip at half size as a PNG sequence numbered from 1001."""
    frames, truth = sample_clip
    folder = tmp_path_factory.mktemp("plate")
    for k, f in enumerate(frames[:16]):
        small = cv2.resize(f, (240, 136), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"plate.{1001 + k:04d}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return folder


def test_track_writes_json_csv_and_preview(plate, tmp_path):
    pts = tmp_path / "points.txt"
    pts.write_text("# frame,x,y,name\nframe,x,y,name\n1004,120.5,60.25,sign\n1008,40,30,corner\n1012,41,31,corner\n")
    out = tmp_path / "tracks.json"
    r = run(
        "track", plate, "--points", pts, "--out", out, "--preview", tmp_path / "preview.mp4", "--frames", "1003:1014"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "pipstrack-tracks" and doc["frames"] == list(range(1003, 1015))
    assert doc["source"]["width"] == 240 and doc["source"]["height"] == 136
    names = [t["name"] for t in doc["tracks"]]
    assert names == ["sign", "corner"]
    corner = doc["tracks"][1]
    assert corner["anchors"] == [[1008, 40.0, 30.0], [1012, 41.0, 31.0]]
    by_frame = {p[0]: p for p in corner["points"]}
    assert by_frame[1008][1:3] == [40.0, 30.0] and by_frame[1012][1:3] == [41.0, 31.0]
    assert sorted(by_frame) == list(range(1003, 1015))
    cap = cv2.VideoCapture(str(tmp_path / "preview.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12

    csv_out = tmp_path / "tracks.csv"
    r = run("track", plate, "--grid", "3x2", "--out", csv_out, "--frames", "1001:1004")
    assert r.returncode == 0, r.stderr
    rows = csv_out.read_text().strip().splitlines()
    assert rows[0] == "track,name,frame,x,y,visible,confidence"
    assert len(rows) == 1 + 6 * 4


@pytest.mark.parametrize(
    "points,extra,message",
    [
        ("1001,10,10\n1001,abc,3\n", [], "line 2"),
        ("1001,10\n", [], "line 1: expected 'frame,x,y'"),
        ("1001,400,10\n", [], "outside the 240x136 frame"),
        ("999,10,10\n", [], "the clip has no frame 999"),
        ("1001,10,10\n", ["--device", "tpu"], "unknown device 'tpu'"),
        ("1001,10,10\n", ["--frames", "1001:2000"], "no frame 2000"),
        ("1001,10,10\n", ["--model", "/nonexistent/weights.pth"], "/nonexistent/weights.pth: no such file"),
        ("1001,10,10\n", ["--threads", "0"], "--threads must be a positive number or auto, got '0'"),
    ],
)
def test_bad_input_gets_one_clear_line(plate, tmp_path, points, extra, message):
    pts = tmp_path / "points.txt"
    pts.write_text(points)
    out = tmp_path / "tracks.json"
    r = run("track", plate, "--points", pts, "--out", out, *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipstrack: error:") and message in lines[0], r.stderr
    assert not out.exists()


def test_missing_input_and_undecodable_frame(plate, tmp_path):
    pts = tmp_path / "p.txt"
    pts.write_text("1001,10,10\n")
    r = run("track", tmp_path / "nothing_here", "--points", pts, "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "no such file" in r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in sorted(plate.glob("*.png"))[:10]:
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "plate.1006.png").write_bytes(b"\x89PNG garbage")
    r = run("track", broken, "--points", pts, "--out", tmp_path / "t.json")
    assert r.returncode != 0 and "plate.1006.png" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


def test_truncated_jpeg_and_png_are_errors_that_name_the_frame(plate, tmp_path):
    """OpenCV decodes a cut-off JPEG with grey where the data stops: tracked, the points would be
    silently wrong from that frame on. Both formats fail with the frame named, no output."""
    pts = tmp_path / "p.txt"
    pts.write_text("1001,10,10\n")
    for suffix in (".jpg", ".png"):
        seq = tmp_path / f"cut{suffix[1:]}"
        seq.mkdir()
        for p in sorted(plate.glob("*.png"))[:8]:
            img = cv2.imread(str(p))
            cv2.imwrite(str(seq / (p.stem + suffix)), img)
        victim = seq / f"plate.1005{suffix}"
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) * 2 // 3])
        assert cv2.imread(str(victim)) is not None or suffix == ".png"  # OpenCV alone takes the JPEG
        r = run("track", seq, "--points", pts, "--out", tmp_path / "t.json")
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert "frame 1005" in lines[0] and "truncated" in lines[0], lines
        assert not (tmp_path / "t.json").exists()


def test_outputs_are_checked_before_tracking_and_follow_the_umask(plate, tmp_path):
    pts = tmp_path / "p.txt"
    pts.write_text("1001,10,10\n")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    for extra, message in (
        (["--out", blocker / "t.json"], f"{blocker} is a file, not a folder"),
        (["--out", tmp_path / "t.json", "--preview", blocker / "p.mp4"], f"{blocker} is a file"),
        (["--out", tmp_path / "t.json", "--preview", tmp_path / "p.xyz"], "unsupported preview output"),
    ):
        r = run("track", plate, "--points", pts, "--frames", "1001:1004", *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
        assert "tracking" not in r.stdout and not (tmp_path / "t.json").exists()  # refused before any work
    r = run("track", plate, "--points", pts, "--frames", "1001:1004", "--out", tmp_path / "t.json")
    assert r.returncode == 0
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_export_mistakes_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for args, message in (
        ([bad, tmp_path / "o.nk"], f"{bad}: not a pipstrack tracks file"),
        ([tmp_path / "none.json", tmp_path / "o.nk"], f"{tmp_path / 'none.json'}: No such file"),
    ):
        r = run("export", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"tracks": [], "anchors": []}))
    r = run("export", good, blocker / "o.nk")
    assert r.returncode == 2 and f"{blocker} is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["garbage"], "'garbage' is not a backend address"),
        (["127.0.0.1:5555"], "use tcp://HOST:PORT"),
        (["--keys", "/nonexistent/keys", "tcp://127.0.0.1:9"], "keys folder /nonexistent/keys"),
    ],
)
def test_ping_mistakes_are_one_line(args, message):
    r = run("ping", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_weights_command_reports_the_default_model(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipstrack", "weights"],
        capture_output=True,
        text=True,
        env={"PIPSTRACK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "default model" in r.stdout and "loads: yes" in r.stdout and "sha256" in r.stdout
    assert "not installed" in r.stdout
    assert "--precision auto: encoder " in r.stdout  # which arithmetic auto picks here


def test_output_piped_into_a_reader_that_stops_is_no_traceback():
    r = subprocess.run(
        f"{sys.executable} -m pipstrack weights | head -c 10", shell=True, capture_output=True, text=True
    )
    assert len(r.stdout) == 10 and "Traceback" not in r.stderr, r.stderr


def test_track_a_movie(plate, tmp_path):
    movie = tmp_path / "shot.mp4"
    frames = sorted(plate.glob("*.png"))[:12]
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(movie), cv2.VideoWriter_fourcc(*"mp4v"), 24, (first.shape[1], first.shape[0]))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    out = tmp_path / "tracks.json"
    r = run("track", movie, "--grid", "2x2", "--out", out, "--frames", "3:9")
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["frames"] == list(range(3, 10)) and len(doc["tracks"]) == 4
    assert all(len(t["points"]) == 7 for t in doc["tracks"])
