//! Frame sources: what turns a session's state into frames, chunk by chunk.
//!
//! The world source renders the procedural world; the model source (the latent diffusion
//! model) plugs into the same trait.

use endless_model::media::Size;
use endless_model::world::{Attributes, Timeline, World, parse};
use serde::{Deserialize, Serialize};

/// Why a source could not produce frames or take a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The prompt says nothing the source understands.
    #[error("the prompt mentions nothing this source can show (try words like sunset, snow, mountains, pan left)")]
    EmptyPrompt,
    /// The request does not fit this source (its size or frame rate, say).
    #[error("{0}")]
    Unsupported(String),
    /// Generation failed; the session reports it to its viewers.
    #[error("generation failed: {0}")]
    Failed(String),
}

/// A prompt change, as a recording's timeline keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEvent {
    /// The first frame generated with (the start of the transition to) this prompt.
    pub frame: u64,
    pub prompt: String,
    /// Seconds the change blends over.
    pub transition_secs: f64,
}

/// Produces a session's frames, one chunk at a time. Frames are RGB8, `size` large.
pub trait FrameSource: Send {
    /// Frame size.
    fn size(&self) -> Size;
    /// Frames per second of the stream.
    fn fps(&self) -> f64;
    /// Index of the next frame [`Self::next_chunk`] will produce.
    fn next_frame(&self) -> u64;
    /// When the next chunk is needed (the session's buffer runs dry then): a source that shares
    /// a device uses it to put the most urgent work first.
    fn set_due(&mut self, _due: std::time::Instant) {}
    /// Produces the next `n` frames.
    fn next_chunk(&mut self, n: usize) -> Result<Vec<Vec<u8>>, SourceError>;
    /// The chunk size this source makes frames in, when it has one (a model's chunks): a
    /// session then asks for that many at a time, so that it never holds the source for more
    /// than one of them.
    fn chunk_hint(&self) -> Option<usize> {
        None
    }
    /// Changes the prompt from frame `at` on (at or after [`Self::next_frame`]), blending
    /// over `transition_secs`. Returns the frame the change really starts at (a source may
    /// only change at its own chunk boundaries): replaying the steer there reproduces it.
    fn steer(&mut self, at: u64, prompt: &str, transition_secs: f64) -> Result<u64, SourceError>;
    /// Moves generation back to frame `frame` (not before the last steer), so that a steer
    /// shows as soon as possible instead of after the buffered chunks. Returns false when the
    /// source cannot (then it keeps going from where it is).
    fn rewind_to(&mut self, frame: u64) -> bool;
    /// An independent copy of this source that continues from frame `frame` (a frame this
    /// source already produced, or the next one).
    fn fork_at(&self, frame: u64) -> Box<dyn FrameSource>;
    /// What a recording needs to reproduce this source (kind, seed, configuration).
    fn describe(&self) -> serde_json::Value;
    /// Live figures of the source for the stats (steps per chunk, say); `null` when none.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// The procedural world as a frame source: exact, cheap to rewind and fork, because every
/// frame is a pure function of (seed, timeline, frame index).
#[derive(Debug, Clone)]
pub struct WorldSource {
    world: World,
    timeline: Timeline,
    size: Size,
    fps: f64,
    next: u64,
    /// Frames before this one can no longer change (the last steer's frame).
    fixed_until: u64,
}

impl WorldSource {
    /// A world stream of `prompt` (unmentioned attributes take their defaults).
    pub fn new(prompt: &str, seed: u64, size: Size, fps: f64) -> WorldSource {
        let first = parse(prompt).over(Attributes::default());
        WorldSource { world: World::new(seed), timeline: Timeline::new(first), size, fps, next: 0, fixed_until: 0 }
    }

    /// The attributes the stream is showing or heading to.
    pub fn target(&self) -> Attributes {
        self.timeline.target()
    }

    fn seconds(&self, frame: u64) -> f64 {
        frame as f64 / self.fps
    }
}

impl FrameSource for WorldSource {
    fn size(&self) -> Size {
        self.size
    }

    fn fps(&self) -> f64 {
        self.fps
    }

