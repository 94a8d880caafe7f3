"""The Blender half of the demo (runs in a Python with bpy): install the extension, open the
sample clip in a Clip Editor, key one marker per sample point on the first frame, track them
with the add-on's operator through the backend, save the .blend and dump the markers.

    python tools/blender_session.py EXTENSION.zip ADDRESS OUT_DIR
"""

import json
import os
import sys
import tempfile

zip_path, address, out_dir = sys.argv[1:4]
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="pipstrack-demo-blender-"))

import bpy  # noqa: E402

from pipstrack.conventions import marker_to_pixel, pixel_to_marker  # noqa: E402
from pipstrack.datasets.sample import sample_clip_dir, sample_points_file  # noqa: E402
from pipstrack.evaluation.clip_editor import clip_editor_context  # noqa: E402
from pipstrack.io.formats import read_points  # noqa: E402

bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
prefs = bpy.context.preferences.addons["bl_ext.user_default.pipstrack"].preferences
prefs.address = address

scene = bpy.context.scene
clip = bpy.data.movieclips.load(str(sample_clip_dir() / "plate.1001.jpg"))
clip.frame_start = 1001  # scene frames = the plate's frame numbers
scene.frame_start, scene.frame_end = 1001, 1000 + clip.frame_duration
scene.frame_set(1001)
W, H = clip.size

ctx = clip_editor_context(bpy, clip)  # headless bpy: a Clip Editor for the operator's context

tracks = clip.tracking.objects.active.tracks
for name, rows in read_points(sample_points_file()):
    for frame, x, y in rows:
        track = tracks.get(name) or tracks.new(name=name, frame=int(frame) - 1000)
        marker = track.markers.find_frame(int(frame) - 1000) or track.markers.insert_frame(
            int(frame) - 1000, co=(0.5, 0.5)
        )
        marker.co = tuple(float(v) for v in pixel_to_marker((x, y), width=W, height=H))
        track.select = True

with bpy.context.temp_override(**ctx):
    result = bpy.ops.pipstrack.track_markers(direction="BOTH")
print(f"Blender: pipstrack.track_markers -> {sorted(result)}")

blend = os.path.join(out_dir, "pipstrack-demo.blend")
bpy.ops.wm.save_as_mainfile(filepath=blend)
dump = {
    t.name: [
        [m.frame + 1000, *(float(v) for v in marker_to_pixel(m.co[:], width=W, height=H)), bool(m.mute)]
        for m in t.markers
    ]
    for t in tracks
}
with open(os.path.join(out_dir, "blender_markers.json"), "w") as f:
    json.dump({"width": W, "height": H, "tracks": dump}, f)
print(f"Blender: saved {blend} with {len(dump)} tracks x {clip.frame_duration} frames")
