//! Clips: a stretch of the world with its caption, per-frame labels and per-frame captions;
//! and the sampler that draws random clips for training or evaluation.

use super::attributes::{Attributes, Camera, Scenery, TimeOfDay, Weather};
use super::caption::{HELD_OUT_COMBINATIONS, Phrasing, Split, split_of};
use super::noise::hash;
use super::render::World;
use super::timeline::{SceneState, Timeline};
use rayon::prelude::*;

/// A clip of the world, fully determined by its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub world: World,
    pub timeline: Timeline,
    pub phrasing: Phrasing,
    /// World time of the first frame, in seconds.
    pub start: f64,
    pub fps: f64,
    pub frames: usize,
    pub width: usize,
    pub height: usize,
}

impl Clip {
    /// World time of frame `i`.
    pub fn time_of(&self, i: usize) -> f64 {
        self.start + i as f64 / self.fps
    }

    /// The scene at frame `i`.
    pub fn state(&self, i: usize) -> SceneState {
        self.timeline.state_at(self.time_of(i))
    }

    /// The per-frame labels: the dominant value of each attribute at each frame.
    pub fn labels(&self) -> Vec<Attributes> {
        (0..self.frames).map(|i| self.state(i).labels()).collect()
    }

    /// The per-frame captions, in the clip's phrasing: the words follow the labels.
    pub fn captions(&self) -> Vec<String> {
        self.labels().iter().map(|a| self.phrasing.caption(a)).collect()
    }

    /// The caption of the clip as a whole: the attributes it ends on.
    pub fn caption(&self) -> String {
        self.phrasing.caption(&self.timeline.target())
    }

    /// Frame `i`, RGB8.
    pub fn render_frame(&self, i: usize, parallel: bool) -> Vec<u8> {
        let mut out = vec![0u8; self.width * self.height * 3];
        self.world.render(&self.state(i), self.width, self.height, &mut out, parallel);
        out
    }

    /// Every frame, RGB8. With `parallel`, frames are rendered on rayon's pool.
    pub fn render(&self, parallel: bool) -> Vec<Vec<u8>> {
        if parallel {
            (0..self.frames).into_par_iter().map(|i| self.render_frame(i, false)).collect()
        } else {
            (0..self.frames).map(|i| self.render_frame(i, false)).collect()
        }
    }
}

/// Every frame of every clip, RGB8, by clip: each frame is a task of its own on rayon's pool,
/// so that a batch with fewer clips than cores still keeps them all busy (8 clips of 13 frames
/// on 16 cores, where one task a clip left half of them idle).
pub fn render_all(clips: &[Clip]) -> Vec<Vec<Vec<u8>>> {
    let tasks: Vec<(&Clip, usize)> = clips.iter().flat_map(|c| (0..c.frames).map(move |i| (c, i))).collect();
    let mut frames = tasks.into_par_iter().map(|(c, i)| c.render_frame(i, false)).collect::<Vec<_>>().into_iter();
    clips.iter().map(|c| frames.by_ref().take(c.frames).collect()).collect()
}

/// Shape of the clips a sampler draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOptions {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    pub frames: usize,
    /// Probability that a clip changes one or two attributes part-way through.
    pub transition_probability: f64,
}

impl Default for ClipOptions {
    fn default() -> Self {
        ClipOptions { width: 128, height: 128, fps: 8.0, frames: 17, transition_probability: 0.3 }
    }
}

/// A deterministic stream of random clips from one side of the split.
#[derive(Debug, Clone)]
pub struct ClipSampler {
    split: Split,
    seed: u64,
    drawn: u64,
}

/// A uniform number in [0, 1) from a hash.
fn uniform(seed: u64, i: u64, j: i64) -> f64 {
    super::noise::hash_f64(seed, i as i64, j)
}

fn pick(seed: u64, i: u64, j: i64, n: usize) -> usize {
    (uniform(seed, i, j) * n as f64) as usize
}

impl ClipSampler {
    pub fn new(split: Split, seed: u64) -> Self {
        ClipSampler { split, seed, drawn: 0 }
    }

    /// Random attributes of this sampler's split, drawn with `salt`.
    fn attributes(&self, n: u64, salt: i64) -> Attributes {
        let camera = Camera::from_index(pick(self.seed, n, salt, Camera::COUNT));
        match self.split {
            Split::HeldOut => {
                let (time, weather, scenery) =
                    HELD_OUT_COMBINATIONS[pick(self.seed, n, salt + 1, HELD_OUT_COMBINATIONS.len())];
                Attributes { time, weather, scenery, camera }
            }
            Split::Train => {
                // Rejection: about one draw in ten is a held-out combination.
                for k in 0.. {
                    let a = Attributes {
                        time: TimeOfDay::from_index(pick(self.seed, n, salt + 10 * k + 1, TimeOfDay::COUNT)),
                        weather: Weather::from_index(pick(self.seed, n, salt + 10 * k + 2, Weather::COUNT)),
                        scenery: Scenery::from_index(pick(self.seed, n, salt + 10 * k + 3, Scenery::COUNT)),
                        camera,
                    };
                    if split_of(&a) == Split::Train {
                        return a;
                    }
                }
                unreachable!("the loop returns once a training combination is drawn")
            }
        }
    }

