//! The discrete attributes that describe a scene of the world, and their blends.

use serde::{Deserialize, Serialize};

macro_rules! attribute {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many values there are.
            pub const COUNT: usize = Self::ALL.len();

            /// Position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// The value at `index` of [`Self::ALL`].
            pub fn from_index(index: usize) -> Self {
                Self::ALL[index]
            }

            /// A short stable name, as used in labels and JSON.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }
    };
}

attribute!(
    /// Time of day: sets the sky palette, the sun or moon, the light on the land.
    TimeOfDay { Dawn => "dawn", Day => "day", Sunset => "sunset", Night => "night" }
);
attribute!(
    /// Weather: cloud cover, precipitation and fog.
    Weather { Clear => "clear", Cloudy => "cloudy", Rain => "rain", Snow => "snow", Fog => "fog" }
);
attribute!(
    /// Scenery: the shape and material of the land layers.
    Scenery {
        Hills => "hills",
        Mountains => "mountains",
        Ocean => "ocean",
        Desert => "desert",
        Forest => "forest",
        City => "city",
    }
);
attribute!(
    /// Camera motion: a horizontal pan with parallax, or a still camera.
    Camera { PanLeft => "pan_left", PanRight => "pan_right", Still => "still" }
);

impl Camera {
    /// Camera velocity in screen heights per second of the nearest land layer (negative: left).
    pub fn velocity(self) -> f64 {
        match self {
            Camera::PanLeft => -PAN_SPEED,
            Camera::PanRight => PAN_SPEED,
            Camera::Still => 0.0,
        }
    }

    /// The camera label of a velocity: the nearest of the three speeds.
    pub fn from_velocity(v: f64) -> Camera {
        if v <= -PAN_SPEED / 2.0 {
            Camera::PanLeft
        } else if v >= PAN_SPEED / 2.0 {
            Camera::PanRight
        } else {
            Camera::Still
        }
    }
}

/// Pan speed in screen heights per second for the nearest parallax layer.
pub const PAN_SPEED: f64 = 0.15;

/// A complete description of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attributes {
    pub time: TimeOfDay,
    pub weather: Weather,
    pub scenery: Scenery,
    pub camera: Camera,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes { time: TimeOfDay::Day, weather: Weather::Clear, scenery: Scenery::Hills, camera: Camera::PanRight }
    }
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.time, self.weather, self.scenery, self.camera)
    }
}

/// What a free-text prompt said: each attribute it mentioned, `None` for those it did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialAttributes {
    pub time: Option<TimeOfDay>,
    pub weather: Option<Weather>,
    pub scenery: Option<Scenery>,
    pub camera: Option<Camera>,
}

impl PartialAttributes {
    /// The attributes mentioned here, the rest taken from `base`. Steering a stream with
    /// "now it snows" changes the weather and keeps everything else.
    pub fn over(self, base: Attributes) -> Attributes {
        Attributes {
            time: self.time.unwrap_or(base.time),
            weather: self.weather.unwrap_or(base.weather),
            scenery: self.scenery.unwrap_or(base.scenery),
            camera: self.camera.unwrap_or(base.camera),
        }
    }

    /// Whether the prompt mentioned nothing the world knows.
    pub fn is_empty(&self) -> bool {
        *self == PartialAttributes::default()
    }
}

/// A convex blend of the values of one attribute: weights that sum to one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blend<const N: usize>(pub [f32; N]);

impl<const N: usize> Blend<N> {
    /// All weight on value `index`.
    pub fn one_hot(index: usize) -> Self {
        let mut w = [0.0; N];
        w[index] = 1.0;
        Blend(w)
    }

    /// `self` moved a fraction `p` of the way towards `other`.
    pub fn lerp(&self, other: &Self, p: f32) -> Self {
        let mut w = [0.0; N];
        for (i, w) in w.iter_mut().enumerate() {
            *w = self.0[i] + (other.0[i] - self.0[i]) * p;
        }
        Blend(w)
    }

    /// The index with the largest weight (the lowest index on a tie).
    pub fn argmax(&self) -> usize {
        let mut best = 0;
        for i in 1..N {
            if self.0[i] > self.0[best] {
                best = i;
            }
        }
        best
    }

    /// Blends per-value quantities with these weights.
    pub fn mix(&self, values: &[f32; N]) -> f32 {
        self.0.iter().zip(values).map(|(w, v)| w * v).sum()
    }

    /// Blends per-value colours with these weights.
    pub fn mix3(&self, values: &[[f32; 3]; N]) -> [f32; 3] {
        let mut out = [0.0; 3];
        for (w, v) in self.0.iter().zip(values) {
            for c in 0..3 {
                out[c] += w * v[c];
            }
        }
        out
    }
}
