"""The play window: shows the stream at a steady pace and turns keys, mouse and prompts into input.

Like DIAMOND's play loop, the window only talks to the world through a narrow interface (the
`WorldLink` below: poll, send_input, ack, set_prompt, reset) and reads what it shows on the HUD
from the chunks' own records. One loop iteration: handle pygame events, poll the socket for at
most a few milliseconds, show the next frame when one is due, send the held input when it changed.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pygame
import zmq

from controls.headless import DEFAULT_RECORD_DIR, summary
from controls.hud import Hud, HudState
from controls.input import InputMapper, MouseSettings
from controls.keymap import Keymap
from controls.pacing import FramePacer, KeyLatency, PacedFrame, RateMeter, monotonic
from controls.prompt_box import PromptBox, load_presets
from world.actions import IDLE, Action
from world.client import ChunkEvent, ErrorEvent, WorldClient, WorldConnectionError, WorldRequestError
from world.recorder import Recorder

POLL_MS_MAX = 8  # the loop never blocks on the socket longer than this, so input stays responsive
IDLE_REDRAW_S = 0.25  # redraw this often when nothing happens (stalls, pause, reconnecting)
SEED_RANGE = 2**31


class WorldLink:
    """The client plus reconnection.

    While the worker is unreachable (down, restarted, session closed), a background thread calls
    `client.reconnect()` every `retry_s`; that call blocks for up to the client's timeout, which
    is why it is not made on the loop's thread. Meanwhile the loop sees state "reconnecting", gets
    no events, and its sends are dropped. The thread is the only user of the client until it ends.
    """

    def __init__(self, client: WorldClient, revive: Callable[[], None] | None = None, retry_s: float = 1.0) -> None:
        self.client = client
        self.revive = revive  # e.g. restart a local worker that died; called before each attempt
        self.retry_s = retry_s
        self.state = "connected"
        self.generation = 0  # bumped on each successful reconnect: a new world began
        self.info: dict = dict(client.info or {})
        self.last_error = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def poll(self, timeout_ms: int) -> list:
        if not self.connected:
            time.sleep(timeout_ms / 1000.0)
            return []
        try:
            events = self.client.poll(timeout_ms)
        except zmq.ZMQError as exc:
            self._lost(str(exc))
            return []
        if not self.client.connected:
            self._lost("the worker stopped answering")
        return events

    def call(self, method: str, *args: object) -> None:
        """client.<method>(*args) if connected; a failure starts reconnecting instead of raising."""
        if not self.connected:
            return
        try:
            getattr(self.client, method)(*args)
        except (zmq.ZMQError, WorldConnectionError, RuntimeError) as exc:
            self._lost(str(exc))

    def _lost(self, reason: str) -> None:
        self.state = "reconnecting"
        self.last_error = reason
        self._thread = threading.Thread(target=self._reconnect_until_done, name="reconnect", daemon=True)
        self._thread.start()

    def _reconnect_until_done(self) -> None:
        while not self._stop.is_set():
            try:
                if self.revive is not None:
                    self.revive()
                self.info = self.client.reconnect()
            except (WorldConnectionError, WorldRequestError, zmq.ZMQError, OSError, RuntimeError) as exc:
                self.last_error = str(exc)
                self._stop.wait(self.retry_s)
                continue
            self.generation += 1
            self.state = "connected"  # last: the loop may use the client again from here on
            return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0.2)
        if self._thread is None or not self._thread.is_alive():
            try:
                self.client.close()
            except (zmq.ZMQError, WorldConnectionError):
                pass  # closing a session on a dead worker: nothing left to tell it


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


@dataclass
class _Message:
    text: str
    is_error: bool
    until: float
    is_warning: bool = False


class PlayWindow:
    def __init__(self, link: WorldLink, keymap: Keymap, config: WindowConfig) -> None:
        info = link.info
        self.link, self.config, self.keymap = link, config, keymap
        self.world_size = (info["width"], info["height"])
        self.size = (info["width"] * config.scale, info["height"] * config.scale)
        self.screen = pygame.display.set_mode(self.size)
        pygame.display.set_caption(f"generated world \u2014 {info['backend']}")
        self.hud = Hud(self.size, keymap)
        self.input = InputMapper(keymap, config.mouse)
        self.prompt_box = PromptBox(load_presets())
        self.pacer = FramePacer(info["fps"])
        self.recorder = Recorder(config.record_dir, info, config.options)
        self.latency = KeyLatency()
        self.gen_rate, self.shown_rate = RateMeter(2.0), RateMeter(2.0)
        self.seed = config.seed
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
        self._message: _Message | None = None
        self._generation = link.generation
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
        changed = self._handle_events()
        now = monotonic()
        self._check_link()
        if not self.paused:
            wait = min(self.pacer.seconds_until_due(now) * 1000.0, POLL_MS_MAX)
            self._receive(self.link.poll(max(1, int(wait))))
            self._send_input(monotonic())
            changed |= self._advance(monotonic())
        else:
            self._receive(self.link.poll(POLL_MS_MAX))  # keeps the heartbeat; buffers what arrives
        now = monotonic()
        # Redraw on a new frame or input; otherwise a few times a second for the HUD's numbers.
        # The loop turns every few ms, and redrawing each time would take CPU from the worker.
        if changed or now - self._last_draw >= IDLE_REDRAW_S:
            self._draw(now)
        if self.config.max_frames is not None and self.frames_shown >= self.config.max_frames:
            self.running = False
        return self.running

    def close(self) -> None:
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
            elif self.prompt_box.active:
                self._prompt_event(event)
            else:
                self._play_event(event)
        self.prompt_box.end_of_batch()
        return bool(events)

    def _prompt_event(self, event: pygame.event.Event) -> None:
        prompt = self.prompt_box.handle(event)
        if prompt is not None:
            self.link.call("set_prompt", prompt)
            self._say(f"prompt \u2192 {prompt}")

    def _play_event(self, event: pygame.event.Event) -> None:
        if event.type == pygame.MOUSEBUTTONDOWN and event.button == 1 and not self.input.captured:
            self.input.set_captured(True)
        elif event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
            self._escape()
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
        self.input.release_all()  # typed letters must not keep walking
        self.prompt_box.open(opened_by=getattr(event, "unicode", ""))

    def _cmd_toggle_record(self, _: object) -> None:
        self._toggle_record()

    def _cmd_reset(self, _: object) -> None:
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
        self.paused = not self.paused
        self.input.release_all()

    def _cmd_quit(self, _: object) -> None:
        self.running = False

    def _report_record_failure(self) -> None:
        """A recording that stopped on a write error (full disk): say so; play goes on."""
        failure = self.recorder.take_failure()
        if failure:
            self._say(failure, error=True)
            print(f"play: {failure}", file=sys.stderr)

    def _toggle_record(self) -> None:
        if self.recorder.recording:
            frames, path = self.recorder.frames, self.recorder.stop()
            self._say(f"saved {frames} frames: {_short(path)}" if path else "recording stopped: no frames shown")
        else:
            path = self.recorder.start(self.seed, self.prompt, self._world_key())
            self._say(f"recording to {_short(path)}")

    # ---- network -------------------------------------------------------------------------------

    def _check_link(self) -> None:
        if self.link.generation != self._generation:
            # Reconnected: a new session whose world starts from its first frame.
            self._generation = self.link.generation
            self.pacer.clear()
            self._chunks.clear()
            self._sent = IDLE
            self._say("reconnected to the worker")

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

    def _advance(self, now: float) -> bool:
        """Show the next frame if one is due; True if one was."""
        shown = self.pacer.next_frame(now)
        if shown is None:
            return False
        if shown.chunk_index == 0:
            chunk = self._chunks.pop(shown.chunk_seq)
            self._shown_chunk = chunk
            self._note_start(chunk)
            self.link.call("ack", chunk.seq)  # acked when shown: the worker stays <= window ahead of the eye
            self.recorder.append(chunk, self.seed, self._world_key(chunk))
            self._report_record_failure()
        self._shown = shown
        self.prompt = shown.record.get("prompt", self.prompt)
        self.frames_shown += 1
        self.shown_rate.add(now)
        self.latency.frame_shown(shown.record, now)
        return True

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
        return (self.link.generation, epoch)

    # ---- drawing -------------------------------------------------------------------------------

    def _draw(self, now: float) -> None:
        self._last_draw = now
        if self._shown is not None:
            surface = pygame.image.frombuffer(np.ascontiguousarray(self._shown.frame), self.world_size, "RGB")
            # transform.scale is nearest neighbour: integer scaling keeps the world's pixels crisp.
            self.screen.blit(pygame.transform.scale(surface, self.size), (0, 0))
        else:
            self.screen.fill((12, 14, 18))
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
        )

    def _say(self, text: str, error: bool = False, warning: bool = False) -> None:
        self._message = _Message(text, error, monotonic() + self.config.message_s, warning)


def _short(path: Path) -> str:
    """An episode path as the HUD shows it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
