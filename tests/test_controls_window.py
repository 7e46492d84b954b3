"""The play window against a real worker subprocess, under SDL's dummy video driver.

Synthetic pygame events stand in for the keyboard; the window loop is stepped until a bounded
number of frames has been shown. Wall-clock guards only stop a broken loop from hanging the suite.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402

from controls import keymap as km  # noqa: E402
from controls import play as cli  # noqa: E402
from controls import window as window_module  # noqa: E402
from controls.hud import HudState, stats_rows  # noqa: E402
from controls.link import WorldLink  # noqa: E402
from controls.pacing import CpuTimes, FramePacer, KeyLatency, MachineLoad, RateMeter  # noqa: E402
from controls.window import PlayWindow, WindowConfig  # noqa: E402
from tests.fakes import FullDisk  # noqa: E402
from world.data.dataset import EpisodeReader  # noqa: E402
from world.procedural.engine import ENGINE_VERSION  # noqa: E402
from world.server.client import ChunkEvent, WorldClient  # noqa: E402
from world.server.process import start_worker_process, stop_worker_process  # noqa: E402

GUARD_S = 30.0  # a stuck loop fails the test instead of hanging it; not a performance bound


@pytest.fixture(scope="module")
def worker():
    proc, endpoint = start_worker_process()
    yield endpoint
    stop_worker_process(proc)


@pytest.fixture
def make_window(worker, tmp_path, monkeypatch):
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent.json")
    pygame.display.init()
    pygame.font.init()
    opened: list[PlayWindow] = []

    def make(
        endpoint: str = worker, prompt: str = "green hills at noon", lookahead: int | None = None, **config
    ) -> PlayWindow:
        client = WorldClient(endpoint, timeout_s=5.0)
        client.open("engine", prompt, seed=7, lookahead=lookahead)
        config.setdefault("record_dir", tmp_path / "recordings")
        window = PlayWindow(WorldLink(client, retry_s=0.2), km.load_keymap(), WindowConfig(seed=7, **config))
        opened.append(window)
        return window

    yield make
    for window in opened:
        window.close()
        window.link.close()
    pygame.quit()


def press(code: int, text: str = "", up: bool = False) -> None:
    kind = pygame.KEYUP if up else pygame.KEYDOWN
    pygame.event.post(pygame.event.Event(kind, key=code, mod=0, unicode=text, scancode=0))


def type_text(text: str) -> None:
    for ch in text:
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text=ch))


def run_until(window: PlayWindow, done, guard_s: float = GUARD_S) -> None:
    deadline = time.monotonic() + guard_s
    while not done():
        assert time.monotonic() < deadline, "window loop made no progress"
        assert window.step(), "window closed unexpectedly"


def run_frames(window: PlayWindow, n: int) -> None:
    target = window.frames_shown + n
    run_until(window, lambda: window.frames_shown >= target)


def shown_keys(window: PlayWindow) -> tuple[str, ...]:
    return tuple(window._shown.record["action"]["keys"])


# ---- the window against a real worker ----------------------------------------------------------


def test_window_streams_walks_acks_and_renders_the_hud(make_window):
    window = make_window()
    run_frames(window, 6)
    assert window.link.connected and window._shown is not None
    press(pygame.K_w)
    press(pygame.K_LEFT)
    run_until(window, lambda: shown_keys(window) == ("forward", "turn_left"))
    # Acked as shown: the worker never has more than its window of chunks unacknowledged.
    session = window.link.client.status().session
    assert session["in_flight"] <= window.link.info["window"]
    assert window.pacer.buffered <= (window.link.info["window"] + 1) * window.link.info["chunk_frames"]
    press(pygame.K_w, up=True)
    press(pygame.K_LEFT, up=True)
    run_until(window, lambda: shown_keys(window) == ())
    state = window.hud_state(time.perf_counter())
    assert state.latency_ms is not None and state.latency_ms > 0  # key-to-frame measured from records
    assert state.connection == "connected" and state.backend.startswith("engine")
    assert state.prompt == "green hills at noon"
    assert state.gen_fps > 0 and state.shown_fps > 0
    # The HUD panel darkens the top-left corner of the frame it is drawn over.
    frame = pygame.surfarray.array3d(window.screen).swapaxes(0, 1)
    scaled = np.repeat(np.repeat(window._shown.frame, 8, axis=0), 8, axis=1)
    assert frame[20:40, 20:200].mean() < scaled[20:40, 20:200].mean()
    assert window.summary()["frames"] == window.frames_shown


def test_lookahead_1_keeps_one_chunk_ahead_of_the_screen_and_still_streams(make_window):
    window = make_window(lookahead=1)
    assert window.link.info["window"] == 1
    run_frames(window, 3)
    in_flight = []
    for up in (False, True):
        press(pygame.K_w, up=up)
        run_until(window, lambda up=up: shown_keys(window) == (() if up else ("forward",)))
        run_frames(window, 6)
        in_flight.append(window.link.client.status().session["in_flight"])
    assert max(in_flight) <= 1 and window.pacer.buffered <= 2 * window.link.info["chunk_frames"]
    assert len(window.latency.all_samples_ms) == 2 and window.errors == 0


def test_prompt_box_types_and_applies_a_prompt_mid_stream(make_window):
    window = make_window()
    run_frames(window, 3)
    press(pygame.K_t, "t")
    type_text("t")  # SDL sends the opening key's text too; it must not land in the box
    type_text("snowy mountains at dusk in fog")
    run_frames(window, 1)
    assert window.prompt_box.active and window.prompt_box.text == "snowy mountains at dusk in fog"
    press(pygame.K_w)  # typing keys do not walk while the box is open
    run_frames(window, 1)
    assert window.input.held_keys() == ()
    press(pygame.K_RETURN)
    run_until(window, lambda: window._shown.record["prompt"] == "snowy mountains at dusk in fog")
    assert not window.prompt_box.active and window.errors == 0
    assert window.hud_state(time.perf_counter()).prompt == "snowy mountains at dusk in fog"


def test_prompt_the_engine_does_not_know_is_shown_as_an_error(make_window):
    window = make_window()
    run_frames(window, 3)
    press(pygame.K_RETURN)
    type_text("qwerty zxcv")
    press(pygame.K_RETURN)
    run_until(window, lambda: window.errors > 0)
    state = window.hud_state(time.perf_counter())
    assert state.message_is_error and "bad_prompt" in state.message
    run_frames(window, 3)
    assert window._shown.record["prompt"] == "green hills at noon"  # the world goes on unchanged


def test_prompt_box_escape_cancels(make_window):
    window = make_window()
    run_frames(window, 2)
    press(pygame.K_RETURN)
    type_text("desert")
    press(pygame.K_ESCAPE)
    run_frames(window, 3)
    assert not window.prompt_box.active and window.prompt == "green hills at noon"


def test_f5_records_a_loadable_episode_of_the_chunks_shown(make_window, tmp_path):
    window = make_window()
    run_frames(window, 3)
    press(pygame.K_F5)
    press(pygame.K_d)
    run_frames(window, 24)
    press(pygame.K_F5)
    run_frames(window, 1)
    assert not window.recorder.recording
    reader = EpisodeReader(window.recorder.path)
    assert reader.meta["source"] == "play" and reader.meta["backend"] == "engine"
    assert reader.meta["engine_version"] == ENGINE_VERSION  # from the chunks the worker sent
    assert reader.meta["seed"] == 7 and reader.path.parent == tmp_path / "recordings"
    assert len(reader) >= 21 and len(reader) % 3 == 0  # whole chunks, as received
    first = reader.records[0]["i"]  # the world's own frame index: where in the world recording began
    assert first > 0 and [r["i"] for r in reader.records] == list(range(first, first + len(reader)))
    assert ["right"] in [r["action"]["keys"] for r in reader.records]
    assert reader.frames.shape[1:] == (64, 64, 3)


def test_a_full_disk_stops_the_recording_with_a_message_and_play_goes_on(make_window, capsys):
    window = make_window()
    run_frames(window, 3)
    press(pygame.K_F5)
    run_frames(window, 6)
    writer = window.recorder.writer
    writer._frames = FullDisk(writer._frames, 0)  # the disk is full from now on
    saved = writer.frames_written
    run_frames(window, 9)
    assert not window.recorder.recording
    message = f"recording stopped: disk full; {saved} frames saved to {window.recorder.path}"
    assert window._message.text == message and message in capsys.readouterr().err
    shown = window.frames_shown
    run_frames(window, 6)
    assert window.frames_shown == shown + 6  # play goes on
    assert len(EpisodeReader(window.recorder.path)) == saved


def test_reset_help_pause_and_mouse_capture(make_window, monkeypatch):
    monkeypatch.setattr(pygame.event, "set_grab", lambda on: None)  # the dummy driver cannot grab
    window = make_window()
    run_frames(window, 3)
    press(pygame.K_r)
    run_until(window, lambda: window._shown_chunk.epoch == 1)
    assert window.seed != 7 and window._shown.record["i"] < 9  # a new world from its first frames
    press(pygame.K_F1)
    run_frames(window, 1)
    assert window.show_help
    press(pygame.K_ESCAPE)
    pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(10, 10)))
    run_frames(window, 1)
    assert not window.show_help and window.input.captured
    press(pygame.K_ESCAPE)
    run_frames(window, 1)
    assert not window.input.captured
    press(pygame.K_p)
    for _ in range(30):
        window.step()
    shown = window.frames_shown
    for _ in range(30):
        window.step()
    assert window.paused and window.frames_shown == shown
    assert window.hud_state(time.perf_counter()).paused
    press(pygame.K_p)
    run_frames(window, 2)
    press(pygame.K_q)
    window.step()
    assert not window.running


def test_window_survives_a_worker_restart(make_window, monkeypatch):
    proc, endpoint = start_worker_process()
    try:
        window = make_window(endpoint)
        window.link.client.liveness_s = 1.0  # notice the loss quickly
        run_frames(window, 3)
        stop_worker_process(proc)
        run_until(window, lambda: window.link.state == "reconnecting")
        for _ in range(20):  # the loop keeps running while unreachable
            assert window.step()
        assert window.hud_state(time.perf_counter()).connection == "reconnecting"
        proc, _ = start_worker_process(bind=endpoint)
        run_until(window, lambda: window.link.connected and window.frames_shown > 3)
        run_frames(window, 3)
        assert "goes on from frame" in window._message.text  # resumed after the last frame shown
        assert window.link.generation == 1 and window._worlds == 0  # the same world, the same recording
        assert window._shown_chunk.records[0]["i"] >= window.link.info["resumed"]["frame"] > 0
    finally:
        stop_worker_process(proc)


def test_a_local_worker_that_dies_is_restarted_and_the_window_reconnects(make_window):
    local = cli.LocalWorker(())
    try:
        window = make_window(local.endpoint)
        window.link.revive = local.revive
        window.link.client.liveness_s = 1.0
        run_frames(window, 3)
        first = local.proc
        first.kill()
        first.wait()
        run_until(window, lambda: window.link.generation == 1 and window.link.connected)
        assert local.proc is not first and local.proc.poll() is None
        run_frames(window, 3)
    finally:
        local.stop()


# ---- pieces ------------------------------------------------------------------------------------


def test_pacer_shows_one_frame_per_period_and_reports_chunk_starts():
    pacer = FramePacer(fps=10)
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    pacer.push(5, frames, [{"i": k} for k in range(3)])
    first = pacer.next_frame(100.0)
    assert (first.chunk_seq, first.chunk_index) == (5, 0)
    assert pacer.next_frame(100.05) is None  # not due yet
    assert pacer.next_frame(100.1).chunk_index == 1
    assert pacer.next_frame(100.2).chunk_index == 2
    assert pacer.next_frame(100.3) is None and pacer.underruns == 1  # empty: the clock stops
    pacer.push(6, frames, [{"i": k} for k in range(3)])
    assert pacer.next_frame(105.0).chunk_seq == 6  # restarts when frames arrive, no burst
    assert pacer.next_frame(105.01) is None
    assert pacer.clear() == [] and pacer.buffered == 0


def test_key_latency_matches_key_changes_to_records_in_order():
    latency = KeyLatency()
    latency.key_change(("forward",), 1.0)
    latency.key_change((), 1.05)
    assert latency.frame_shown({"action": {"keys": []}}, 1.1) is None  # old frame, first change pending
    assert latency.frame_shown({"action": {"keys": ["forward"]}}, 1.2) == pytest.approx(200.0)
    assert latency.frame_shown({"action": {"keys": []}}, 1.3) == pytest.approx(250.0)
    latency.key_change(("back",), 2.0)
    assert latency.frame_shown({"action": {"keys": []}}, 9.0) is None  # never rendered: given up


def test_play_without_a_display_exits_2_naming_headless(monkeypatch, capsys, tmp_path):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent.json")
    started = []
    monkeypatch.setattr(cli, "LocalWorker", lambda *a: started.append(a))
    args = cli.argparse.ArgumentParser()
    cli.add_arguments(args)
    assert cli.run(args.parse_args([])) == 2
    err = capsys.readouterr().err
    assert "--headless" in err and "xvfb-run" in err and "no display" in err
    assert started == []  # nothing was started for a window that cannot open


# ---- the HUD's rates and "behind" on a fake clock ----------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class PacedLink:
    """A WorldLink stand-in for a worker that takes `intervals` (cycled) seconds of a fake clock per
    chunk, with the worker's flow control: it runs at most `window` chunks ahead of the last ack.
    poll(timeout) moves the clock on as a blocking poll would: to the next chunk, or by the timeout."""

    def __init__(self, clock: FakeClock, intervals: tuple[float, ...], window: int = 2) -> None:
        self.clock, self.intervals, self.window = clock, intervals, window
        self.info = {"width": 64, "height": 64, "fps": 30.0, "chunk_frames": 3, "window": window,
                     "prompt": "green hills at noon", "backend": "fake", "seed": 0}  # fmt: skip
        self.state, self.generation, self.client = "connected", 0, None
        self.seq, self.acked = 0, -1
        self.started: float | None = clock.now  # when the next chunk's making began; None: held back

    def _due(self) -> float | None:
        interval = self.intervals[self.seq % len(self.intervals)]
        return None if self.started is None else self.started + interval

    def poll(self, timeout_ms: int) -> list:
        due, until = self._due(), self.clock.now + timeout_ms / 1000.0
        if due is None or due > until:
            self.clock.now = until
            return []
        self.clock.now = max(self.clock.now, due)
        records = [{"i": 3 * self.seq + k, "action": {"keys": []}, "prompt": self.info["prompt"]} for k in range(3)]
        chunk = ChunkEvent(self.seq, np.zeros((3, 64, 64, 3), np.uint8), records, gen_ms=1000.0 * self.intervals[0],
                           steps=2, nfe=2, chunk=self.seq)  # fmt: skip
        self.seq += 1
        self.started = self.clock.now if self.seq - self.acked <= self.window else None
        return [chunk]

    def call(self, method: str, *args: object) -> None:
        if method == "ack":
            self.acked = max(self.acked, int(args[0]))
            if self.started is None and self.seq - self.acked <= self.window:
                self.started = self.clock.now

    def close(self) -> None:
        pass


def hud_over(window: PlayWindow, clock: FakeClock, seconds: float, settle_s: float) -> list[HudState]:
    """Step the window for `seconds` of the fake clock; the HUD's state at each step after `settle_s`."""
    states, began = [], clock.now
    while clock.now - began < seconds:
        assert window.step()
        if clock.now - began >= settle_s:
            states.append(window.hud_state(clock.now))
    return states


