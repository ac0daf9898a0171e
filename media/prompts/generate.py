#!/usr/bin/env python3
"""Generate the media node's prompts once (committed; rerun only to change them).

Tones rather than speech keep the files tiny and the build free of espeak-ng:
enter-code: two rising beeps; wrong-code: a low double buzz; waiting-for-host: a soft
425 Hz pattern (looped by the mixer); joined: a short high chirp. 8 kHz, 16-bit, mono.
"""
import math, struct, wave, os

RATE = 8000

def tone(hz, ms, amp=6000):
    n = RATE * ms // 1000
    return [int(amp * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n)]

def silence(ms):
    return [0] * (RATE * ms // 1000)

PROMPTS = {
    "enter-code": tone(660, 150) + silence(80) + tone(880, 150) + silence(200),
    "wrong-code": tone(220, 200) + silence(80) + tone(220, 200) + silence(200),
    "waiting-for-host": tone(425, 400, 3000) + silence(600),
    "joined": tone(1320, 120) + silence(100),
}

here = os.path.dirname(os.path.abspath(__file__))
for name, samples in PROMPTS.items():
    with wave.open(os.path.join(here, name + ".wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
