"""Drives a tracking operator's invoke/modal path in headless Blender, where no event loop runs.

Blender as a module refuses ``INVOKE_DEFAULT`` (no window events) and so cannot hold a modal
handler; the harness runs the operator's own ``begin_modal``, ``modal`` and ``cancel`` on a
stand-in for the operator instance and feeds ``modal`` timer events every 0.1 s, as Blender's
event timer would, timing each call. Once markers have appeared it can do one thing a user or
Blender does meanwhile: "undo", "load" (open a saved file), "busy" (a real Cycles render: the
main thread does not tick for seconds) or "esc".
"""

import gc
import resource
import time


class Event:
    """What ``modal`` reads of a Blender event."""

    def __init__(self, type_, value="NOTHING", timer=None):
        self.type, self.value, self.timer = type_, value, timer


def stand_in(cls, step, reports):
    class Operator:
        direction = step.get("direction", "BOTH")

        def report(self, kind, message):
            reports.append([sorted(kind)[0], message])

    for name in ("begin_modal", "modal", "cancel", "_end_modal", "_report", "_start", "make_settings"):
        setattr(Operator, name, getattr(cls, name))
    return Operator()


def busy(bpy, seconds):
    """Blender's main thread busy with a real render for about ``seconds`` (Cycles, CPU)."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.render.resolution_x, scene.render.resolution_y = 320, 180
    scene.cycles.samples = 4
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:  # a few renders: no knob makes one take a set time
        bpy.ops.render.render()
    return time.monotonic() - t0


def run(bpy, addon, ctx, step, out, dump):
    clip = ctx["edit_movieclip"]
    reports = []
    op = stand_in(getattr(addon.operators, step.get("operator", "PIPSTRACK_OT_track_markers")), step, reports)
    action, result = step.get("action"), {}
    with bpy.context.temp_override(**ctx):
        if action == "undo":
            bpy.ops.ed.undo_push(message="before tracking")
            bpy.ops.ed.undo_push(message="before tracking")
        if action == "load":
            bpy.ops.wm.save_as_mainfile(filepath=step["path"])
        before = dump(clip)
        t0 = time.perf_counter()
        started = op.begin_modal(bpy.context)
        result["begin_s"] = time.perf_counter() - t0
        if not started:
            return {"started": False, "reports": reports}
        run_ = op._run
        ticks, cpu, ret, done_action, during, slow = [], [], None, None, None, []
        collecting = []  # (generation, seconds) of Python's cycle collections inside the tick
        started_at = [0.0]

        def watch_gc(phase, info):
            if phase == "start":
                started_at[0] = time.perf_counter()
            else:
                collecting.append((info["generation"], time.perf_counter() - started_at[0]))

        gc.callbacks.append(watch_gc)
        end = time.monotonic() + step.get("timeout", 240)
        while time.monotonic() < end:
            queued, final = len(run_._todo), run_._final is not None
            del collecting[:]
            f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            t0, c0 = time.perf_counter(), time.thread_time()
            ret = op.modal(bpy.context, Event("TIMER", timer=op._timer))
            ticks.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)  # what the tick itself computed (not time lost to other processes)
            if ticks[-1] > 0.025 or cpu[-1] > 0.02:  # what a slow tick was doing
                faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
                slow.append(
                    dict(
                        tick=len(ticks) - 1,
                        wall=round(ticks[-1], 4),
                        cpu=round(cpu[-1], 4),
                        queued=queued,
                        final=final,
                        left=len(run_._todo),
                        gc=[(g, round(s, 4)) for g, s in collecting],
                        page_faults=faults,
                    )
                )
            if ret != {"PASS_THROUGH"}:
                break
            if len(ticks) == 3:  # a full collection while the run goes on: what it costs a tick now
                result["frozen_during"] = gc.get_freeze_count()
                t0 = time.perf_counter()
                gc.collect()
                result["collection_during_run_s"] = time.perf_counter() - t0
            if action == "busy" and done_action is None and run_.job.accepted:
                done_action = action  # mid-upload (pixels go a frame per tick): the backend must wait
                result["busy_s"] = busy(bpy, step.get("seconds", 5.0))
            elif action and done_action is None and run_.job.partial is not None and run_._have_xy is not None:
                if not (run_._have_xy[..., 0] == run_._have_xy[..., 0]).any():
                    pass  # nothing written yet
                else:
                    during = dump(clip)
                    done_action = action
                    if action == "esc":
                        ret = op.modal(bpy.context, Event("ESC", "PRESS"))
                        break
                    if action == "undo":
                        bpy.ops.ed.undo()
                        result["reloaded"] = True  # undo reloads Blender's data: the clip is a new object
                        ret = op.modal(bpy.context, Event("TIMER", timer=op._timer))
                        break
                    elif action == "load":
                        bpy.ops.wm.open_mainfile(filepath=step["path"])
                        result["reloaded"] = True
                        # Blender removes a modal handler on file load and calls its cancel()
                        break
            time.sleep(0.1)  # Blender's event timer: 0.1 s
    gc.callbacks.remove(watch_gc)
    result["frozen_after"] = gc.get_freeze_count()
    t0 = time.perf_counter()
    gc.collect()
    result["full_collection_s"] = time.perf_counter() - t0  # what a full collection costs in this Blender
    result.update(
        started=True,
        ticks=ticks,
        cpu=cpu,
        returned=sorted(ret) if ret else None,
        state=run_.state,
        message=run_.message,
        reports=reports,
        before=before,
        during=during,
        action=done_action,
        job=run_.job.id,
        active_runs=len(addon.job_driver.ACTIVE),
        written=run_.written,
        slow=slow,
    )
    return result