    fn next_frame(&self) -> u64 {
        self.next
    }

    fn next_chunk(&mut self, n: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        let frames = (0..n as u64)
            .map(|i| {
                let state = self.timeline.state_at(self.seconds(self.next + i));
                let mut out = vec![0u8; self.size.rgb_bytes()];
                self.world.render(&state, self.size.width, self.size.height, &mut out, true);
                out
            })
            .collect();
        self.next += n as u64;
        // A never-ending stream keeps its timeline bounded.
        self.timeline.prune_before(self.seconds(self.fixed_until.min(self.next)));
        Ok(frames)
    }

    fn steer(&mut self, at: u64, prompt: &str, transition_secs: f64) -> Result<u64, SourceError> {
        let said = parse(prompt);
        if said.is_empty() {
            return Err(SourceError::EmptyPrompt);
        }
        let at = at.max(self.fixed_until);
        let target = said.over(self.timeline.target());
        self.timeline.push(self.seconds(at), transition_secs.max(0.0), target);
        self.fixed_until = at;
        Ok(at)
    }

    fn rewind_to(&mut self, frame: u64) -> bool {
        self.next = frame.max(self.fixed_until).min(self.next);
        true
    }

    fn fork_at(&self, frame: u64) -> Box<dyn FrameSource> {
        let mut fork = self.clone();
        fork.next = frame.min(self.next);
        fork.fixed_until = fork.fixed_until.min(fork.next);
        Box::new(fork)
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "world",
            "seed": self.world.seed,
            "size": self.size.to_string(),
            "fps": self.fps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use endless_model::world::{Scenery, TimeOfDay, Weather};

    fn source() -> WorldSource {
        WorldSource::new("mountains at night", 4, Size::new(64, 64), 10.0)
    }

    #[test]
    fn chunks_continue_the_same_stream() {
        let mut a = source();
        let mut b = source();
        let whole = a.next_chunk(8).unwrap();
        let mut parts = b.next_chunk(3).unwrap();
        parts.extend(b.next_chunk(5).unwrap());
        assert_eq!(whole, parts);
        assert_eq!(a.next_frame(), 8);
    }

    #[test]
    fn steering_changes_only_what_the_prompt_mentions_from_the_steer_on() {
        let mut s = source();
        let before = s.clone().next_chunk(20).unwrap();
        s.next_chunk(5).unwrap();
        assert_eq!(s.steer(5, "now it snows", 0.5), Ok(5));
        assert_eq!(
            s.target(),
            Attributes {
                time: TimeOfDay::Night,
                weather: Weather::Snow,
                scenery: Scenery::Mountains,
                ..Default::default()
            }
        );
        let after = s.next_chunk(15).unwrap();
        assert_eq!(after[0], before[5], "the steer's first frame is still at the old prompt (transition starts)");
        assert_ne!(after[10], before[15]);
        assert_eq!(s.steer(20, "xyzzy", 1.0), Err(SourceError::EmptyPrompt));
    }

    #[test]
    fn rewinding_regenerates_the_same_frames_and_forks_continue_exactly() {
        let mut s = source();
        let first = s.next_chunk(12).unwrap();
        let fork = s.fork_at(6);
        assert!(s.rewind_to(4));
        assert_eq!(s.next_frame(), 4);
        assert_eq!(s.next_chunk(8).unwrap(), first[4..12].to_vec());
        let mut fork = fork;
        assert_eq!(fork.next_frame(), 6);
        assert_eq!(fork.next_chunk(6).unwrap(), first[6..12].to_vec());
        // The fork is independent: steering it leaves the original alone.
        fork.steer(12, "sunset", 0.0).unwrap();
        let original_next = s.clone().next_chunk(2).unwrap();
        assert_ne!(fork.next_chunk(2).unwrap(), original_next);
    }

    #[test]
    fn a_steer_cannot_be_rewound_past() {
        let mut s = source();
        s.next_chunk(10).unwrap();
        s.steer(10, "rain", 1.0).unwrap();
        s.next_chunk(10).unwrap();
        s.rewind_to(3);
        assert_eq!(s.next_frame(), 10);
    }
}
