"""The window's sound: the procedural soundscape (world/procedural/soundscape.py) played through `sounddevice`.

Audio runs in PortAudio's callback thread: the callback renders the next block from the latest
per-frame `SoundParams` the window handed over, so the frame loop never waits on audio and a late
frame only holds the current sound a little longer. Without `sounddevice`, PortAudio or an output
device the player still directs (recordings get their per-frame params) and reports
"no audio device"; M mutes. Nothing here imports torch.
"""

from __future__ import annotations

import os
import threading

from world.procedural.soundscape import SAMPLE_RATE, SoundDirector, SoundParams, Synth

BLOCK = 512  # samples per callback: 23 ms at 22050 Hz


class SoundPlayer:
    def __init__(self, enabled: bool = True, sample_rate: int = SAMPLE_RATE) -> None:
        self.director = SoundDirector()
        self.synth = Synth(sample_rate)
        self.muted = False
        self._params = SoundParams()
        self._lock = threading.Lock()  # the callback thread reads what the loop writes
        self._stream = None
        self.problem = "starting" if enabled else "off"
        self.detail = ""
        self._closed = False
        if enabled and os.environ.get("SDL_AUDIODRIVER") == "dummy":  # the tests' and CI's "no audio"
            self.problem, self.detail, enabled = "no audio device", "SDL_AUDIODRIVER=dummy", False
        if enabled:  # PortAudio probes every host API first (ALSA, JACK): 10 s here with no device
            threading.Thread(target=self._open, args=(sample_rate,), name="sound-open", daemon=True).start()

    def _open(self, sample_rate: int) -> None:
        try:
            import sounddevice  # the optional `sound` extra; needs the PortAudio library

            self._stream = sounddevice.OutputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                                    blocksize=BLOCK, callback=self._callback)  # fmt: skip
            self._stream.start()
        except Exception as exc:  # ImportError, OSError (no PortAudio), PortAudioError (no or a busy device)
            self._stream, self.problem, self.detail = None, "no audio device", str(exc)
            return
        self.problem = ""
        if self._closed:  # the window closed while the device was opening
            self.close()

    @property
    def state(self) -> str:
        """What the HUD says: "on", "muted", "starting", "no audio device", or "" when sound is off."""
        if self.problem:
            return "" if self.problem == "off" else self.problem
        return "muted" if self.muted else "on"

    def cue(self, kind: str) -> None:
        self.director.cue(kind)

    def chunk(self, records: list[dict], theme: dict | None, pose: dict | None = None) -> list[SoundParams]:
        """The params of a chunk's frames (the engine's pose is the chunk's last; it applies to all)."""
        return [self.director.frame(record, theme, pose) for record in records]

    def play(self, params: SoundParams) -> None:
        """The frame on screen now sounds like this."""
        with self._lock:
            cue = self._params.cue  # a cue not yet played is kept until the callback takes it
            self._params = params if params.cue or not cue else SoundParams(**{**params.__dict__, "cue": cue})

    def _callback(self, outdata, frames: int, _time, _status) -> None:
        with self._lock:
            params = self._params
            if params.cue:
                self._params = SoundParams(**{**params.__dict__, "cue": ""})
        samples = self.synth.render(params, frames)
        outdata[:, 0] = 0.0 if self.muted else samples

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
