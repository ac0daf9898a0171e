//! G.711 µ-law (PCMU) and A-law (PCMA): the ITU-T algorithm as in the reference
//! implementation, expanded at compile time into lookup tables (decode: 256 entries;
//! encode: one entry per 14-bit or 13-bit step) so the mixer's hot loop is a table read.

/// µ-law and A-law, the two codecs every phone speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// The encoding name used in SDP and in `LegMedia::codec`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn from_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The code of silence (linear 0).
    pub fn silence(self) -> u8 {
        self.encode(0)
    }

    #[inline]
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(sample),
            Codec::Pcma => alaw_encode(sample),
        }
    }

    #[inline]
    pub fn decode(self, code: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_decode(code),
            Codec::Pcma => alaw_decode(code),
        }
    }

    pub fn encode_into(self, samples: &[i16], out: &mut [u8]) {
        match self {
            Codec::Pcmu => {
                for (o, s) in out.iter_mut().zip(samples) {
                    *o = ulaw_encode(*s);
                }
            }
            Codec::Pcma => {
                for (o, s) in out.iter_mut().zip(samples) {
                    *o = alaw_encode(*s);
                }
            }
        }
    }

    pub fn decode_into(self, codes: &[u8], out: &mut [i16]) {
        let table = match self {
            Codec::Pcmu => &ULAW_DECODE,
            Codec::Pcma => &ALAW_DECODE,
        };
        for (o, c) in out.iter_mut().zip(codes) {
            *o = table[*c as usize];
        }
    }
}

/// Rewrite a payload from one codec to the other in place (a 256-entry table per direction).
pub fn transcode(from: Codec, to: Codec, payload: &mut [u8]) {
    let table = match (from, to) {
        (Codec::Pcmu, Codec::Pcma) => &ULAW_TO_ALAW,
        (Codec::Pcma, Codec::Pcmu) => &ALAW_TO_ULAW,
        _ => return,
    };
    for b in payload.iter_mut() {
        *b = table[*b as usize];
    }
}

#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    // µ-law resolves 14 bits: the two low bits never change the code.
    ULAW_ENCODE[((sample as u16) >> 2) as usize]
}

#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law resolves 13 bits.
    ALAW_ENCODE[((sample as u16) >> 3) as usize]
}

const BIAS: i32 = 0x84;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];

/// The reference µ-law compressor (ITU-T G.711, as in Sun's `g711.c`): 14-bit input.
pub const fn ulaw_encode_reference(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 2;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > 8159 {
        pcm = 8159;
    }
    pcm += BIAS >> 2;
    let mut seg = 0;
    while seg < 8 && pcm > SEG_UEND[seg] {
        seg += 1;
    }
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    (((seg as i32) << 4 | ((pcm >> (seg + 1)) & 0x0F)) ^ mask) as u8
}

pub const fn ulaw_decode_reference(code: u8) -> i16 {
    let u = !code;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// The reference A-law compressor (ITU-T G.711, as in Sun's `g711.c`).
pub const fn alaw_encode_reference(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 3;
    let mask: i32 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let mut seg = 0;
    while seg < 8 && pcm > SEG_AEND[seg] {
        seg += 1;
    }
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut aval = (seg as i32) << 4;
    if seg < 2 {
        aval |= (pcm >> 1) & 0x0F;
    } else {
        aval |= (pcm >> seg) & 0x0F;
    }
    (aval ^ mask) as u8
}

pub const fn alaw_decode_reference(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_reference(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_reference(i as u8);
        i += 1;
    }
    t
};

static ULAW_ENCODE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        t[i] = ulaw_encode_reference(((i as u16) << 2) as i16);
        i += 1;
    }
    t
};

static ALAW_ENCODE: [u8; 8192] = {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        t[i] = alaw_encode_reference(((i as u16) << 3) as i16);
        i += 1;
    }
    t
};

static ULAW_TO_ALAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_encode_reference(ulaw_decode_reference(i as u8));
        i += 1;
    }
    t
};

static ALAW_TO_ULAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_encode_reference(alaw_decode_reference(i as u8));
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_values_of_the_standard() {
        // µ-law: 0xFF and 0x7F are +0 and -0, 0x80/0x00 the extremes (8031 x 4 in 16 bits).
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        // The first segment of µ-law has steps of 2 (in 14 bits): 1 -> 0xFE decodes to 8.
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0xEF), 132);
        // A-law: even bits inverted (0x55), 0xD5/0x55 the smallest magnitudes, 0xAA/0x2A the extremes.
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(Codec::Pcmu.silence(), 0xFF);
        assert_eq!(Codec::Pcma.silence(), 0xD5);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            let back = ulaw_encode(ulaw_decode(code));
            // 0x7F is µ-law's negative zero; linear 0 encodes as positive zero.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, expected, "µ-law {code:#04x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A-law {code:#04x}");
        }
    }

    #[test]
    fn the_tables_equal_the_reference_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(s), ulaw_encode_reference(s), "µ-law {s}");
            assert_eq!(alaw_encode(s), alaw_encode_reference(s), "A-law {s}");
        }
    }

    #[test]
    fn decode_tables_are_monotonic_per_sign() {
        // Within a sign, a higher magnitude code decodes to a larger magnitude.
        let mut ulaw: Vec<i16> = (0..=255u8).map(ulaw_decode).collect();
        ulaw.sort_unstable();
        ulaw.dedup();
        assert_eq!(ulaw.len(), 255, "µ-law has 255 distinct levels (two zeros)");
        let mut alaw: Vec<i16> = (0..=255u8).map(alaw_decode).collect();
        alaw.sort_unstable();
        alaw.dedup();
        assert_eq!(alaw.len(), 256, "A-law has 256 distinct levels");
    }

    #[test]
    fn transcoding_tables_agree_with_decode_then_encode() {
        for code in 0..=255u8 {
            let mut b = [code];
            transcode(Codec::Pcmu, Codec::Pcma, &mut b);
            assert_eq!(b[0], alaw_encode(ulaw_decode(code)));
            let mut b = [code];
            transcode(Codec::Pcma, Codec::Pcmu, &mut b);
            assert_eq!(b[0], ulaw_encode(alaw_decode(code)));
        }
    }

    proptest! {
        #[test]
        fn quantization_error_is_bounded_by_the_segment_step(s in any::<i16>()) {
            // The step doubles every segment: the error is at most half a step, relative to the
            // magnitude (about 1/32 for the companded part), plus the clip at the ends.
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let back = codec.decode(codec.encode(s)) as i32;
                let err = (back - s as i32).abs();
                let bound = ((s as i32).abs() / 16).max(16);
                prop_assert!(err <= bound, "{codec:?} {s} -> {back}");
            }
        }

        #[test]
        fn encode_is_monotonic(a in any::<i16>(), b in any::<i16>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            for codec in [Codec::Pcmu, Codec::Pcma] {
                prop_assert!(codec.decode(codec.encode(lo)) <= codec.decode(codec.encode(hi)));
            }
        }

        #[test]
        fn decode_encode_is_idempotent(s in any::<i16>()) {
            for codec in [Codec::Pcmu, Codec::Pcma] {
                let once = codec.decode(codec.encode(s));
                prop_assert_eq!(codec.decode(codec.encode(once)), once);
            }
        }
    }
}