@pytest.fixture
def paced_window(monkeypatch, tmp_path):
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent.json")
    clock = FakeClock()
    monkeypatch.setattr(window_module, "monotonic", clock)
    pygame.display.init()
    pygame.font.init()

    def make(intervals: tuple[float, ...], window: int = 2) -> tuple[PlayWindow, FakeClock]:
        config = WindowConfig(scale=2, record_dir=tmp_path, sound=False)
        return PlayWindow(PacedLink(clock, intervals, window), km.load_keymap(), config), clock

    yield make
    pygame.quit()


@pytest.mark.parametrize("intervals", [(2.5,), (2.0, 3.0)])
def test_a_world_making_a_chunk_every_2_to_3_s_reads_its_true_rate_and_behind(paced_window, intervals):
    """3 frames every 2.5 s on average is 1.2 fps: the HUD says so, steadily, with "behind",
    where a 1-2 s window read 0.0 fps and never said behind."""
    window, clock = paced_window(intervals)
    window.machine = MachineLoad(read=lambda: None, cores=2)  # no busy line in this test
    states = hud_over(window, clock, 40.0, settle_s=15.0)
    assert states and all(s.behind for s in states)
    mean = 3 / (sum(intervals) / len(intervals))
    rates = [s.gen_fps for s in states]
    assert min(rates) >= 0.8 * mean and max(rates) <= 1.25 * mean, (min(rates), max(rates))
    assert abs(states[-1].shown_fps - mean) <= 0.25 * mean
    label, value, _ = stats_rows(states[-1])[0]
    assert label == "speed" and value == f"world running at {states[-1].gen_fps:.1f} fps, behind"
    print(f"chunks every {intervals} s: HUD generated {min(rates):.2f}-{max(rates):.2f} fps (true {mean:.2f})")


