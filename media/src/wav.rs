//! WAV files of 8 kHz 16-bit mono PCM: the recorder (header patched when the file is
//! finished, then hashed) and the reader for the prompts shipped under `media/prompts/`.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const SAMPLE_RATE: u32 = 8_000;

fn header(data_len: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&1u16.to_le_bytes()); // mono
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    h[32..34].copy_from_slice(&2u16.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// Writes a recording as it happens; `finish` fixes the sizes and hashes the file.
pub struct WavWriter {
    path: PathBuf,
    out: BufWriter<File>,
    samples: u64,
}

/// A finished recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub path: PathBuf,
    pub duration_ms: u64,
    pub sha256: String,
}

/// The most samples one file holds (a 4 GiB RIFF limit, with room to spare).
pub const MAX_SAMPLES: u64 = (u32::MAX as u64 - 64) / 2;

impl WavWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&header(0))?;
        Ok(WavWriter {
            path: path.to_path_buf(),
            out,
            samples: 0,
        })
    }

    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        if self.samples + samples.len() as u64 > MAX_SAMPLES {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(samples.len() * 2);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.out.write_all(&bytes)?;
        self.samples += samples.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> io::Result<Finished> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header((self.samples * 2) as u32))?;
        file.sync_all()?;
        drop(file);
        let mut hasher = Sha256::new();
        let mut f = File::open(&self.path)?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Finished {
            path: self.path,
            duration_ms: self.samples * 1000 / SAMPLE_RATE as u64,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("not an 8 kHz 16-bit mono PCM WAV file: {0}")]
    Format(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Read an 8 kHz 16-bit mono PCM WAV (chunks other than `fmt ` and `data` are skipped).
pub fn parse(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::Format("no RIFF/WAVE header"));
    }
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]) as usize;
        let body = bytes
            .get(pos + 8..(pos + 8).saturating_add(len).min(bytes.len()))
            .unwrap_or(&[]);
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(WavError::Format("short fmt chunk"));
            }
            let fmt = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            if fmt != 1 || channels != 1 || rate != SAMPLE_RATE || bits != 16 {
                return Err(WavError::Format("wrong format"));
            }
            format_ok = true;
        } else if id == b"data" {
            if !format_ok {
                return Err(WavError::Format("data before fmt"));
            }
            return Ok(body.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect());
        }
        pos = pos.saturating_add(8).saturating_add(len + (len & 1));
    }
    Err(WavError::Format("no data chunk"))
}

pub fn read(path: &Path) -> Result<Vec<i16>, WavError> {
    parse(&std::fs::read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_recording_round_trips_with_its_length_and_hash() {
        let dir = std::env::temp_dir().join(format!("ledgerline-wav-{}", std::process::id()));
        let path = dir.join("r.wav");
        let mut w = WavWriter::create(&path).unwrap();
        for n in 0..50 {
            w.write(&[n as i16; 160]).unwrap();
        }
        let done = w.finish().unwrap();
        assert_eq!(done.duration_ms, 1000);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 50 * 160 * 2);
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&bytes)));
        let samples = parse(&bytes).unwrap();
        assert_eq!(samples.len(), 8000);
        assert_eq!(samples[160 * 7], 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_shipped_prompts_are_8khz_mono() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        for name in crate::prompts::NAMES {
            let samples = read(&dir.join(format!("{name}.wav"))).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(samples.len() >= 800, "{name} is at least 0.1 s");
        }
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
            let mut riff = b"RIFF\0\0\0\0WAVE".to_vec();
            riff.extend_from_slice(&bytes);
            let _ = parse(&riff);
        }
    }
}
