//! The N−1 conference mixer of one room, sans-IO: RTP payloads and digits go in through
//! `handle_*`, time arrives as `now` (a 20 ms tick), and each tick's outgoing frames and the
//! room's events (mutes, disconnects, the session's end) come out through `poll_*`.
//!
//! Why it is fast: only the loudest few *talkers* are decoded and summed. Every listener who
//! is not a talker hears the same full mix, encoded once per codec and shared; a talker hears
//! the mix minus their own frame, encoded for them alone. The naive mixer (decode every other
//! participant, sum, encode, per listener) lives in `naive` as the benchmark's baseline and
//! the tests' reference.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use crate::g711::Codec;
use crate::stats::Micros;

/// 20 ms of 8 kHz audio.
pub const FRAME: usize = 160;
pub const TICK_US: Micros = 20_000;
/// At most this many participants are mixed at once (the loudest).
pub const MAX_TALKERS: usize = 4;
/// Mean absolute amplitude under which a frame is silence (about −50 dBFS).
pub const TALK_THRESHOLD: u32 = 100;
/// How many quiet ticks (20 ms each) a talker keeps the talking flag: 500 ms, so the flag
/// follows speech, not every pause between syllables.
pub const TALK_HANG_TICKS: u32 = 25;
/// Frames buffered per participant before the oldest is dropped (bounded latency).
pub const MAX_BUFFERED: usize = 6;
/// The most ticks one `handle_timeout` catches up (a stalled node skips, it does not burst).
pub const MAX_CATCH_UP_TICKS: u64 = 50;
/// The most participants one room holds, whatever its settings say.
pub const MAX_PARTICIPANTS: usize = 1_000;

pub type Frame = [u8; FRAME];
pub type Pcm = [i16; FRAME];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Guest,
}

/// Who changed a mute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteBy {
    /// DTMF `*6` from the participant.
    Participant,
    /// A host or the API, through the log.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The last participant left.
    Empty,
    /// The last host of a moderated room left: everyone is disconnected.
    LastHostLeft,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MixerEvent {
    MuteChanged {
        leg_id: Uuid,
        muted: bool,
        by: MuteBy,
    },
    /// The node must hang this leg up.
    Disconnect {
        leg_id: Uuid,
    },
    SessionEnded {
        reason: EndReason,
    },
    /// The participant started or stopped talking (voice above the threshold while unmuted;
    /// it stops after `TALK_HANG_TICKS` quiet ticks, or at once when muted).
    TalkingChanged {
        leg_id: Uuid,
        talking: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixerError {
    #[error("the room is full")]
    Full,
    #[error("the leg is already in the room")]
    AlreadyJoined,
    #[error("the room's session has ended")]
    Ended,
}

/// How the room behaves.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub moderated: bool,
    pub max_participants: usize,
    pub record: bool,
    /// Played (looped) to guests of a moderated room until a host joins; 8 kHz linear.
    pub waiting_prompt: Vec<i16>,
}

/// Which buffer one listener's frame of this tick is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The full mix (or the waiting prompt) shared by every listener of this codec.
    Shared(Codec, Kind),
    /// This talker's own N−1 mix.
    Own(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mix,
    Prompt,
}

struct Participant {
    leg_id: Uuid,
    role: Role,
    codec: Codec,
    muted: bool,
    buffer: VecDeque<Frame>,
    /// The last digit, to recognise `*6`.
    last_digit: Option<char>,
    /// This tick's frame and its energy, when it has one.
    current: Option<(Frame, u32)>,
    source: Source,
    /// Talker detection with a hang time.
    talking: bool,
    quiet_ticks: u32,
}

pub struct Mixer {
    config: RoomConfig,
    participants: Vec<Participant>,
    index: HashMap<Uuid, usize>,
    next_tick: Option<Micros>,
    events: VecDeque<MixerEvent>,
    ended: bool,
    hosts_seen: bool,
    prompt_pos: usize,
    // Per-tick scratch, reused.
    talkers: Vec<usize>,
    talker_pcm: Vec<Pcm>,
    mix: [i32; FRAME],
    own: Vec<Frame>,
    shared_mix: [Option<Frame>; 2],
    shared_prompt: [Option<Frame>; 2],
    recording: Option<Pcm>,
}

fn codec_slot(codec: Codec) -> usize {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 1,
    }
}