def test_a_world_that_keeps_up_is_never_behind_and_reads_the_display_rate(paced_window):
    window, clock = paced_window((0.06,))  # could make 50 fps; flow control holds it at the screen's 30
    states = hud_over(window, clock, 10.0, settle_s=3.0)
    assert not any(s.behind for s in states)
    assert all(28.0 <= s.gen_fps <= 32.0 and 28.0 <= s.shown_fps <= 32.0 for s in states[::50])


def test_one_slow_chunk_is_a_stall_not_behind(paced_window):
    window, clock = paced_window((0.06,) * 40 + (1.5,) + (0.06,) * 200)
    assert not any(s.behind for s in hud_over(window, clock, 12.0, settle_s=0.5))
    assert window.pacer.underruns >= 1  # the slow chunk did stall the screen


def test_the_hud_says_when_other_processes_crowd_the_cores(paced_window):
    readings = iter([CpuTimes(100.0, 10.0), CpuTimes(104.0, 10.6), CpuTimes(104.3, 10.8)])
    load = MachineLoad(interval_s=2.0, read=lambda: next(readings), cores=2)
    load.update(0.0)
    assert load.busy() == ""  # one reading is no interval yet
    load.update(1.0)
    assert load.others_cores is None  # sampled at most every interval_s
    load.update(2.0)  # 4 core-seconds in 2 s, 0.6 of them this process's: others use 1.7 cores
    assert load.busy() == "others use 1.7 of 2 cores"
    load.update(4.0)  # 0.3 in 2 s: quiet again
    assert load.busy() == ""
    window, clock = paced_window((2.5,))
    busy = iter([CpuTimes(0.0, 0.0), CpuTimes(4.0, 0.4)])
    window.machine = MachineLoad(read=lambda: next(busy, CpuTimes(8.0, 0.8)), cores=2)
    rows = stats_rows(hud_over(window, clock, 3.0, settle_s=2.9)[-1])
    assert ("machine", "busy: others use 1.8 of 2 cores") in [(label, value) for label, value, _ in rows]


def test_rate_meter_window_grows_to_cover_several_slow_events_and_falls_when_they_stop():
    meter = RateMeter(min_window_s=2.0, min_events=5, max_window_s=30.0)
    assert meter.rate(0.0) == 0.0
    for k in range(8):
        meter.add(2.5 * k, 3)
    assert meter.rate(17.6) == pytest.approx(1.2)  # 4 intervals of 2.5 s kept, not the last 2 s only
    assert meter.span_s(17.6) == pytest.approx(17.6 - 7.5)
    # 7.5 s since the last event, 5 s longer than any interval: the wait counts, 12 frames in 15 s
    assert meter.rate(17.5 + 7.5) == pytest.approx(12 / 15)
    assert meter.rate(17.5 + 31.0) == 0.0  # nothing within the longest window
    with pytest.raises(ValueError, match="min_events >= 2"):
        RateMeter(min_events=1)