    /// The next clip.
    pub fn next_clip(&mut self, o: &ClipOptions) -> Clip {
        let n = self.drawn;
        self.drawn += 1;
        let first = self.attributes(n, 0);
        let start = uniform(self.seed, n, 100) * 3600.0;
        let mut timeline = Timeline::new(first);
        let duration = o.frames as f64 / o.fps;
        if uniform(self.seed, n, 101) < o.transition_probability {
            // Change one or two attributes, to a combination of the same split.
            for attempt in 0..64 {
                let other = self.attributes(n, 1000 + 100 * attempt);
                let mut target = first;
                let changes = 1 + pick(self.seed, n, 102 + attempt, 2);
                for c in 0..changes {
                    match pick(self.seed, n, 200 + 10 * attempt + c as i64, 4) {
                        0 => target.time = other.time,
                        1 => target.weather = other.weather,
                        2 => target.scenery = other.scenery,
                        _ => target.camera = other.camera,
                    }
                }
                if target != first && split_of(&target) == self.split {
                    let at = start + duration * (0.1 + 0.4 * uniform(self.seed, n, 103));
                    let length = duration * (0.2 + 0.3 * uniform(self.seed, n, 104));
                    timeline.push(at, length, target);
                    break;
                }
            }
        }
        Clip {
            world: World::new(hash(self.seed, n as i64, 105)),
            timeline,
            phrasing: Phrasing::sample(self.split, hash(self.seed, n as i64, 106)),
            start,
            fps: o.fps,
            frames: o.frames,
            width: o.width,
            height: o.height,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::caption::parse;

    fn opts(transition_probability: f64) -> ClipOptions {
        ClipOptions { width: 64, height: 64, fps: 8.0, frames: 24, transition_probability }
    }

    #[test]
    fn training_never_draws_a_held_out_combination() {
        let mut s = ClipSampler::new(Split::Train, 3);
        for _ in 0..5_000 {
            let clip = s.next_clip(&opts(0.5));
            for a in clip.labels() {
                assert_eq!(split_of(&a), Split::Train, "{a}");
            }
            assert_eq!(clip.phrasing.split, Split::Train);
        }
        let mut s = ClipSampler::new(Split::HeldOut, 3);
        for _ in 0..500 {
            let clip = s.next_clip(&opts(0.0));
            assert_eq!(split_of(&clip.timeline.target()), Split::HeldOut);
        }
    }

    /// Labels agree with captions: every per-frame caption parses back to that frame's labels.
    #[test]
    fn labels_agree_with_captions() {
        let mut s = ClipSampler::new(Split::Train, 11);
        let mut transitions = 0;
        for _ in 0..400 {
            let clip = s.next_clip(&opts(0.5));
            let labels = clip.labels();
            for (a, c) in labels.iter().zip(clip.captions()) {
                assert_eq!(parse(&c).over(Attributes::default()), *a, "{c}");
            }
            transitions += (labels.first() != labels.last()) as usize;
            assert_eq!(parse(&clip.caption()).over(Attributes::default()), *labels.last().unwrap());
        }
        assert!(transitions > 100, "only {transitions} clips changed attributes");
    }

    /// Transitions interpolate monotonically: the weight of the target value never falls
    /// and the weight of the value left behind never rises; labels change at most once.
    #[test]
    fn transitions_interpolate_monotonically() {
        let mut s = ClipSampler::new(Split::Train, 5);
        let mut seen = 0;
        for _ in 0..300 {
            let clip = s.next_clip(&ClipOptions { frames: 48, ..opts(1.0) });
            let first = clip.state(0).labels();
            let target = clip.timeline.target();
            if first == target {
                continue;
            }
            seen += 1;
            let states: Vec<SceneState> = (0..clip.frames).map(|i| clip.state(i)).collect();
            for w in states.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                assert!(b.time.0[target.time.index()] >= a.time.0[target.time.index()]);
                assert!(b.weather.0[target.weather.index()] >= a.weather.0[target.weather.index()]);
                assert!(b.scenery.0[target.scenery.index()] >= a.scenery.0[target.scenery.index()]);
                assert!(b.time.0[first.time.index()] <= a.time.0[first.time.index()] || first.time == target.time);
                let dv = target.camera.velocity() - first.camera.velocity();
                assert!((b.velocity - a.velocity) * dv >= -1e-12);
            }
            let labels = clip.labels();
            let changes = labels.windows(2).filter(|w| w[0].time != w[1].time).count();
            assert!(changes <= 1);
            assert_eq!(*labels.last().unwrap(), target);
        }
        assert!(seen > 200);
    }

    #[test]
    fn the_same_seed_gives_bit_identical_frames() {
        let a = ClipSampler::new(Split::Train, 42).next_clip(&opts(1.0));
        let b = ClipSampler::new(Split::Train, 42).next_clip(&opts(1.0));
        assert_eq!(a, b);
        assert_eq!(a.render(false), b.render(true), "parallel and serial must agree bit for bit");
        let c = ClipSampler::new(Split::Train, 43).next_clip(&ClipOptions { frames: 3, ..opts(1.0) });
        assert_eq!(render_all(&[a.clone(), c.clone()]), vec![a.render(false), c.render(false)]);
        assert_ne!(a.render_frame(0, false), c.render_frame(0, false));
    }
}
