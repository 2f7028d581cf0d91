//! How a scene's attributes evolve over time: a list of keys, each moving the scene smoothly
//! from wherever it was towards new attributes over a transition. A key may arrive in the
//! middle of an earlier transition (a viewer steering twice quickly); the new transition then
//! starts from the blend the scene had reached, so the picture never jumps.

use super::attributes::{Attributes, Blend, Camera, Scenery, TimeOfDay, Weather};
use serde::{Deserialize, Serialize};

/// The continuous state of the scene at one instant: what the renderer draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneState {
    /// Seconds since the stream started: drives every animation (clouds, waves, stars).
    pub t: f64,
    pub time: Blend<{ TimeOfDay::COUNT }>,
    pub weather: Blend<{ Weather::COUNT }>,
    pub scenery: Blend<{ Scenery::COUNT }>,
    /// Camera velocity in screen heights per second (negative: left).
    pub velocity: f64,
    /// Camera position in screen heights: the integral of the velocity.
    pub camera_x: f64,
}

impl SceneState {
    /// The dominant value of every attribute: the per-frame label.
    pub fn labels(&self) -> Attributes {
        Attributes {
            time: TimeOfDay::from_index(self.time.argmax()),
            weather: Weather::from_index(self.weather.argmax()),
            scenery: Scenery::from_index(self.scenery.argmax()),
            camera: Camera::from_velocity(self.velocity),
        }
    }
}

/// One change of attributes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// When the transition starts, in seconds.
    pub at: f64,
    /// How long the transition lasts, in seconds (0: a cut).
    pub transition: f64,
    /// Where it ends.
    pub target: Attributes,
}

/// The blends a key starts from, fixed when the key is added.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Start {
    time: Blend<{ TimeOfDay::COUNT }>,
    weather: Blend<{ Weather::COUNT }>,
    scenery: Blend<{ Scenery::COUNT }>,
    velocity: f64,
    camera_x: f64,
}

/// Smoothstep progress of a transition: 0 before, 1 after, C1 in between, monotonic.
pub fn progress(t: f64, at: f64, duration: f64) -> f64 {
    if duration <= 0.0 {
        return if t >= at { 1.0 } else { 0.0 };
    }
    let u = ((t - at) / duration).clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

/// ∫ progress from `at` to `t`, in closed form, so the camera position is exact at any frame
/// rate and after any number of frames.
fn progress_integral(t: f64, at: f64, duration: f64) -> f64 {
    if t <= at {
        return 0.0;
    }
    if duration <= 0.0 {
        return t - at;
    }
    let u = ((t - at) / duration).min(1.0);
    let inside = duration * (u * u * u - 0.5 * u * u * u * u);
    inside + (t - at - duration).max(0.0)
}

/// A scene's attributes over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    keys: Vec<(Key, Start)>,
}

impl Timeline {
    /// A scene that starts with `initial` at time 0.
    pub fn new(initial: Attributes) -> Self {
        let start = Start {
            time: Blend::one_hot(initial.time.index()),
            weather: Blend::one_hot(initial.weather.index()),
            scenery: Blend::one_hot(initial.scenery.index()),
            velocity: initial.camera.velocity(),
            camera_x: 0.0,
        };
        let key = Key { at: f64::NEG_INFINITY, transition: 0.0, target: initial };
        Timeline { keys: vec![(key, start)] }
    }

    /// Starts a transition to `target` at time `at` lasting `transition` seconds. Keys must be
    /// added in time order; a key earlier than the last one is moved to the last one's time.
    pub fn push(&mut self, at: f64, transition: f64, target: Attributes) {
        let last_at = self.keys.last().map(|(k, _)| k.at).unwrap_or(f64::NEG_INFINITY);
        let at = at.max(last_at);
        let s = self.state_at(at);
        let start =
            Start { time: s.time, weather: s.weather, scenery: s.scenery, velocity: s.velocity, camera_x: s.camera_x };
        self.keys.push((Key { at, transition: transition.max(0.0), target }, start));
    }

