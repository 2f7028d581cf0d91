//! A stream's latent memory between chunks: the rolling context of the last `recent` latents and
//! a few long-range anchors (Flexible Diffusion Models, Harvey et al. 2022), bounded whatever
//! the stream's length.
//!
//! Every `anchor_every`-th latent frame of the stream (not the first, which stands for one
//! video frame alone) is kept as an anchor candidate. A chunk is conditioned on `frames` latents
//! in all: up to `anchors` of them the newest candidates older than every recent latent it could
//! use, each with its distance in latent frames, and the most recent latents for the rest — so
//! a chunk always appends `window − frames` latents, with anchors or without (before the stream
//! has one, or with a model not trained for them). Anchors show the prompt they were made under: a prompt change
//! ([`RollingContext::set_prompt_epoch`]) forgets them, and the new prompt's accumulate.

use crate::pipeline::ChunkRequest;
use crate::text::TextEmbedding;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// Clean latents from earlier in a stream, given before a chunk's context.
#[derive(Debug, Clone)]
pub struct Anchors<B: Backend> {
    /// `[c, a, h, w]`, oldest first.
    pub latents: Tensor<B, 4>,
    /// Each anchor's distance in latent frames before the first context frame (≥ 1).
    pub distances: Vec<usize>,
}

impl<B: Backend> Anchors<B> {
    pub fn len(&self) -> usize {
        self.distances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.distances.is_empty()
    }
}

/// What a chunk is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextLayout {
    /// Latents every chunk after the first is conditioned on, anchors included.
    pub frames: usize,
    /// How many of them are long-range anchors once the stream has some (fewer than `frames`:
    /// one recent latent at least).
    pub anchors: usize,
    /// Latent frames between anchor candidates.
    pub anchor_every: usize,
}

impl ContextLayout {
    /// Recent latents only.
    pub fn recent(frames: usize) -> ContextLayout {
        ContextLayout { frames, anchors: 0, anchor_every: 1 }
    }

    /// Latents every chunk after the first appends, in a window of `window`.
    pub fn new_frames(&self, window: usize) -> usize {
        window.saturating_sub(self.frames)
    }

    /// This layout for a pipeline with windows of `window` latents, trained with anchors or
    /// not: at most `window − 1` latents of context, no anchors for a model that does not know
    /// them, and one recent latent at least.
    pub fn fit(self, window: usize, trained_with_anchors: bool) -> ContextLayout {
        let frames = self.frames.min(window.saturating_sub(1));
        let anchors = if trained_with_anchors { self.anchors.min(frames.saturating_sub(1)) } else { 0 };
        ContextLayout { frames, anchors, ..self }
    }

    /// Checks the layout against a window of `window` latent frames.
    pub fn validate(&self, window: usize) -> Result<(), String> {
        if self.frames == 0 || self.frames >= window {
            return Err(format!(
                "{} context latents: it must be 1 to {} in a window of {window}",
                self.frames,
                window - 1
            ));
        }
        if self.anchors >= self.frames {
            return Err(format!(
                "{} anchors in a context of {}: one recent latent at least",
                self.anchors, self.frames
            ));
        }
        if self.anchor_every == 0 {
            return Err("anchor_every must be at least 1".into());
        }
        Ok(())
    }

    /// Anchor candidates worth keeping: those still among the recent latents, and the
    /// `anchors` older ones.
    fn candidates_kept(&self) -> usize {
        self.anchors + self.frames / self.anchor_every + 1
    }
}

/// A stream's latents between chunks.
#[derive(Debug, Clone)]
pub struct RollingContext<B: Backend> {
    layout: ContextLayout,
    /// `[c, ≤ frames, h, w]`: the newest latents.
    recent: Option<Tensor<B, 4>>,
    /// `(latent index, [c, 1, h, w])`, oldest first.
    candidates: VecDeque<(u64, Tensor<B, 4>)>,
    /// Latent frames the stream has so far.
    made: u64,
    prompt_epoch: u64,
}

impl<B: Backend> RollingContext<B> {
    pub fn new(layout: ContextLayout) -> Self {
        RollingContext { layout, recent: None, candidates: VecDeque::new(), made: 0, prompt_epoch: 0 }
    }

    /// Latent frames of the stream so far.
    pub fn made(&self) -> u64 {
        self.made
    }

    /// The prompt epoch the anchors belong to.
    pub fn prompt_epoch(&self) -> u64 {
        self.prompt_epoch
    }

    /// Starts a new prompt epoch when `epoch` differs from the current: the anchors go.
    pub fn set_prompt_epoch(&mut self, epoch: u64) {
        if epoch != self.prompt_epoch {
            self.prompt_epoch = epoch;
            self.candidates.clear();
        }
    }

    /// The conditioning of the next chunk: recent latents and anchors (`None` before the
    /// first chunk).
    pub fn conditioning(&self) -> (Option<Tensor<B, 4>>, Option<Anchors<B>>) {
        let Some(recent) = &self.recent else { return (None, None) };
        let ContextLayout { frames, anchors, .. } = self.layout;
        let held = recent.dims()[1];
        // Candidates older than every latent the context could use.
        let oldest_recent = self.made.saturating_sub(frames as u64);
        let usable: Vec<&(u64, Tensor<B, 4>)> = self.candidates.iter().filter(|(j, _)| *j < oldest_recent).collect();
        let a = anchors.min(usable.len());
        let r = (frames - a).min(held);
        let recent = (r > 0).then(|| recent.clone().narrow(1, held - r, r));
        let start = self.made - r as u64; // latent index of the first context frame
        let chosen = &usable[usable.len() - a..];
        let anchors = (a > 0).then(|| Anchors {
            latents: Tensor::cat(chosen.iter().map(|(_, x)| x.clone()).collect(), 1),
            distances: chosen.iter().map(|(j, _)| (start - j) as usize).collect(),
        });
        (recent, anchors)
    }

