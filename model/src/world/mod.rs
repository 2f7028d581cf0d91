//! The procedural world: endless landscape video with captions and per-frame labels.
//!
//! It is the training set, the evaluation reference and the preview source of the service.
//! Everything is deterministic: a seed and a timeline of attributes give the same frames,
//! bit for bit, at any resolution and frame rate, serial or parallel.

mod attributes;
mod caption;
mod clip;
mod noise;
mod render;
mod timeline;

pub use attributes::{Attributes, Blend, Camera, PAN_SPEED, PartialAttributes, Scenery, TimeOfDay, Weather};
pub use caption::{
    HELD_OUT_COMBINATIONS, Phrasing, SlotPhrase, Split, caption_pieces, is_held_out_combination, parse, slot_phrases,
    split_of,
};
pub use clip::{Clip, ClipOptions, ClipSampler, render_all};
pub use noise::{hash as noise_hash, hash_f64 as noise_uniform};
pub use render::World;
pub use timeline::{Key, SceneState, Timeline, progress};