    /// The keys, the initial one first (its `at` is −∞).
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter().map(|(k, _)| k)
    }

    /// The attributes the scene is heading to (or has reached).
    pub fn target(&self) -> Attributes {
        self.keys.last().expect("a timeline always has its initial key").0.target
    }

    /// Forgets keys whose transitions ended before `t`, keeping the state at every time ≥ `t`
    /// the same. Keeps a never-ending stream's timeline bounded.
    pub fn prune_before(&mut self, t: f64) {
        let finished = self.keys.iter().rposition(|(k, _)| k.at + k.transition <= t).unwrap_or(0);
        if finished > 0 {
            // The last finished key becomes the base; its start is kept because the camera
            // position integrates from it.
            self.keys.drain(..finished);
        }
    }

    /// The scene at time `t` (seconds).
    pub fn state_at(&self, t: f64) -> SceneState {
        let i = self.keys.partition_point(|(k, _)| k.at <= t).saturating_sub(1);
        let (key, start) = &self.keys[i];
        let target = key.target;
        let (p, integral) = if key.at.is_finite() {
            (progress(t, key.at, key.transition), progress_integral(t, key.at, key.transition))
        } else {
            (1.0, 0.0)
        };
        let elapsed = if key.at.is_finite() { t - key.at } else { t };
        let v_end = target.camera.velocity();
        let velocity = start.velocity + (v_end - start.velocity) * p;
        let camera_x = start.camera_x + start.velocity * elapsed + (v_end - start.velocity) * integral;
        let pf = p as f32;
        SceneState {
            t,
            time: start.time.lerp(&Blend::one_hot(target.time.index()), pf),
            weather: start.weather.lerp(&Blend::one_hot(target.weather.index()), pf),
            scenery: start.scenery.lerp(&Blend::one_hot(target.scenery.index()), pf),
            velocity,
            camera_x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(time: TimeOfDay, weather: Weather, camera: Camera) -> Attributes {
        Attributes { time, weather, scenery: Scenery::Mountains, camera }
    }

    #[test]
    fn camera_position_is_the_integral_of_velocity() {
        let mut tl = Timeline::new(attrs(TimeOfDay::Day, Weather::Clear, Camera::PanLeft));
        tl.push(2.0, 3.0, attrs(TimeOfDay::Day, Weather::Clear, Camera::Still));
        tl.push(4.0, 1.0, attrs(TimeOfDay::Day, Weather::Clear, Camera::PanRight));
        // Integrate numerically with a fine step and compare to the closed form.
        let steps = 80_000;
        let dt = 8.0 / steps as f64;
        let x: f64 = (0..steps).map(|i| tl.state_at((i as f64 + 0.5) * dt).velocity * dt).sum();
        assert!((x - tl.state_at(8.0).camera_x).abs() < 1e-6, "{x} vs {}", tl.state_at(8.0).camera_x);
    }

    #[test]
    fn an_interrupted_transition_does_not_jump() {
        let mut tl = Timeline::new(attrs(TimeOfDay::Day, Weather::Clear, Camera::Still));
        tl.push(1.0, 4.0, attrs(TimeOfDay::Night, Weather::Clear, Camera::Still));
        let before = tl.state_at(2.5);
        tl.push(2.5, 2.0, attrs(TimeOfDay::Sunset, Weather::Snow, Camera::Still));
        let after = tl.state_at(2.5);
        assert_eq!(before.time, after.time);
        assert_eq!(before.weather, after.weather);
    }

    #[test]
    fn pruning_keeps_the_future_unchanged() {
        let mut tl = Timeline::new(attrs(TimeOfDay::Day, Weather::Clear, Camera::PanLeft));
        for k in 0..50 {
            let time = TimeOfDay::from_index(k % 4);
            tl.push(k as f64 * 2.0, 1.0, attrs(time, Weather::Rain, Camera::from_index(k % 3)));
        }
        let probe: Vec<SceneState> = (0..40).map(|i| tl.state_at(90.0 + i as f64 * 0.3)).collect();
        tl.prune_before(90.0);
        assert!(tl.keys.len() < 10);
        let after: Vec<SceneState> = (0..40).map(|i| tl.state_at(90.0 + i as f64 * 0.3)).collect();
        assert_eq!(probe, after);
    }
}
