//! `endless replay`: regenerates a recording from its JSON timeline — the same source, seed
//! and prompt changes at the same frames — into an MP4, and checks the regenerated raw frames
//! against the digest the recording wrote.

use crate::config::Config;
use crate::recording::{Timeline, frame_hash, frames_digest};
use anyhow::{Context, Result, bail};
use endless_model::media::{Size, write_mp4};
use endless_sessions::{FrameSource, WorldSource, replay_source};
use std::path::Path;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub frames: u64,
    pub start_frame: u64,
    pub digest: String,
    /// The recording's digest, when it was finalised.
    pub expected: Option<String>,
}

impl ReplayReport {
    /// Whether the frames are bit for bit the recorded ones (`None`: the recording has no digest).
    pub fn exact(&self) -> Option<bool> {
        self.expected.as_ref().map(|e| *e == self.digest)
    }
}

/// The source a timeline describes, steered as it was.
fn source_of(t: &Timeline, config: &Config) -> Result<Box<dyn FrameSource>> {
    let mut prompts = t.prompts.clone();
    prompts.sort_by_key(|p| p.frame);
    let first = prompts.first().context("the timeline has no prompt")?;
    let size: Size = t.size.parse().map_err(|e| anyhow::anyhow!("size {:?}: {e}", t.size))?;
    let mut source: Box<dyn FrameSource> = match t.source["kind"].as_str() {
        Some("world") => Box::new(WorldSource::new(&first.prompt, t.seed, size, t.fps)),
        Some("model") => {
            let text_dir = if config.model.text_dir.as_os_str().is_empty() {
                endless_model::text::default_dir()
            } else {
                config.model.text_dir.clone()
            };
            Box::new(
                replay_source(&t.source, &first.prompt, text_dir, config.model.device).map_err(anyhow::Error::msg)?,
            )
        }
        other => bail!("unknown source kind {other:?}"),
    };
    for p in &prompts[1..] {
        let at = source.steer(p.frame, &p.prompt, p.transition_secs)?;
        if at != p.frame {
            bail!("the steer {:?} was recorded at frame {} but can only be placed at {at}", p.prompt, p.frame);
        }
    }
    Ok(source)
}

/// Replays the recording whose timeline is `timeline` into `out`.
pub fn replay(timeline: &Path, out: &Path, config: &Config) -> Result<ReplayReport> {
    let text = std::fs::read_to_string(timeline).with_context(|| format!("reading {}", timeline.display()))?;
    let t: Timeline = serde_json::from_str(&text).with_context(|| format!("parsing {}", timeline.display()))?;
    if t.frames == 0 {
        bail!("{} has no frames", timeline.display());
    }
    let mut source = source_of(&t, config)?;
    let (size, fps, start, end) = (source.size(), source.fps(), t.start_frame, t.start_frame + t.frames);
    // Generation on its own thread, frames streamed into the MP4 writer.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, String>>(32);
    let generator = std::thread::spawn(move || {
        while source.next_frame() < end {
            let next = source.next_frame();
            let n = (end - next).min(12) as usize;
            match source.next_chunk(n) {
                Ok(frames) => {
                    for (i, f) in frames.into_iter().enumerate() {
                        if next + i as u64 >= start && tx.send(Ok(f)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut hashes = Vec::with_capacity(t.frames as usize);
    let mut failure = None;
    let frames = rx.iter().map_while(|f| match f {
        Ok(f) => {
            hashes.push(frame_hash(&f));
            Some(f)
        }
        Err(e) => {
            failure = Some(e);
            None
        }
    });
    let written = write_mp4(out, size, fps, frames).with_context(|| format!("writing {}", out.display()))?;
    generator.join().map_err(|_| anyhow::anyhow!("the generator panicked"))?;
    if let Some(e) = failure {
        bail!("generation failed: {e}");
    }
    if written as u64 != t.frames {
        bail!("wrote {written} frames of {}", t.frames);
    }
    Ok(ReplayReport { frames: t.frames, start_frame: start, digest: frames_digest(hashes), expected: t.frames_digest })
}
