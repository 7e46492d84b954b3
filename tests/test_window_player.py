"""The player's side of the window under SDL's dummy driver: replay of a recording and taking it
over live (against a real engine worker), the connecting screen, the prompt timeline, resizing,
screenshots and the HUD's words (reads as, behind, an empty or long prompt)."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402

from controls import keymap as km  # noqa: E402
from controls import play as cli  # noqa: E402
from controls.connecting import ConnectScreen  # noqa: E402
from controls.frames import picture_rect, reads_as  # noqa: E402
from controls.link import WorldLink  # noqa: E402
from controls.playback import RecordingLink, catch_up_script, takeover_frame  # noqa: E402
from controls.timeline import PromptTimeline, TimelineError, load_timeline  # noqa: E402
from controls.window import PlayWindow, WindowConfig  # noqa: E402
from world.data.dataset import EpisodeReader  # noqa: E402
from world.server.client import WorldClient  # noqa: E402
from world.server.process import start_worker_process, stop_worker_process  # noqa: E402

GUARD_S = 30.0  # a stuck loop fails the test instead of hanging it; not a performance bound
SWITCH = "snowy mountains at dusk in fog"
SCRIPT = [{"keys": ["forward"], "mouse": [0.0, 0.0]}] * 12 + [{"keys": ["turn_left"], "mouse": [0.0, 0.0],
                                                               "prompt": SWITCH}] * 12  # fmt: skip


@pytest.fixture(scope="module")
def engine_worker():
    proc, endpoint = start_worker_process()
    yield endpoint
    stop_worker_process(proc)


@pytest.fixture(scope="module")
def recording(engine_worker, tmp_path_factory):
    """An engine episode recorded by `play --headless --script` through the worker: 24 frames."""
    root = tmp_path_factory.mktemp("rec")
    (root / "script.json").write_text(json.dumps(SCRIPT))
    args = parse(["--connect", engine_worker, "--headless", "--backend", "engine", "--seed", "3",
                  "--script", str(root / "script.json"), "--record", str(root / "episodes")])  # fmt: skip
    assert cli.run(args) == 0
    (episode,) = (root / "episodes").iterdir()
    return episode


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def display(tmp_path, monkeypatch):
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent.json")
    pygame.display.init()
    pygame.font.init()
    yield
    pygame.quit()


def press(code: int, text: str = "") -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code, mod=0, unicode=text, scancode=0))


def run_until(window: PlayWindow, done, guard_s: float = GUARD_S) -> None:
    deadline = time.monotonic() + guard_s
    while not done():
        assert time.monotonic() < deadline, "window loop made no progress"
        assert window.step(), "window closed unexpectedly"


def replay_window(recording, tmp_path, **config) -> PlayWindow:
    link = RecordingLink(EpisodeReader(recording))
    return PlayWindow(link, km.load_keymap(), WindowConfig(record_dir=tmp_path / "rec", sound=False, **config))


# ---- replay and take-over ---------------------------------------------------------------------


def test_replay_plays_steps_jumps_and_shows_the_recorded_actions(display, recording, tmp_path):
    window = replay_window(recording, tmp_path)
    reader = window.replay.reader
    run_until(window, lambda: window.frames_shown >= 6)
    np.testing.assert_array_equal(window._shown.frame, reader.frames[5])  # the recording, in order
    state = window.hud_state(time.perf_counter())
    assert state.replay.startswith("frame 5 / 23") and state.recorded_keys == "forward"
    assert state.timeline[1] == (12 / 23,)  # one prompt switch, marked on the bar
    press(pygame.K_p)
    window.step()
    press(pygame.K_PERIOD)  # one frame on, paused
    window.step()
    frame = window._replay_frame()
    np.testing.assert_array_equal(window._shown.frame, reader.frames[frame])
    press(pygame.K_COMMA)
    press(pygame.K_COMMA)
    window.step()
    assert window._replay_frame() == frame - 2 and window.paused
    press(pygame.K_5)  # jump to 50%
    window.step()
    assert window._replay_frame() == 12
    assert window.hud_state(time.perf_counter()).recorded_keys == "turn_left"
    press(pygame.K_RIGHTBRACKET)
    window.step()
    assert window.pacer.period == pytest.approx(1 / 60)  # 2x
    assert window.recorder.recording is False and window.link.client is None  # nothing is sent anywhere
    press(pygame.K_p)
    window.step()
    assert not window.paused
    run_until(window, lambda: window.paused)  # at the last frame the replay stops and says so
    assert window._replay_frame() == 23 and "end of the recording" in window.hud_state(time.perf_counter()).message
    press(pygame.K_0)
    window.step()
    assert not window.paused  # a jump after the end plays again
    run_until(window, lambda: window._replay_frame() < 23)


def test_l_takes_over_live_from_the_frame_on_screen(display, recording, engine_worker, tmp_path):
    args = parse(["--replay", str(recording), "--connect", engine_worker])
    live = cli.LiveTakeover(args, cli.make_plan(args), EpisodeReader(recording))
    window = replay_window(recording, tmp_path, go_live=live.go_live)
    try:
        run_until(window, lambda: window.frames_shown >= 2)
        press(pygame.K_p)
        press(pygame.K_4)  # frame 9 (a fresh chunk starts at 9, so the world is regenerated up to 12)
        window.step()
        assert window._replay_frame() == 9
        press(pygame.K_l)
        run_until(window, lambda: isinstance(window.link, WorldLink))
        assert window.replay is None and not window.paused
        press(pygame.K_d)
        run_until(window, lambda: window._shown.record["action"]["keys"] == ["right"])
        # The live world is the recorded one, continued: its frame numbers go on from the take-over,
        # and the frames regenerated on the way there are the recorded ones (checked by catch_up's
        # script: the same actions, the prompt switch in place).
        assert window._shown_chunk.records[0]["i"] >= takeover_frame(EpisodeReader(recording), 9) == 12
        assert window._shown.record["prompt"] == "green hills at noon"  # the switch came at frame 12
        assert [s.prompt for s in catch_up_script(EpisodeReader(recording), 24)][12] == SWITCH
    finally:
        window.close()
        live.close()


# ---- connecting, timeline, window ---------------------------------------------------------------


def test_the_connecting_screen_shows_at_once_and_then_a_clear_failure(display, monkeypatch):
    monkeypatch.setattr("controls.connecting.SHOW_ERROR_S", 0.0)
    screen = ConnectScreen("tcp://127.0.0.1:9", (256, 256), attempts=2)
    client = WorldClient("tcp://127.0.0.1:9", timeout_s=1.0)
    drawn: list[tuple[str, str]] = []
    real_draw = screen.draw

    def draw() -> None:
        real_draw()
        drawn.append(screen.lines())

    screen.draw = draw
    try:
        assert screen.run(client, lambda: pytest.fail("a dead address cannot be opened")) is None
    finally:
        client.close()
    assert drawn[0] == ("connecting to tcp://127.0.0.1:9", "attempt 1 of 2 \u00b7 Q cancels")  # the first frame
    assert ("connecting to tcp://127.0.0.1:9", "attempt 2 of 2 \u00b7 Q cancels") in drawn
    assert not screen.refused and "no worker answers at tcp://127.0.0.1:9 (2 attempts" in screen.error
    pixels = pygame.surfarray.array3d(screen.screen)
    assert pixels.max() > 100 and (pixels[..., 0] > pixels[..., 2] + 50).any()  # red text, not a black window


def test_headless_play_against_a_dead_address_says_so_in_seconds(monkeypatch, capsys):
    monkeypatch.setattr("controls.probe.ATTEMPTS", 2)
    assert cli.run(parse(["--headless", "--connect", "tcp://127.0.0.1:9", "--frames", "3"])) == 1
    err = capsys.readouterr().err
    assert "play: connecting to tcp://127.0.0.1:9" in err
    assert "no worker answers at tcp://127.0.0.1:9 (2 attempts" in err


def test_a_prompt_timeline_switches_prompts_when_their_time_comes(tmp_path):
    path = tmp_path / "prompts.tsv"
    path.write_text("# time\tprompt\n0\tgreen hills at noon\n0:01.5\tdesert at dusk\n\n3\tsnowy peaks at night\n")
    timeline = load_timeline(path)
    assert timeline.entries == [(0.0, "green hills at noon"), (1.5, "desert at dusk"), (3.0, "snowy peaks at night")]
    assert timeline.due(0.0) == "green hills at noon" and timeline.due(1.0) is None
    assert timeline.due(10.0) == "snowy peaks at night"  # the latest one due, once
    assert timeline.due(11.0) is None
    position, marks = PromptTimeline(timeline.entries).position(4.0)
    assert marks == (0.0, 0.1875, 0.375) and position == 0.5
    bad = {"5 desert\n": "TIME<TAB>PROMPT", "x\tdesert\n": "is not seconds", "5\tdesert\n2\tsnow\n": "in time order",
           "# nothing\n": "no prompt switches"}  # fmt: skip
    for text, problem in bad.items():
        path.write_text(text)
        with pytest.raises(TimelineError, match=problem):
            load_timeline(path)


def test_prompt_timeline_drives_the_live_window(display, engine_worker, tmp_path):
    path = tmp_path / "prompts.tsv"
    path.write_text(f"0.2\t{SWITCH}\n")
    client = WorldClient(engine_worker, timeout_s=5.0)
    client.open("engine", "green hills at noon", seed=7, lookahead=1)
    window = PlayWindow(WorldLink(client), km.load_keymap(),
                        WindowConfig(record_dir=tmp_path, sound=False, timeline=load_timeline(path)))  # fmt: skip
    try:
        run_until(window, lambda: window._shown is not None and window._shown.record["prompt"] == SWITCH)
        state = window.hud_state(time.perf_counter())
        assert state.timeline[1] == (0.2 / 5.2,) and state.reads_as == "snow / dusk / fog"
    finally:
        window.close()
        window.link.close()


def test_resizing_letterboxes_with_whole_number_scales_and_f12_saves_two_pngs(display, recording, tmp_path):
    assert picture_rect((64, 64), (800, 600)) == pygame.Rect(112, 12, 576, 576)  # 9x, centred
    assert picture_rect((64, 64), (50, 50)) == pygame.Rect(-7, -7, 64, 64)  # never below 1x
    window = replay_window(recording, tmp_path)
    run_until(window, lambda: window.frames_shown >= 1)
    pygame.event.post(pygame.event.Event(pygame.VIDEORESIZE, w=800, h=600, size=(800, 600)))
    run_until(window, lambda: window.screen.get_size() == (800, 600) or window.size == (800, 600))
    press(pygame.K_F12)
    window.step()
    shots = sorted((tmp_path / "rec").glob("screenshot-*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in shots] == ["window.png", "world.png"]
    assert pygame.image.load(str(shots[1])).get_size() == (64, 64)
    assert pygame.image.load(str(shots[0])).get_size() == window.screen.get_size()


def test_hud_words_reads_as_and_behind():
    from controls.frames import window_title

    assert window_title({"backend": "engine"}, False) == "engine world"  # not "generated world - engine"
    assert window_title({"backend": "generated", "description": "replay of ep-s3"}, True) == \
        "generated world \u2014 replay of ep-s3"
    assert reads_as({"biome": "snow", "time_of_day": "dusk", "weather": "fog"}) == "snow / dusk / fog"
    from controls.hud import HudState, speed_rows

    rows = speed_rows(HudState(gen_fps=12.0, behind=True, world_fps=30.0))
    assert rows == [("speed", "world running at 12 fps, behind", rows[0][2])]
    assert [r[0] for r in speed_rows(HudState(gen_fps=30.0))] == ["generated", "shown"]


def test_hud_stats_rerender_numbers_at_most_four_times_a_second_and_wording_at_once(display, monkeypatch):
    from controls import hud as hud_module

    clock = [100.0]
    monkeypatch.setattr(hud_module, "monotonic", lambda: clock[0])
    hud = hud_module.Hud((512, 512), km.load_keymap(user_file=False))
    screen = pygame.Surface((512, 512))
    state = hud_module.HudState(gen_fps=20.0, shown_fps=20.0, connection="connected", prompt="a meadow")

    def panel_after(**changes) -> pygame.Surface:
        for name, value in changes.items():
            setattr(state, name, value)
        hud.draw(screen, state)
        return hud._stats.surface

    first = panel_after()
    clock[0] += 0.1
    assert panel_after(gen_fps=21.0) is first  # a number within the refresh interval: the same panel
    clock[0] += hud_module.STATS_REFRESH_S
    second = panel_after(gen_fps=22.0)
    assert second is not first and hud._stats.values[0].startswith("22.0")
    clock[0] += 0.01
    assert panel_after(connection="reconnecting") is not second  # wording and colour: at once
    third = hud._stats.surface
    assert panel_after(prompt="a desert") is not third


# ---- typing does not stall the world ------------------------------------------------------------


def test_typing_a_long_prompt_does_not_delay_the_next_chunk(display, worker, tmp_path):
    """The typing timing check: while 500 characters are typed into the prompt box
    (the window used to redraw the whole box on every keystroke, 20 ms at that length), each chunk
    arrives no later than one chunk time after it was due (due: the previous arrival plus the longer
    of its display time and the time the worker took to make it, gen_ms)."""
    client = WorldClient(worker, timeout_s=30.0)
    client.open("generated", "green hills at noon", seed=1, options={"sampler": "diagonal"}, lookahead=2)
    window = PlayWindow(WorldLink(client), km.load_keymap(), WindowConfig(record_dir=tmp_path, sound=False))
    arrivals: list[tuple[float, float]] = []
    receive = window._receive

    def timed(events: list) -> None:
        now = time.perf_counter()
        arrivals.extend((now, e.gen_ms / 1000) for e in events if hasattr(e, "gen_ms"))
        receive(events)

    window._receive = timed
    try:
        run_until(window, lambda: window.frames_shown >= 6)
        press(pygame.K_t, "t")
        window.step()
        typed, start = 0, len(arrivals)
        text = ("purple elephants wander over snowy dunes at dusk " * 11)[:500]
        while typed < len(text) or len(arrivals) < start + 4:
            for ch in text[typed : typed + 5]:  # about as fast as xdotool types
                pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text=ch))
            typed = min(len(text), typed + 5)
            assert window.step()
        assert window.prompt_box.text == text
    finally:
        window.close()
        window.link.close()
    chunk_s = window.link.info["chunk_frames"] / window.link.info["fps"]
    during = arrivals[start:]
    for (before, _), (at, gen_s) in zip(during, during[1:]):
        one_chunk = max(chunk_s, gen_s)
        assert at - before <= 2 * one_chunk + 0.05, (at - before, gen_s)  # due after one chunk, late by < one


def test_the_local_worker_uses_every_core_unless_told(monkeypatch):
    """The window takes a tenth of a core; the worker's jobs run on threads that end, so the model's
    threads are not held up by a job thread's OpenMP team (world/server/jobs.py): every core goes to it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert cli.worker_env()["OMP_NUM_THREADS"] == "2"
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {3})
    assert cli.worker_env()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    assert cli.worker_env()["OMP_NUM_THREADS"] == "16"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's choice stands
    assert cli.worker_env()["OMP_NUM_THREADS"] == "4"


def test_the_prompt_box_says_why_enter_or_a_key_did_nothing(display):
    from controls.prompt_box import PromptBox

    box = PromptBox()
    box.open()
    assert box.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN)) is None
    assert box.active and box.refused.startswith("type a prompt first")  # shown in the box's hint line
    box.handle(pygame.event.Event(pygame.TEXTINPUT, text="x" * 501))
    assert len(box.text) == 500 and box.refused == "a prompt holds at most 500 characters"
    box.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_BACKSPACE))
    assert box.refused == ""
