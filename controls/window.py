"""The play window: shows the stream at a steady pace and turns keys, mouse and prompts into input.

Like DIAMOND's play loop, the window only talks to the world through a narrow interface (the
`WorldLink` of controls/link.py: poll, send_input, ack, set_prompt, reset) and reads what it shows on the HUD
from the chunks' own records. One loop iteration: handle pygame events, poll the socket for at
most a few milliseconds, show the next frame when one is due, send the held input when it changed.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pygame

from controls.frames import (
    TimedMessage,
    picture_rect,
    reads_as,
    recorded_audio,
    save_screenshot,
    short_path,
    window_title,
    with_audio,
)
from controls.headless import DEFAULT_RECORD_DIR, summary
from controls.hud import Hud, HudState
from controls.input import InputMapper, MouseSettings
from controls.keymap import Keymap
from controls.link import WorldLink
from controls.pacing import BehindWatch, FramePacer, KeyLatency, MachineLoad, PacedFrame, RateMeter, monotonic
from controls.playback import SPEEDS, RecordingLink, recorded_actions
from controls.prompt_box import PromptBox, load_presets
from controls.sound import SoundPlayer
from controls.timeline import PromptTimeline
from world.actions import IDLE, Action
from world.data.recorder import Recorder
from world.procedural.soundscape import SoundParams
from world.server.client import ChunkEvent, ErrorEvent

POLL_MS_MAX = 8  # the loop never blocks on the socket longer than this, so input stays responsive
IDLE_REDRAW_S = 0.25  # redraw this often when nothing happens (stalls, pause, reconnecting)
INPUT_REDRAW_S = 1 / 60  # input alone (typing a prompt) redraws at most this often: fast typing must not
# take the CPU a worker on the same machine needs (each keystroke used to redraw the whole window)
SEED_RANGE = 2**31
BEHIND = 0.9  # the HUD says "behind" when the world is made at under this share of its frame rate
STALL_WINDOW_S = 2.0  # ... and the screen ran dry twice within the rate's window, at least this long
DIGIT_KEYS = {getattr(pygame, f"K_{d}"): d for d in range(10)}  # replay: jump to d tenths

# Called on a background thread when the player takes over a replay at a frame: returns the live
# link once the world has caught up there; `progress(text)` updates the window's banner meanwhile.
GoLive = Callable[[int, Callable[[str], None]], "WorldLink"]


@dataclass
class WindowConfig:
    scale: int = 8
    seed: int = 0
    record_dir: Path = DEFAULT_RECORD_DIR
    record_on_start: bool = False
    max_frames: int | None = None  # quit after this many displayed frames (demos, tests)
    mouse: MouseSettings = field(default_factory=MouseSettings)
    message_s: float = 4.0
    options: dict = field(default_factory=dict)  # session options, stored in recordings
    endpoint: str = ""
    go_live: GoLive | None = None  # replay: how L takes over (controls/play.py builds it)
    timeline: PromptTimeline | None = None  # --prompts FILE: scheduled prompt switches
    sound: bool = True  # False: no audio output (the per-frame sound params are still recorded)


class PlayWindow:
    def __init__(self, link: WorldLink, keymap: Keymap, config: WindowConfig) -> None:
        info = link.info
        self.link, self.config, self.keymap = link, config, keymap
        self.world_size = (info["width"], info["height"])
        self.size = (info["width"] * config.scale, info["height"] * config.scale)
        self.windowed_size = self.size
        self.screen = pygame.display.set_mode(self.size, pygame.RESIZABLE)
        self.replay: RecordingLink | None = link if isinstance(link, RecordingLink) else None
        pygame.display.set_caption(window_title(info, self.replay is not None))
        self.hud = Hud(self.size, keymap)
        self.fullscreen = False
        self.sound = SoundPlayer(enabled=config.sound)
        self.timeline = config.timeline
        self._speed = SPEEDS.index(1.0)
        self._ended = False  # a replay paused itself at its last frame
        self._live_thread: threading.Thread | None = None
        self._live_status = ""  # the banner while a replay is being taken over
        self._live_result: tuple[WorldLink | None, str] | None = None
        self._stalls = BehindWatch(BEHIND)
        self.machine = MachineLoad()
        self._reads_as = ""
        self._reads_theme: dict | None = None
        self._audio: list[SoundParams] = []  # the shown chunk's per-frame sound
        self.input = InputMapper(keymap, config.mouse)
        self._window_keys = keymap.key_codes()
        self.prompt_box = PromptBox(load_presets())
        self.pacer = FramePacer(info["fps"])
        self.recorder = Recorder(config.record_dir, info, config.options)
        self.latency = KeyLatency()
        # Both over at least 4 intervals and 2 s (RateMeter). Shown frames are counted per chunk begun,
        # as arrivals are, so a slow world's bursts (3 frames, then a wait) read as their mean rate.
        self.gen_rate, self.shown_rate = RateMeter(), RateMeter()
        self.seed = int(info.get("seed", config.seed))  # a replay's: the recording's
        self.prompt = info["prompt"]
        self.start: str = info.get("start") or ""  # what the world on screen started from (generated backend)
        self._start_notice: str | None = info.get("start_notice")
        self._chunks: dict[int, ChunkEvent] = {}  # received, not yet shown
        self._shown: PacedFrame | None = None
        self._shown_chunk: ChunkEvent | None = None
        self._last_keys: tuple[str, ...] = ()
        self._sent: Action = IDLE
        self._last_send = 0.0
        self._last_draw = 0.0
        self._capacity: float | None = None
        self._message: TimedMessage | None = None
        self._generation = link.generation
        self._worlds = 0  # worlds begun in this window: a reconnect that could not resume starts one
        self.show_hud, self.show_help, self.paused, self.running = True, False, False, True
        self.frames_shown, self.errors = 0, 0
        self.started = monotonic()
        self.gen_ms: list[float] = []
        if config.record_on_start:
            self._toggle_record()

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        try:
            while self.step():
                pass
        finally:
            self.close()
        return self.summary()

    def step(self) -> bool:
        """One iteration; returns False once the window should close."""
        typed = self._handle_events()
        changed = False
        now = monotonic()
        self._check_link()
        self._check_live()
        if self.timeline is not None and not self.replay:
            self._follow_timeline(now)
        if not self.paused:
            wait = min(self.pacer.seconds_until_due(now) * 1000.0, POLL_MS_MAX)
            self._receive(self.link.poll(max(1, int(wait))))
            self._send_input(monotonic())
            changed |= self._advance(monotonic())
        else:
            self._receive(self.link.poll(POLL_MS_MAX))  # keeps the heartbeat; buffers what arrives
        now = monotonic()
        # Redraw on a new frame, on input at most INPUT_REDRAW_S apart, otherwise a few times a second
        # for the HUD's numbers. The loop turns every few ms; redrawing each time takes CPU from the worker.
        since = now - self._last_draw
        if changed or (typed and since >= INPUT_REDRAW_S) or since >= IDLE_REDRAW_S:
            self._draw(now)
        if self.config.max_frames is not None and self.frames_shown >= self.config.max_frames:
            self.running = False
        return self.running

    def close(self) -> None:
        self.sound.close()
        path = self.recorder.stop()
        if path is not None:
            print(f"play: recording saved to {path}", file=sys.stderr)  # stdout: the --json line
        if self.input.captured:
            self.input.set_captured(False)

    def summary(self) -> dict:
        return summary(
            frames=self.frames_shown, seconds=monotonic() - self.started, latency_ms=self.latency.all_samples_ms,
            errors=self.errors, backend=self.link.info.get("backend", ""), prompt=self.prompt,
            record=self.recorder.path, gen_ms=self.gen_ms, latency_kind="key-to-frame (shown)",
            start=self.start or None, start_notice=self._start_notice,
        )  # fmt: skip

    # ---- events --------------------------------------------------------------------------------

    def _handle_events(self) -> bool:
        """Dispatch pending events; True if there were any (the picture may need redrawing)."""
        events = pygame.event.get()
        for event in events:
            if event.type == pygame.QUIT:
                self.running = False
            elif event.type == pygame.VIDEORESIZE and not self.fullscreen:
                self._resized((event.w, event.h))
            elif self.prompt_box.active and self._window_key(event) is None:
                self._prompt_event(event)
            elif self.prompt_box.active:
                getattr(self, f"_cmd_{self._window_key(event)}")(event)
            else:
                self._play_event(event)
        self.prompt_box.end_of_batch()
        return bool(events)

    def _window_key(self, event: pygame.event.Event) -> str | None:
        """F11 / F12 (full screen, screenshot) work while the prompt box is open too."""
        if event.type != pygame.KEYDOWN:
            return None
        command = self._window_keys.get(event.key)
        return command if command in ("fullscreen", "screenshot") else None

    def _prompt_event(self, event: pygame.event.Event) -> None:
        prompt = self.prompt_box.handle(event)
        if prompt is not None:
            self._switch_prompt(prompt)

    def _switch_prompt(self, prompt: str) -> None:
        self.link.call("set_prompt", prompt)
        self._say(f"prompt \u2192 {prompt}")
        self.sound.cue("prompt")

    def _play_event(self, event: pygame.event.Event) -> None:
        if event.type == pygame.MOUSEBUTTONDOWN and event.button == 1 and not self.input.captured:
            self.input.set_captured(True)
        elif event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
            self._escape()
        elif event.type == pygame.KEYDOWN and self.replay is not None and event.key in DIGIT_KEYS:
            self._seek(DIGIT_KEYS[event.key] * self.replay.frames // 10)
        else:
            command = self.input.handle(event)
            if command is not None:
                getattr(self, f"_cmd_{command}")(event)

    def _escape(self) -> None:
        if self.show_help:
            self.show_help = False
        elif self.input.captured:
            self.input.set_captured(False)

    def _cmd_open_prompt(self, event: pygame.event.Event) -> None:
        if self.replay is not None:
            self._say("a recording plays as recorded: L takes over live, then prompts work", warning=True)
            return
        self.input.release_all()  # typed letters must not keep walking
        self.prompt_box.open(opened_by=getattr(event, "unicode", ""))

    def _cmd_toggle_record(self, _: object) -> None:
        self._toggle_record()

    def _cmd_reset(self, _: object) -> None:
        if self.replay is not None:
            self._seek(0)
            return
        self.seed = random.randrange(SEED_RANGE)
        self.link.call("reset", self.seed)
        # Frames of the old world still buffered are never shown; ack them so the worker moves on.
        unseen = self.pacer.clear()
        for seq in unseen:
            self._chunks.pop(seq, None)
        if unseen:
            self.link.call("ack", max(unseen))
        self._say(f"new world, seed {self.seed}")

    def _cmd_help(self, _: object) -> None:
        self.show_help = not self.show_help

    def _cmd_toggle_hud(self, _: object) -> None:
        self.show_hud = not self.show_hud

    def _cmd_pause(self, _: object) -> None:
        self.paused, self._ended = not self.paused, False
        self.input.release_all()

    def _cmd_quit(self, _: object) -> None:
        self.running = False

    def _cmd_toggle_mute(self, _: object) -> None:
        if self.sound.state in ("", "no audio device"):
            self._say(f"no sound here ({self.sound.state or 'play --no-sound'})", warning=True)
            return
        self.sound.muted = not self.sound.muted
        self._say("sound off" if self.sound.muted else "sound on")

    def _cmd_fullscreen(self, _: object) -> None:
        self.fullscreen = not self.fullscreen
        if self.fullscreen:
            self.windowed_size = self.screen.get_size()
            self.screen = pygame.display.set_mode((0, 0), pygame.FULLSCREEN)
        else:
            self.screen = pygame.display.set_mode(self.windowed_size, pygame.RESIZABLE)
        self._resized(self.screen.get_size())

    def _resized(self, size: tuple[int, int]) -> None:
        surface = pygame.display.get_surface()
        if not self.fullscreen:  # pygame 2 resizes the surface itself; some drivers need set_mode
            ok = surface is not None and surface.get_size() == size
            self.screen = surface if ok else pygame.display.set_mode(size, pygame.RESIZABLE)
        self.size = self.screen.get_size()
        self.hud.resize(self.size)

    def _cmd_screenshot(self, _: object) -> None:
        if self._shown is None:
            self._say("nothing on screen yet", warning=True)
            return
        try:
            world, window = save_screenshot(self.config.record_dir, self._shown.frame, self.screen)
        except (OSError, pygame.error) as exc:
            self._say(f"screenshot not saved: {exc}", error=True)
            return
        self._say(f"screenshot: {short_path(world)} and {window.name}")

    # ---- replay --------------------------------------------------------------------------------

    def _seek(self, frame: int) -> None:
        """Replay: show the recording from `frame` on (dropping what was buffered)."""
        if self.replay is None:
            return
        if self._ended:  # a jump after the end plays again (a pause of the player's own stays)
            self.paused = self._ended = False
        self.pacer.clear()
        self._chunks.clear()
        frame = self.replay.seek(frame)
        if self.paused:  # show that frame at once; stepping while paused shows one frame per key
            self._receive(self.replay.poll(0))
            self._advance(monotonic(), force=True)

    def _replay_frame(self) -> int:
        return int(self._shown_chunk.extra.get("replay_frame", 0)) + self._shown.chunk_index if self._shown else 0

    def _cmd_step_back(self, _: object) -> None:
        self.paused = True
        self._seek(self._replay_frame() - 1)

    def _cmd_step_forward(self, _: object) -> None:
        self.paused = True
        self._seek(self._replay_frame() + 1)

    def _cmd_slower(self, _: object) -> None:
        self._set_speed(self._speed - 1)

    def _cmd_faster(self, _: object) -> None:
        self._set_speed(self._speed + 1)

    def _set_speed(self, index: int) -> None:
        if self.replay is None:
            return
        self._speed = max(0, min(len(SPEEDS) - 1, index))
        self.pacer.period = 1.0 / (self.link.info["fps"] * SPEEDS[self._speed])
        self._say(f"replay at {SPEEDS[self._speed]:g}x")

    def _cmd_go_live(self, _: object) -> None:
        """L: the world continues live from the frame on screen, under the player's keys."""
        if self.replay is None or self._live_thread is not None:
            return
        if self.config.go_live is None:
            self._say("this replay cannot go live (no world to continue it)", warning=True)
            return
        frame, go_live = self._replay_frame(), self.config.go_live
        self.paused = True
        self._live_status = f"going live at frame {frame}\u2026"

        def work() -> None:
            try:
                self._live_result = (go_live(frame, self._set_live_status), "")
            except Exception as exc:  # shown in the window; the replay goes on
                self._live_result = (None, str(exc))

        self._live_thread = threading.Thread(target=work, name="go-live", daemon=True)
        self._live_thread.start()

    def _set_live_status(self, text: str) -> None:
        self._live_status = text

    def _check_live(self) -> None:
        """Swap the recording for the live world once the take-over thread has it."""
        if self._live_result is None:
            return
        link, error = self._live_result
        self._live_result, self._live_thread, self._live_status = None, None, ""
        if link is None:
            self._say(f"could not go live: {error}", error=True)
            return
        frame = self._replay_frame()
        self.replay, self.link, self._generation = None, link, link.generation
        self._worlds += 1
        self.seed, self.prompt = link.info.get("seed", self.seed), link.info.get("prompt", self.prompt)
        self.config.endpoint = getattr(link.client, "address", "") or self.config.endpoint
        self.pacer = FramePacer(link.info["fps"])
        self._chunks.clear()
        self._sent, self._last_keys = IDLE, ()
        self.recorder = Recorder(self.config.record_dir, link.info, self.config.options)
        self.paused = False
        pygame.display.set_caption(window_title(link.info, False))
        self._say(f"live from frame {frame}: the world is yours")

    # ---- prompt timeline -----------------------------------------------------------------------

    def _follow_timeline(self, now: float) -> None:
        """--prompts FILE: switch prompts when their time comes (world time, frames shown / fps)."""
        prompt = self.timeline.due(self.frames_shown / self.link.info["fps"])
        if prompt is not None:
            self._switch_prompt(prompt)

    def _report_record_failure(self) -> None:
        """A recording that stopped on a write error (full disk): say so; play goes on."""
        failure = self.recorder.take_failure()
        if failure:
            self._say(failure, error=True)
            print(f"play: {failure}", file=sys.stderr)

    def _toggle_record(self) -> None:
        if self.replay is not None:
            self._say("this is a recording already: L takes over live, then F5 records", warning=True)
            return
        self.sound.cue("record")
        if self.recorder.recording:
            frames, path = self.recorder.frames, self.recorder.stop()
            self._say(f"saved {frames} frames: {short_path(path)}" if path else "recording stopped: no frames shown")
        else:
            path = self.recorder.start(self.seed, self.prompt, self._world_key())
            self._say(f"recording to {short_path(path)}")

    # ---- network -------------------------------------------------------------------------------

    def _check_link(self) -> None:
        if self.link.generation != self._generation:
            # Reconnected: a new session whose world goes on after the last chunk we acknowledged
            # (counters continuing, the same recording) or, when it could not, starts afresh.
            self._generation, self._sent = self.link.generation, IDLE
            self.pacer.clear()
            self._chunks.clear()
            resumed = (self.link.info or {}).get("resumed")
            self._worlds += 0 if resumed else 1
            self._stalls.forget()
            self._say(f"reconnected to the worker: the world goes on from frame {resumed['frame']}" if resumed
                      else "reconnected to the worker: the world starts again")  # fmt: skip

    def _receive(self, events: list) -> None:
        now = monotonic()
        for event in events:
            if isinstance(event, ChunkEvent):
                self._chunks[event.seq] = event
                self.pacer.push(event.seq, event.frames, event.records)
                self.gen_rate.add(now, len(event.frames))
                self.gen_ms.append(event.gen_ms)
                if event.gen_ms > 0:
                    self._capacity = len(event.frames) * 1000.0 / event.gen_ms
            elif isinstance(event, ErrorEvent):
                self.errors += 1
                self._say(f"{event.code}: {event.message}", error=True)
        self._stalls.note_underruns(self.pacer.underruns, now)

    def is_behind(self, now: float) -> bool:
        """Live and playing, the world made slower than it is shown (controls/pacing.py BehindWatch)."""
        if self.replay is not None or self.paused or self._shown is None:
            return False
        window = max(STALL_WINDOW_S, self.gen_rate.span_s(now))
        return self._stalls.behind(now, self.gen_rate.rate(now), self.link.info["fps"], window)

    def _send_input(self, now: float) -> None:
        """Send the held state as soon as keys change; mouse motion once per frame period."""
        keys = self.input.held_keys()
        if keys == self._last_keys and now - self._last_send < self.pacer.period:
            return
        action = self.input.take_action()
        self._last_send = now
        if keys != self._last_keys:
            self._last_keys = keys
            self.latency.key_change(keys, now)
        if action != self._sent:
            self._sent = action
            self.link.call("send_input", action)

    def _advance(self, now: float, force: bool = False) -> bool:
        """Show the next frame if one is due (or at once with `force`); True if one was."""
        shown = self.pacer.next_frame(now)
        if shown is None and force and self.pacer.buffered:
            shown = self.pacer.next_frame(now + self.pacer.period)
        if shown is None:
            return False
        if shown.chunk_index == 0:
            chunk = self._chunks.pop(shown.chunk_seq)
            self._shown_chunk = chunk
            self._note_start(chunk)
            self._note_chunk(chunk)
            self.shown_rate.add(now, len(chunk.frames))
            self.link.call("ack", chunk.seq)  # acked when shown: the worker stays <= window ahead of the eye
            self._audio = recorded_audio(chunk.records) or self.sound.chunk(chunk.records, self._reads_theme,
                                                                            chunk.extra.get("pose"))  # fmt: skip
            if self.replay is None:
                self.recorder.append(with_audio(chunk, self._audio), self.seed, self._world_key(chunk))
                self._report_record_failure()
        self._shown = shown
        self.prompt = shown.record.get("prompt", self.prompt)
        self.frames_shown += 1
        self.latency.frame_shown(shown.record, now)
        if shown.chunk_index < len(self._audio):
            self.sound.play(self._audio[shown.chunk_index])
        if self.replay is not None and not self.paused and self._replay_frame() >= self.replay.frames - 1:
            self.paused = self._ended = True  # the last recorded frame stays up
            self._say("end of the recording: L continues it live, 0 plays it again")
        return True

    def _note_chunk(self, chunk: ChunkEvent) -> None:
        """What a shown chunk says for the player: what the world reads as, a prompt that was cut."""
        theme = chunk.extra.get("theme")
        if isinstance(theme, dict):
            self._reads_theme = theme
            self._reads_as = reads_as(theme)
        notice = chunk.extra.get("prompt_notice")
        if isinstance(notice, str):
            self._say(notice, warning=True)

    def _note_start(self, chunk: ChunkEvent) -> None:
        """A world's reset view says what it started from; a start that fell back says why."""
        start = chunk.extra.get("start") if chunk.chunk == 0 else None
        if isinstance(start, str):
            self.start = start
            notice = chunk.extra.get("start_notice")
            self._start_notice = str(notice) if notice else None
            if notice:
                self._say(str(notice), warning=True)

    def _world_key(self, chunk: ChunkEvent | None = None) -> tuple[int, int]:
        epoch = chunk.epoch if chunk is not None else (self._shown_chunk.epoch if self._shown_chunk else 0)
        return (self._worlds, epoch)

    # ---- drawing -------------------------------------------------------------------------------

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.screen.fill((12, 14, 18))  # the letterbox around the picture
        if self._shown is not None:
            surface = pygame.image.frombuffer(np.ascontiguousarray(self._shown.frame), self.world_size, "RGB")
            # transform.scale is nearest neighbour: integer scaling keeps the world's pixels crisp.
            rect = picture_rect(self.world_size, self.size)
            self.screen.blit(pygame.transform.scale(surface, rect.size), rect.topleft)
        self.hud.draw(
            self.screen, self.hud_state(now), show_stats=self.show_hud, show_help=self.show_help,
            show_hint=self.show_hud and not self.prompt_box.active,
        )  # fmt: skip
        if self.prompt_box.active:
            self.prompt_box.draw(self.screen, self.hud.fonts)
        pygame.display.flip()

    def hud_state(self, now: float) -> HudState:
        if self._message is not None and now > self._message.until:
            self._message = None
        chunk = self._shown_chunk
        replay = self.replay is not None
        return HudState(
            gen_fps=self.gen_rate.rate(now),
            capacity_fps=self._capacity,
            shown_fps=self.shown_rate.rate(now),
            latency_ms=self.latency.recent_ms(),
            steps=chunk.steps if chunk else 0,
            nfe=chunk.nfe if chunk else 0,
            gen_ms=chunk.gen_ms if chunk else 0.0,
            prompt=self.prompt,
            backend=f"{self.link.info.get('backend', '')} \u00b7 seed {self.seed}",
            start=self.start,
            connection=self.link.state,
            endpoint=self.config.endpoint,
            recording=self.recorder.recording,
            rec_frames=self.recorder.frames,
            paused=self.paused,
            mouse_captured=self.input.captured,
            message=self._message.text if self._message else None,
            message_is_error=self._message.is_error if self._message else False,
            message_is_warning=self._message.is_warning if self._message else False,
            reads_as=self._reads_as,
            behind=self.is_behind(now),
            machine_busy=self._machine_busy(now),
            world_fps=float(self.link.info["fps"]),
            replay=self._replay_line() if replay else "",
            recorded_keys=recorded_actions(self._shown.record) if replay and self._shown else "",
            timeline=self._timeline_state(),
            sound=self.sound.state,
            banner=self._live_status,
        )

    def _machine_busy(self, now: float) -> str:
        self.machine.update(now)
        return self.machine.busy()

    def _replay_line(self) -> str:
        speed = SPEEDS[self._speed]
        return f"frame {self._replay_frame()} / {self.replay.frames - 1} \u00b7 {speed:g}x \u00b7 L: go live"

    def _timeline_state(self) -> tuple[float, tuple[float, ...]] | None:
        """The thin bar: a replay's position and its prompt switches, or the prompt timeline's."""
        if self.replay is not None:
            n = max(self.replay.frames - 1, 1)
            return self._replay_frame() / n, self.replay.switches
        if self.timeline is not None:
            return self.timeline.position(self.frames_shown / self.link.info["fps"])
        return None

    def _say(self, text: str, error: bool = False, warning: bool = False) -> None:
        self._message = TimedMessage(text, error, monotonic() + self.config.message_s, warning)
