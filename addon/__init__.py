"""pipstrack for Blender: PIPs point tracking through occlusions in the Movie Clip Editor.

The add-on is a thin client: it sends a clip's frames (or their file paths) and the selected
tracks' keyframes to `pipstrack serve` over ZeroMQ and writes the trajectories back as
ordinary tracking markers. It needs only numpy and pyzmq (no torch) so it loads instantly.
``_pipstrack/`` is a build-time copy of the backend modules it shares: ``conventions`` (pixels
and markers, frame numbers), ``wire`` (protocol and client) and ``io.formats`` / ``io.export``
(track files and exporters); see tools/build_extension.py.
"""

from . import compositing, exporting, operators, panels, preferences, properties

_modules = (preferences, properties, operators, compositing, exporting, panels)  # panels last: they draw the others


def register():
    for m in _modules:
        m.register()


def unregister():
    for m in reversed(_modules):
        m.unregister()