/// |sample| per code, for the energy of a frame without decoding it.
static ULAW_MAG: [u16; 256] = magnitudes(Codec::Pcmu);
static ALAW_MAG: [u16; 256] = magnitudes(Codec::Pcma);

const fn magnitudes(codec: Codec) -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let s = match codec {
            Codec::Pcmu => crate::g711::ulaw_decode_reference(i as u8),
            Codec::Pcma => crate::g711::alaw_decode_reference(i as u8),
        } as i32;
        t[i] = if s < 0 { -s } else { s } as u16;
        i += 1;
    }
    t
}

/// Mean absolute amplitude of an encoded frame.
pub fn energy(codec: Codec, frame: &Frame) -> u32 {
    let table = match codec {
        Codec::Pcmu => &ULAW_MAG,
        Codec::Pcma => &ALAW_MAG,
    };
    let mut sum = 0u32;
    for c in frame {
        sum += table[*c as usize] as u32;
    }
    sum / FRAME as u32
}

#[inline]
fn saturate(x: i32) -> i16 {
    x.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

impl Mixer {
    pub fn new(config: RoomConfig) -> Self {
        Mixer {
            config,
            participants: Vec::new(),
            index: HashMap::new(),
            next_tick: None,
            events: VecDeque::new(),
            ended: false,
            hosts_seen: false,
            prompt_pos: 0,
            talkers: Vec::with_capacity(MAX_TALKERS + 1),
            talker_pcm: vec![[0; FRAME]; MAX_TALKERS],
            mix: [0; FRAME],
            own: vec![[0; FRAME]; MAX_TALKERS],
            shared_mix: [None; 2],
            shared_prompt: [None; 2],
            recording: None,
        }
    }

    pub fn len(&self) -> usize {
        self.participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn hosts(&self) -> usize {
        self.participants.iter().filter(|p| p.role == Role::Host).count()
    }

    /// Moderated and no host yet: guests wait and hear the prompt.
    pub fn waiting(&self) -> bool {
        self.config.moderated && self.hosts() == 0
    }

    pub fn is_muted(&self, leg_id: &Uuid) -> Option<bool> {
        self.index.get(leg_id).map(|i| self.participants[*i].muted)
    }

    pub fn join(&mut self, leg_id: Uuid, role: Role, codec: Codec) -> Result<(), MixerError> {
        if self.ended {
            return Err(MixerError::Ended);
        }
        if self.index.contains_key(&leg_id) {
            return Err(MixerError::AlreadyJoined);
        }
        if self.participants.len() >= self.config.max_participants.min(MAX_PARTICIPANTS) {
            return Err(MixerError::Full);
        }
        if role == Role::Host {
            self.hosts_seen = true;
        }
        self.index.insert(leg_id, self.participants.len());
        self.participants.push(Participant {
            leg_id,
            role,
            codec,
            muted: false,
            buffer: VecDeque::with_capacity(MAX_BUFFERED),
            last_digit: None,
            current: None,
            source: Source::Shared(codec, Kind::Mix),
            talking: false,
            quiet_ticks: 0,
        });
        Ok(())
    }

    /// A participant hung up (or was kicked). Applies the room's end rules.
    pub fn leave(&mut self, leg_id: &Uuid) -> bool {
        let Some(i) = self.index.remove(leg_id) else {
            return false;
        };
        let gone = self.participants.swap_remove(i);
        if i < self.participants.len() {
            self.index.insert(self.participants[i].leg_id, i);
        }
        if self.ended {
            return true;
        }
        if self.config.moderated && gone.role == Role::Host && self.hosts() == 0 {
            for p in &self.participants {
                self.events.push_back(MixerEvent::Disconnect { leg_id: p.leg_id });
            }
            self.end(EndReason::LastHostLeft);
        } else if self.participants.is_empty() {
            self.end(EndReason::Empty);
        }
        true
    }

    fn end(&mut self, reason: EndReason) {
        self.ended = true;
        self.events.push_back(MixerEvent::SessionEnded { reason });
    }

    pub fn set_muted(&mut self, leg_id: &Uuid, muted: bool, by: MuteBy) -> bool {
        let Some(&i) = self.index.get(leg_id) else {
            return false;
        };
        let p = &mut self.participants[i];
        if p.muted != muted {
            p.muted = muted;
            self.events.push_back(MixerEvent::MuteChanged {
                leg_id: *leg_id,
                muted,
                by,
            });
            if muted && p.talking {
                p.talking = false;
                p.quiet_ticks = 0;
                self.events.push_back(MixerEvent::TalkingChanged {
                    leg_id: *leg_id,
                    talking: false,
                });
            }
        }
        true
    }

    /// A digit from the participant (RFC 4733 or SIP INFO): `*6` toggles their own mute.
    pub fn handle_digit(&mut self, leg_id: &Uuid, digit: char) {
        let Some(&i) = self.index.get(leg_id) else {
            return;
        };
        let p = &mut self.participants[i];
        let toggle = p.last_digit == Some('*') && digit == '6';
        p.last_digit = if toggle { None } else { Some(digit) };
        if toggle {
            let muted = !p.muted;
            self.set_muted(leg_id, muted, MuteBy::Participant);
        }
    }

    /// An audio payload from a participant, in their codec (any length: cut into 20 ms
    /// frames, the last one padded with silence).
    pub fn handle_audio(&mut self, leg_id: &Uuid, payload: &[u8]) {
        let Some(&i) = self.index.get(leg_id) else {
            return;
        };
        let p = &mut self.participants[i];
        for chunk in payload.chunks(FRAME) {
            let mut frame = [p.codec.silence(); FRAME];
            frame[..chunk.len()].copy_from_slice(chunk);
            if p.buffer.len() >= MAX_BUFFERED {
                p.buffer.pop_front();
            }
            p.buffer.push_back(frame);
        }
    }

    /// When the next tick is due (the driver's timer).
    pub fn poll_timeout(&self) -> Option<Micros> {
        if self.ended {
            None
        } else {
            self.next_tick
        }
    }

    /// Run every tick due by `now` (at most `MAX_CATCH_UP_TICKS`); returns how many ran.
    /// After each tick the caller reads the frames with `for_each_output`, so a driver
    /// calls `tick` directly; this is for callers that only need the events.
    pub fn handle_timeout(&mut self, now: Micros) -> u64 {
        let mut ran = 0;
        while let Some(due) = self.next_tick {
            if due > now || ran >= MAX_CATCH_UP_TICKS || self.ended {
                break;
            }
            self.tick(due);
            ran += 1;
        }
        if ran >= MAX_CATCH_UP_TICKS {
            self.next_tick = Some(now + TICK_US);
        }
        ran
    }

    /// Mix one 20 ms frame for everyone. `now` only schedules the next tick.
    pub fn tick(&mut self, now: Micros) {
        self.next_tick = Some(now + TICK_US);
        self.shared_mix = [None; 2];
        self.shared_prompt = [None; 2];
        self.talkers.clear();
        let waiting = self.waiting();
        // 1. Take this tick's frame from every participant; measure its energy.
        for p in self.participants.iter_mut() {
            p.current = p.buffer.pop_front().map(|f| {
                let e = energy(p.codec, &f);
                (f, e)
            });
        }
        self.track_talking(waiting);
        // 2. The loudest unmuted talkers (none while a moderated room waits for its host).
        if !waiting {
            for (i, p) in self.participants.iter().enumerate() {
                let Some((_, e)) = p.current else { continue };
                if p.muted || e < TALK_THRESHOLD {
                    continue;
                }
                self.talkers.push(i);
                if self.talkers.len() > MAX_TALKERS {
                    let participants = &self.participants;
                    let quietest = (0..self.talkers.len())
                        .min_by_key(|k| participants[self.talkers[*k]].current.map(|c| c.1))
                        .unwrap_or(0);
                    self.talkers.swap_remove(quietest);
                }
            }
        }
        // 3. Decode the talkers and sum them.
        self.mix = [0; FRAME];
        for (k, &i) in self.talkers.iter().enumerate() {
            let p = &self.participants[i];
            let (frame, _) = p.current.expect("talkers have a frame");
            p.codec.decode_into(&frame, &mut self.talker_pcm[k]);
            for (m, s) in self.mix.iter_mut().zip(self.talker_pcm[k].iter()) {
                *m += *s as i32;
            }
        }
        if self.config.record && !waiting {
            let mut pcm = [0i16; FRAME];
            for (o, m) in pcm.iter_mut().zip(self.mix.iter()) {
                *o = saturate(*m);
            }
            self.recording = Some(pcm);
        } else {
            self.recording = None;
        }
        // 4. Each talker hears the mix minus themselves, clipped, encoded for them.
        for (k, &i) in self.talkers.iter().enumerate() {
            let codec = self.participants[i].codec;
            let own = &mut self.own[k];
            for ((o, m), s) in own.iter_mut().zip(self.mix.iter()).zip(self.talker_pcm[k].iter()) {
                *o = codec.encode(saturate(*m - *s as i32));
            }
            self.participants[i].source = Source::Own(k);
        }
        // 5. Everyone else shares one encode per codec: the mix, or the waiting prompt.
        let prompt_frame = if waiting { self.next_prompt_frame() } else { None };
        for i in 0..self.participants.len() {
            if self.talkers.contains(&i) {
                continue;
            }
            let codec = self.participants[i].codec;
            let slot = codec_slot(codec);
            let waiting_guest = waiting && self.participants[i].role == Role::Guest;
            if waiting_guest {
                if self.shared_prompt[slot].is_none() {
                    let mut f = [codec.silence(); FRAME];
                    if let Some(pcm) = &prompt_frame {
                        codec.encode_into(pcm, &mut f);
                    }
                    self.shared_prompt[slot] = Some(f);
                }
                self.participants[i].source = Source::Shared(codec, Kind::Prompt);
            } else {
                if self.shared_mix[slot].is_none() {
                    let mut f = [0u8; FRAME];
                    for (o, m) in f.iter_mut().zip(self.mix.iter()) {
                        *o = codec.encode(saturate(*m));
                    }
                    self.shared_mix[slot] = Some(f);
                }
                self.participants[i].source = Source::Shared(codec, Kind::Mix);
            }
        }
    }

    /// Update each participant's talking flag from this tick's frame.
    /// Nobody talks while a moderated room waits for its host: nobody is heard.
    fn track_talking(&mut self, waiting: bool) {
        for p in self.participants.iter_mut() {
            let voiced = !waiting && !p.muted && p.current.is_some_and(|(_, e)| e >= TALK_THRESHOLD);
            let was = p.talking;
            if voiced {
                p.quiet_ticks = 0;
                p.talking = true;
            } else if p.talking {
                p.quiet_ticks += 1;
                if p.quiet_ticks >= TALK_HANG_TICKS {
                    p.talking = false;
                    p.quiet_ticks = 0;
                }
            }
            if p.talking != was {
                self.events.push_back(MixerEvent::TalkingChanged {
                    leg_id: p.leg_id,
                    talking: p.talking,
                });
            }
        }
    }

    /// Who is talking now (with the hang time), in join order.
    pub fn talking(&self) -> Vec<Uuid> {
        self.participants
            .iter()
            .filter(|p| p.talking)
            .map(|p| p.leg_id)
            .collect()
    }

    fn next_prompt_frame(&mut self) -> Option<Pcm> {
        let prompt = &self.config.waiting_prompt;
        if prompt.is_empty() {
            return None;
        }
        let mut pcm = [0i16; FRAME];
        for s in pcm.iter_mut() {
            *s = prompt[self.prompt_pos % prompt.len()];
            self.prompt_pos = (self.prompt_pos + 1) % prompt.len();
        }
        Some(pcm)
    }

    /// This tick's frame for every participant, in their codec.
    pub fn for_each_output(&self, mut f: impl FnMut(Uuid, Codec, &Frame)) {
        for p in &self.participants {
            let frame = match p.source {
                Source::Own(k) => &self.own[k],
                Source::Shared(codec, Kind::Mix) => match &self.shared_mix[codec_slot(codec)] {
                    Some(frame) => frame,
                    None => continue,
                },
                Source::Shared(codec, Kind::Prompt) => match &self.shared_prompt[codec_slot(codec)] {
                    Some(frame) => frame,
                    None => continue,
                },
            };
            f(p.leg_id, p.codec, frame);
        }
    }

    /// One participant's frame of this tick.
    pub fn output(&self, leg_id: &Uuid) -> Option<Frame> {
        let mut out = None;
        self.for_each_output(|id, _, frame| {
            if id == *leg_id {
                out = Some(*frame);
            }
        });
        out
    }

    /// Who was mixed this tick.
    pub fn talkers(&self) -> Vec<Uuid> {
        self.talkers.iter().map(|i| self.participants[*i].leg_id).collect()
    }

    /// This tick's session mix (everyone who talked), when the room records.
    pub fn recording_frame(&self) -> Option<&Pcm> {
        self.recording.as_ref()
    }

    pub fn poll_event(&mut self) -> Option<MixerEvent> {
        self.events.pop_front()
    }
}

/// The baseline: per listener, decode every other participant's frame, sum, encode.
pub mod naive {
    use super::{saturate, Frame, FRAME};
    use crate::g711::Codec;

    pub struct NaiveMixer {
        pub codecs: Vec<Codec>,
        pub frames: Vec<Frame>,
        pub out: Vec<Frame>,
    }

    impl NaiveMixer {
        pub fn new(codecs: Vec<Codec>) -> Self {
            let n = codecs.len();
            NaiveMixer {
                frames: codecs.iter().map(|c| [c.silence(); FRAME]).collect(),
                out: vec![[0; FRAME]; n],
                codecs,
            }
        }

        pub fn tick(&mut self) {
            let n = self.codecs.len();
            let mut pcm = [0i16; FRAME];
            for listener in 0..n {
                let mut sum = [0i32; FRAME];
                for speaker in 0..n {
                    if speaker == listener {
                        continue;
                    }
                    self.codecs[speaker].decode_into(&self.frames[speaker], &mut pcm);
                    for (s, p) in sum.iter_mut().zip(pcm.iter()) {
                        *s += *p as i32;
                    }
                }
                let codec = self.codecs[listener];
                for (o, s) in self.out[listener].iter_mut().zip(sum.iter()) {
                    *o = codec.encode(saturate(*s));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sine at `hz`, `amplitude`, for tick `n` (continuous phase across ticks).
    fn sine(hz: f64, amplitude: f64, n: u64) -> Pcm {
        let mut pcm = [0i16; FRAME];
        for (k, s) in pcm.iter_mut().enumerate() {
            let t = (n as f64 * FRAME as f64 + k as f64) / 8000.0;
            *s = (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
        }
        pcm
    }

    fn encode(codec: Codec, pcm: &Pcm) -> Frame {
        let mut f = [0u8; FRAME];
        codec.encode_into(pcm, &mut f);
        f
    }

    /// Goertzel power of `hz` in a block of samples, normalised by length².
    fn goertzel(samples: &[i16], hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for x in samples {
            let s0 = *x as f64 + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        power / (samples.len() as f64 * samples.len() as f64)
    }

    fn room(moderated: bool) -> Mixer {
        Mixer::new(RoomConfig {
            moderated,
            max_participants: 10,
            record: true,
            waiting_prompt: (0..800).map(|i| if (i / 10) % 2 == 0 { 3000 } else { -3000 }).collect(),
        })
    }

    /// The next event that is not a talking flag (those have their own test).
    fn next_fact(m: &mut Mixer) -> Option<MixerEvent> {
        std::iter::from_fn(|| m.poll_event()).find(|e| !matches!(e, MixerEvent::TalkingChanged { .. }))
    }

    fn talking_changes(m: &mut Mixer) -> Vec<(Uuid, bool)> {
        std::iter::from_fn(|| m.poll_event())
            .filter_map(|e| match e {
                MixerEvent::TalkingChanged { leg_id, talking } => Some((leg_id, talking)),
                _ => None,
            })
            .collect()
    }

    const A: Uuid = Uuid::from_u128(1);
    const B: Uuid = Uuid::from_u128(2);
    const C: Uuid = Uuid::from_u128(3);
    const FREQS: [(Uuid, f64); 3] = [(A, 440.0), (B, 1000.0), (C, 1700.0)];

    /// Run `ticks` ticks on a virtual clock with each unmuted sender sending its sine;
    /// returns what each participant heard, decoded.
    fn talk(m: &mut Mixer, start_tick: u64, ticks: u64, amplitude: f64) -> HashMap<Uuid, Vec<i16>> {
        let mut heard: HashMap<Uuid, Vec<i16>> = HashMap::new();
        for n in start_tick..start_tick + ticks {
            for (leg, hz) in FREQS {
                let codec = if leg == B { Codec::Pcma } else { Codec::Pcmu };
                m.handle_audio(&leg, &encode(codec, &sine(hz, amplitude, n)));
            }
            m.tick(n * TICK_US);
            m.for_each_output(|leg, codec, frame| {
                let mut pcm = [0i16; FRAME];
                codec.decode_into(frame, &mut pcm);
                heard.entry(leg).or_default().extend_from_slice(&pcm);
            });
        }
        heard
    }

    fn three() -> Mixer {
        let mut m = room(false);
        m.join(A, Role::Host, Codec::Pcmu).unwrap();
        m.join(B, Role::Guest, Codec::Pcma).unwrap();
        m.join(C, Role::Guest, Codec::Pcmu).unwrap();
        m
    }

    /// Which of the three tones a signal holds (power well above the floor).
    fn tones(samples: &[i16]) -> Vec<f64> {
        let powers: Vec<(f64, f64)> = FREQS.iter().map(|(_, hz)| (*hz, goertzel(samples, *hz))).collect();
        let max = powers.iter().map(|p| p.1).fold(0.0, f64::max);
        powers
            .into_iter()
            .filter(|p| max > 0.0 && p.1 > max / 100.0)
            .map(|p| p.0)
            .collect()
    }

    #[test]
    fn each_participant_hears_exactly_the_other_two_never_themselves() {
        let mut m = three();
        let heard = talk(&mut m, 0, 50, 8000.0);
        assert_eq!(tones(&heard[&A]), vec![1000.0, 1700.0]);
        assert_eq!(tones(&heard[&B]), vec![440.0, 1700.0]);
        assert_eq!(tones(&heard[&C]), vec![440.0, 1000.0]);
        let mut talkers = m.talkers();
        talkers.sort();
        assert_eq!(talkers, vec![A, B, C]);
    }

    #[test]
    fn mute_removes_one_and_star_six_toggles_it() {
        let mut m = three();
        assert!(m.set_muted(&B, true, MuteBy::Other));
        let heard = talk(&mut m, 0, 50, 8000.0);
        assert_eq!(tones(&heard[&A]), vec![1700.0]);
        assert_eq!(tones(&heard[&C]), vec![440.0]);
        // A muted participant still hears the others.
        assert_eq!(tones(&heard[&B]), vec![440.0, 1700.0]);
        assert_eq!(
            next_fact(&mut m),
            Some(MixerEvent::MuteChanged {
                leg_id: B,
                muted: true,
                by: MuteBy::Other
            })
        );
        // *6 from B unmutes; *6 from A mutes A.
        for d in ['*', '6'] {
            m.handle_digit(&B, d);
        }
        for d in ['1', '*', '6'] {
            m.handle_digit(&A, d);
        }
        assert_eq!(m.is_muted(&B), Some(false));
        assert_eq!(m.is_muted(&A), Some(true));
        let heard = talk(&mut m, 50, 50, 8000.0);
        assert_eq!(tones(&heard[&C]), vec![1000.0]);
        assert_eq!(
            next_fact(&mut m),
            Some(MixerEvent::MuteChanged {
                leg_id: B,
                muted: false,
                by: MuteBy::Participant
            })
        );
    }

    #[test]
    fn talking_follows_voice_with_a_hang_time_and_stops_on_mute() {
        let mut m = three();
        talk(&mut m, 0, 5, 8000.0);
        let mut started = talking_changes(&mut m);
        started.sort();
        assert_eq!(started, vec![(A, true), (B, true), (C, true)]);
        assert_eq!(m.talking(), vec![A, B, C]);
        // Muting B drops its flag at once.
        m.set_muted(&B, true, MuteBy::Other);
        assert_eq!(talking_changes(&mut m), vec![(B, false)]);
        // Silence from everyone: the flags hold through the hang time, then drop.
        let silence = [Codec::Pcmu.silence(); FRAME];
        for n in 5..5 + TALK_HANG_TICKS as u64 - 1 {
            m.handle_audio(&A, &silence);
            m.tick(n * TICK_US);
        }
        assert_eq!(m.talking(), vec![A, C], "still within the hang time");
        assert!(talking_changes(&mut m).is_empty());
        m.handle_audio(&A, &silence);
        m.tick((5 + TALK_HANG_TICKS as u64) * TICK_US);
        let mut stopped = talking_changes(&mut m);
        stopped.sort();
        assert_eq!(stopped, vec![(A, false), (C, false)]);
        assert!(m.talking().is_empty());
    }

    #[test]
    fn loud_sums_saturate_instead_of_wrapping() {
        let mut m = three();
        // Three near-full-scale square waves in phase: the sum exceeds i16.
        for n in 0..5 {
            let square: Pcm = std::array::from_fn(|k| if ((n * 160 + k) / 20) % 2 == 0 { 30_000 } else { -30_000 });
            for leg in [A, B, C] {
                let codec = if leg == B { Codec::Pcma } else { Codec::Pcmu };
                m.handle_audio(&leg, &encode(codec, &square));
            }
            m.tick(n as u64 * TICK_US);
        }
        let mut pcm = [0i16; FRAME];
        Codec::Pcmu.decode_into(&m.output(&A).unwrap(), &mut pcm);
        // Two of ~30,000 sum to ~60,000: a wrap would flip the sign; saturation keeps the peak.
        for (k, s) in pcm.iter().enumerate() {
            let positive = ((4 * 160 + k) / 20) % 2 == 0;
            assert!(if positive { *s > 30_000 } else { *s < -30_000 }, "sample {k} = {s}");
        }
        let rec = m.recording_frame().unwrap();
        assert!(rec.iter().all(|s| *s == i16::MAX || *s == i16::MIN));
    }

    #[test]
    fn silent_listeners_share_one_encode_and_agree_with_the_naive_mixer() {
        let mut m = room(false);
        let mut naive = naive::NaiveMixer::new(vec![Codec::Pcmu; 6]);
        let legs: Vec<Uuid> = (10..16).map(Uuid::from_u128).collect();
        for leg in &legs {
            m.join(*leg, Role::Guest, Codec::Pcmu).unwrap();
        }
        // Two talk, four are silent (silence frames).
        for (i, leg) in legs.iter().enumerate() {
            let frame = match i {
                0 => encode(Codec::Pcmu, &sine(440.0, 5000.0, 0)),
                1 => encode(Codec::Pcmu, &sine(1000.0, 5000.0, 0)),
                _ => [Codec::Pcmu.silence(); FRAME],
            };
            m.handle_audio(leg, &frame);
            naive.frames[i] = frame;
        }
        m.tick(0);
        naive.tick();
        let listeners: Vec<Frame> = legs[2..].iter().map(|l| m.output(l).unwrap()).collect();
        assert!(listeners.windows(2).all(|w| w[0] == w[1]));
        // Same audio as the naive mixer for everyone (silence decodes to exactly 0).
        for (i, leg) in legs.iter().enumerate() {
            assert_eq!(m.output(leg).unwrap(), naive.out[i], "leg {i}");
        }
    }

    #[test]
    fn moderated_room_guests_wait_for_the_host_and_leave_with_the_last_host() {
        let mut m = room(true);
        m.join(B, Role::Guest, Codec::Pcma).unwrap();
        m.join(C, Role::Guest, Codec::Pcmu).unwrap();
        assert!(m.waiting());
        // Guests talk but hear only the prompt (a 400 Hz square), not each other.
        let heard = talk(&mut m, 0, 10, 8000.0);
        assert!(m.talkers().is_empty());
        assert!(m.talking().is_empty(), "nobody talks while nobody is heard");
        assert!(m.recording_frame().is_none(), "nothing is recorded while waiting");
        for leg in [B, C] {
            let power_prompt = goertzel(&heard[&leg], 400.0);
            let power_voice = goertzel(&heard[&leg], 1000.0).max(goertzel(&heard[&leg], 1700.0));
            assert!(
                power_prompt > 100.0 * power_voice,
                "{leg}: {power_prompt} vs {power_voice}"
            );
        }
        m.join(A, Role::Host, Codec::Pcmu).unwrap();
        assert!(!m.waiting());
        let heard = talk(&mut m, 10, 50, 8000.0);
        assert_eq!(tones(&heard[&B]), vec![440.0, 1700.0]);
        // The last host leaves: everyone else is disconnected and the session ends.
        assert!(m.leave(&A));
        let events: Vec<MixerEvent> = std::iter::from_fn(|| next_fact(&mut m)).collect();
        assert_eq!(
            events,
            vec![
                MixerEvent::Disconnect { leg_id: B },
                MixerEvent::Disconnect { leg_id: C },
                MixerEvent::SessionEnded {
                    reason: EndReason::LastHostLeft
                },
            ]
        );
        assert!(m.is_ended());
        assert_eq!(m.join(A, Role::Host, Codec::Pcmu), Err(MixerError::Ended));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn an_open_room_ends_when_the_last_one_leaves_and_limits_hold() {
        let mut m = Mixer::new(RoomConfig {
            moderated: false,
            max_participants: 2,
            record: false,
            waiting_prompt: vec![],
        });
        m.join(A, Role::Guest, Codec::Pcmu).unwrap();
        assert_eq!(m.join(A, Role::Guest, Codec::Pcmu), Err(MixerError::AlreadyJoined));
        m.join(B, Role::Guest, Codec::Pcmu).unwrap();
        assert_eq!(m.join(C, Role::Guest, Codec::Pcmu), Err(MixerError::Full));
        // A flood of audio stays bounded.
        for _ in 0..100 {
            m.handle_audio(&A, &[0x11; 1000]);
        }
        m.tick(0);
        m.handle_timeout(10 * TICK_US);
        assert_eq!(m.poll_timeout(), Some(11 * TICK_US));
        assert!(m.leave(&A));
        assert!(!m.leave(&A));
        assert_eq!(next_fact(&mut m), None);
        assert!(m.leave(&B));
        assert_eq!(
            next_fact(&mut m),
            Some(MixerEvent::SessionEnded {
                reason: EndReason::Empty
            })
        );
    }

    #[test]
    fn only_the_loudest_talkers_are_mixed() {
        let mut m = room(false);
        let legs: Vec<Uuid> = (20..27).map(Uuid::from_u128).collect();
        for leg in &legs {
            m.join(*leg, Role::Guest, Codec::Pcmu).unwrap();
        }
        for (i, leg) in legs.iter().enumerate() {
            m.handle_audio(leg, &encode(Codec::Pcmu, &sine(500.0, 1000.0 * (i + 1) as f64, 0)));
        }
        m.tick(0);
        let mut talkers = m.talkers();
        talkers.sort();
        assert_eq!(talkers, legs[legs.len() - MAX_TALKERS..].to_vec());
    }
}