    /// The request of chunk `chunk` of the stream seeded `seed`.
    pub fn request(&self, seed: u64, chunk: u64, text: Arc<TextEmbedding>) -> ChunkRequest<B> {
        let (context, anchors) = self.conditioning();
        ChunkRequest { seed, chunk, context, anchors, text }
    }

    /// Appends a chunk's new latents `[c, n, h, w]`.
    pub fn push(&mut self, new: Tensor<B, 4>) {
        let n = new.dims()[1];
        let every = self.layout.anchor_every as u64;
        if self.layout.anchors > 0 {
            for i in 0..n {
                let j = self.made + i as u64;
                if j > 0 && j.is_multiple_of(every) {
                    self.candidates.push_back((j, new.clone().narrow(1, i, 1)));
                }
            }
            while self.candidates.len() > self.layout.candidates_kept() {
                self.candidates.pop_front();
            }
        }
        let keep = self.layout.frames;
        let all = match self.recent.take() {
            Some(recent) => Tensor::cat(vec![recent, new], 1),
            None => new,
        };
        let held = all.dims()[1];
        self.recent = (keep > 0).then(|| all.narrow(1, held - keep.min(held), keep.min(held)));
        self.made += n as u64;
    }

    /// Latent frames held: recent latents and anchor candidates.
    pub fn frames(&self) -> usize {
        self.recent.as_ref().map_or(0, |r| r.dims()[1]) + self.candidates.len()
    }

    /// Bytes of the latents held (f32).
    pub fn bytes(&self) -> usize {
        let recent = self.recent.as_ref().map_or(0, |r| r.shape().num_elements());
        let anchors: usize = self.candidates.iter().map(|(_, x)| x.shape().num_elements()).sum();
        (recent + anchors) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    /// `n` latent frames of one channel, 1 × 1, valued by their index in the stream.
    fn frames(from: u64, n: usize) -> Tensor<Flex, 4> {
        let values: Vec<f32> = (0..n).map(|i| (from + i as u64) as f32).collect();
        Tensor::from_data(TensorData::new(values, [1, n, 1, 1]), &Default::default())
    }

    fn values(x: &Tensor<Flex, 4>) -> Vec<f32> {
        x.clone().into_data().into_vec().unwrap()
    }

    #[test]
    fn anchors_fill_in_once_the_stream_is_long_enough_and_stay_bounded() {
        let layout = ContextLayout { frames: 2, anchors: 1, anchor_every: 4 };
        let mut rolling = RollingContext::<Flex>::new(layout);
        assert!(rolling.conditioning().0.is_none());
        rolling.push(frames(0, 4)); // the first chunk: a window of 4
        // No candidate older than the recent latents yet: both slots hold recent latents.
        let (recent, anchors) = rolling.conditioning();
        assert_eq!(values(&recent.unwrap()), vec![2.0, 3.0]);
        assert!(anchors.is_none());
        let mut made = 4;
        for _ in 0..500 {
            rolling.push(frames(made, 2));
            made += 2;
            let (recent, anchors) = rolling.conditioning();
            let Some(anchors) = anchors else {
                // Latent 4, the first candidate, is still among the two recent latents.
                assert!(made < 8, "no anchor at {made}");
                assert_eq!(recent.unwrap().dims()[1], 2, "two recent latents instead");
                continue;
            };
            assert_eq!(values(&recent.unwrap()), vec![(made - 1) as f32], "one recent latent");
            let anchor = values(&anchors.latents)[0] as u64;
            assert!(anchor.is_multiple_of(4) && anchor > 0 && anchor < made - 2, "anchor {anchor} at {made}");
            assert_eq!(anchors.distances, vec![(made - 1 - anchor) as usize], "its distance to the context");
            assert!(rolling.frames() <= 2 + layout.candidates_kept(), "{} latents held", rolling.frames());
        }
        assert_eq!(rolling.made(), made);
    }

    #[test]
    fn a_new_prompt_forgets_the_anchors() {
        let layout = ContextLayout { frames: 2, anchors: 1, anchor_every: 2 };
        let mut rolling = RollingContext::<Flex>::new(layout);
        rolling.push(frames(0, 8));
        assert!(rolling.conditioning().1.is_some());
        rolling.set_prompt_epoch(1);
        let (recent, anchors) = rolling.conditioning();
        assert!(anchors.is_none());
        assert_eq!(values(&recent.unwrap()), vec![6.0, 7.0], "the context itself stays");
    }

    #[test]
    fn without_anchors_it_is_the_last_k_latents() {
        let mut rolling = RollingContext::<Flex>::new(ContextLayout::recent(2));
        for i in 0..10 {
            rolling.push(frames(3 * i, 3));
        }
        let (recent, anchors) = rolling.conditioning();
        assert_eq!(values(&recent.unwrap()), vec![28.0, 29.0]);
        assert!(anchors.is_none());
        assert_eq!(rolling.frames(), 2);
    }
}
