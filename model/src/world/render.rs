//! The renderer: draws one [`SceneState`] into an RGB8 frame of any size.
//!
//! Everything is placed in screen-height units (a frame is 1.0 tall), so a scene looks the
//! same at 64² and at 512², and a 16:9 frame simply shows more of the world left and right.
//! The picture, back to front:
//!
//! ```text
//!  sky gradient ─ sun / moon ─ stars ─ clouds          (far, barely moves with the camera)
//!  land layer 0 ─ 1 ─ 2 ─ 3                            (parallax 0.12 … 1.0, hazier when far)
//!  water where no land covers the ground (ocean)
//!  fog ─ rain streaks ─ snowflakes                     (in front)
//! ```
//!
//! Each land layer is a height profile over world x, blended over the scenery weights, so a
//! transition between sceneries morphs the land. World x grows without bound as the camera
//! pans and every profile comes from hashed noise, so a pan never repeats.

use super::attributes::{Scenery, Weather};
use super::noise::{fbm1, fbm2, hash, hash01, ridged1, value2};
use super::timeline::SceneState;
use rayon::prelude::*;

type Rgb = [f32; 3];

/// Number of parallax land layers.
const LAYERS: usize = 4;
/// How much each layer moves with the camera (1.0: the nearest, at pan speed).
const PARALLAX: [f64; LAYERS] = [0.12, 0.3, 0.6, 1.0];
/// Where each layer's ground line sits, from the top of the frame.
const BASE: [f32; LAYERS] = [0.60, 0.68, 0.78, 0.90];
/// Aerial perspective: how much of the horizon colour veils each layer.
const HAZE: [f32; LAYERS] = [0.50, 0.30, 0.14, 0.04];
/// How much of the fog colour covers each layer in full fog.
const FOG_DEPTH: [f32; LAYERS] = [0.88, 0.72, 0.52, 0.3];
/// The horizon, from the top of the frame.
const HORIZON: f32 = BASE[0];
/// A sunk layer: below the bottom of the frame (the sea covers it).
const SUNK: f32 = -0.6;

fn lerp3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn mul3(a: Rgb, b: Rgb) -> Rgb {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

fn scale3(a: Rgb, s: f32) -> Rgb {
    [a[0] * s, a[1] * s, a[2] * s]
}

fn add3(a: Rgb, b: Rgb) -> Rgb {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Colours and amounts of a frame that do not depend on the pixel.
struct Look {
    zenith: Rgb,
    horizon: Rgb,
    /// Light falling on the land (multiplies its day colour).
    light: Rgb,
    sun_pos: (f32, f32),
    sun_colour: Rgb,
    sun_visible: f32,
    moon_pos: (f32, f32),
    moon_visible: f32,
    stars: f32,
    cloud_cover: f32,
    cloud_colour: Rgb,
    overcast: f32,
    overcast_sky: Rgb,
    fog: f32,
    fog_colour: Rgb,
    rain: f32,
    snow: f32,
    night: f32,
    city_glow: f32,
}

impl Look {
    fn new(s: &SceneState) -> Look {
        let time = &s.time;
        let weather = &s.weather;
        let zenith = time.mix3(&[[0.36, 0.42, 0.66], [0.22, 0.46, 0.86], [0.22, 0.18, 0.42], [0.012, 0.018, 0.055]]);
        let horizon = time.mix3(&[[0.98, 0.72, 0.58], [0.68, 0.84, 0.98], [1.0, 0.50, 0.22], [0.08, 0.10, 0.2]]);
        let overcast = weather.mix(&[0.0, 0.55, 0.78, 0.62, 0.35]);
        let mut light = time.mix3(&[[0.92, 0.78, 0.72], [1.0, 1.0, 1.0], [1.0, 0.68, 0.50], [0.16, 0.18, 0.30]]);
        light = scale3(light, 1.0 - 0.35 * overcast);
        let w = &time.0;
        let sunlit = (w[0] + w[1] + w[2]).max(1e-6);
        let sun_pos = (
            (0.2 * w[0] + 0.6 * w[1] + 0.8 * w[2]) / sunlit,
            ((HORIZON - 0.07) * w[0] + 0.14 * w[1] + (HORIZON - 0.05) * w[2]) / sunlit,
        );
        let sun_colour = [
            1.0,
            (0.85 * w[0] + 0.98 * w[1] + 0.58 * w[2]) / sunlit,
            (0.62 * w[0] + 0.90 * w[1] + 0.30 * w[2]) / sunlit,
        ];
        let night = w[3];
        let fog = weather.mix(&[0.0, 0.08, 0.22, 0.28, 1.0]);
        let overcast_sky =
            time.mix3(&[[0.62, 0.58, 0.62], [0.64, 0.67, 0.72], [0.56, 0.45, 0.45], [0.04, 0.045, 0.06]]);
        let fog_base = lerp3(horizon, [0.72, 0.74, 0.76], 0.55);
        Look {
            zenith,
            horizon,
            light,
            sun_pos,
            sun_colour,
            sun_visible: (1.0 - night) * (1.0 - 0.9 * overcast) * (1.0 - 0.8 * fog),
            moon_pos: (0.3, 0.2),
            moon_visible: night * (1.0 - 0.9 * overcast) * (1.0 - 0.8 * fog),
            stars: night * (1.0 - overcast).powi(2) * (1.0 - fog),
            cloud_cover: weather.mix(&[0.14, 0.8, 0.95, 0.86, 0.5]),
            cloud_colour: scale3(
                time.mix3(&[[0.96, 0.80, 0.80], [0.98, 0.98, 0.99], [1.0, 0.64, 0.48], [0.10, 0.11, 0.16]]),
                1.0 - 0.45 * weather.0[Weather::Rain.index()]
                    - 0.2 * weather.0[Weather::Snow.index()]
                    - 0.15 * weather.0[Weather::Cloudy.index()],
            ),
            overcast,
            overcast_sky,
            fog,
            fog_colour: mul3(fog_base, lerp3([1.0; 3], light, 0.6)),
            rain: weather.0[Weather::Rain.index()],
            snow: weather.0[Weather::Snow.index()],
            night,
            city_glow: night * s.scenery.0[Scenery::City.index()],
        }
    }
}

/// Day colour of each scenery's land, per layer (far → near).
const LAND: [[Rgb; LAYERS]; Scenery::COUNT] = [
    [[0.42, 0.58, 0.40], [0.36, 0.56, 0.30], [0.30, 0.52, 0.22], [0.26, 0.48, 0.17]],
    [[0.50, 0.52, 0.62], [0.44, 0.45, 0.52], [0.36, 0.37, 0.36], [0.30, 0.36, 0.24]],
    [[0.24, 0.36, 0.30], [0.24, 0.36, 0.30], [0.24, 0.36, 0.30], [0.86, 0.78, 0.60]],
    [[0.80, 0.56, 0.40], [0.86, 0.64, 0.42], [0.90, 0.70, 0.46], [0.93, 0.76, 0.52]],
    [[0.20, 0.36, 0.30], [0.14, 0.32, 0.20], [0.10, 0.27, 0.14], [0.07, 0.21, 0.09]],
    [[0.42, 0.45, 0.56], [0.36, 0.38, 0.46], [0.30, 0.31, 0.37], [0.24, 0.24, 0.29]],
];

/// A city building under a column, for its windows.
#[derive(Clone, Copy, Default)]
struct Building {
    /// Cell index of the building (its identity for hashing).
    cell: i64,
    /// World-x from the building's left wall.
    local_x: f32,
    /// Screen-height units from the ground line to the roof.
    height: f32,
    /// Window grid spacing in world units.
    grid: f32,
}

/// One land layer under one column of the frame.
#[derive(Clone, Copy, Default)]
struct Column {
    /// Top of the land, in pixels from the top of the frame.
    top: f32,
    /// Bottom of the land: the water line where the sea covers the ground in front of it.
    bottom: f32,
    /// Day colour of the land here, slope shading included.
    colour: Rgb,
    /// Pixel row above which a mountain is snow-capped (`f32::MIN`: no cap).
    cap: f32,
    building: Option<Building>,
}

/// Land height (screen heights above the layer's ground line) of one scenery at world `x`.
/// Returns the building under `x` for the city.
fn land_height(seed: u64, scenery: Scenery, layer: usize, x: f64) -> (f32, Option<Building>) {
    let s = seed ^ ((layer as u64 + 1) << 40) ^ ((scenery as u64 + 1) << 48);
    match scenery {
        Scenery::Hills => {
            let amp = [0.11, 0.10, 0.085, 0.06][layer];
            let f = [1.2, 1.5, 1.9, 2.4][layer];
            (0.01 + amp * 1.5 * fbm1(s, x * f, 4).powf(1.4), None)
        }
        Scenery::Mountains => {
            let amp = [0.40, 0.27, 0.15, 0.07][layer];
            let f = [0.8, 1.2, 1.7, 2.4][layer];
            (0.01 + amp * ridged1(s, x * f, 5) * 1.25, None)
        }
        Scenery::Ocean => match layer {
            0 => {
                let n = fbm1(s, x * 0.6, 4);
                (if n > 0.6 { (n - 0.6) * 0.45 } else { SUNK }, None)
            }
            3 => (0.025 + 0.02 * fbm1(s, x * 2.0, 3), None),
            _ => (SUNK, None),
        },
        Scenery::Desert => {
            if layer == 0 {
                // Distant mesas: flat tops with steep sides.
                let m = fbm1(s, x * 0.7, 3);
                (0.015 + 0.11 * smoothstep(0.52, 0.56, m) + 0.01 * fbm1(s, x * 6.0, 2), None)
            } else {
                // Dunes: soft asymmetric crests.
                let amp = [0.0, 0.07, 0.075, 0.055][layer];
                let n = fbm1(s, x * [0.0, 1.6, 2.0, 2.6][layer], 3);
                (0.01 + amp * 1.6 * n * n, None)
            }
        }
        Scenery::Forest => {
            let ground = 0.01 + [0.06, 0.05, 0.04, 0.03][layer] * fbm1(s, x * 1.3, 3);
            let cell_w = [0.022, 0.032, 0.048, 0.075][layer];
            let c = (x / cell_w).floor() as i64;
            let mut tree = 0.0f32;
            for k in c - 1..=c + 1 {
                let centre = (k as f64 + 0.2 + 0.6 * hash01(s, k, 1) as f64) * cell_w;
                let tall = cell_w as f32 * (1.6 + 1.6 * hash01(s, k, 2));
                let half = cell_w * 0.62;
                let d = ((x - centre).abs() / half) as f32;
                if d < 1.0 {
                    // A conifer: a triangle with a slightly concave flank.
                    tree = tree.max(tall * (1.0 - d).powf(1.15));
                }
            }
            (ground + tree, None)
        }
        Scenery::City => {
            let cell_w = [0.045, 0.065, 0.09, 0.13][layer];
            let c = (x / cell_w).floor() as i64;
            let left = c as f64 * cell_w;
            let gap = cell_w * (0.04 + 0.12 * hash01(s, c, 3) as f64);
            let local = x - left;
            if local < gap || local > cell_w - gap * 0.3 {
                return (0.008, None);
            }
            let h = hash01(s, c, 4);
            let tall = [0.09, 0.13, 0.15, 0.17][layer] * (0.35 + 1.3 * h * h);
            // Some towers have a narrower top storey.
            let setback = hash01(s, c, 5) < 0.3 && local > cell_w * 0.7;
            let height = if setback { tall * 0.82 } else { tall };
            let grid = [0.006, 0.008, 0.011, 0.015][layer];
            let b = Building { cell: c, local_x: (local - gap) as f32, height, grid };
            (height, Some(b))
        }
    }
}

/// A deterministic renderer of the world for one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub seed: u64,
}

impl World {
    pub fn new(seed: u64) -> World {
        World { seed }
    }

    /// Renders `state` into `out`, RGB8, `width × height × 3` bytes, row-major. With
    /// `parallel`, rows are spread over rayon's pool; the bytes are identical either way.
    pub fn render(&self, state: &SceneState, width: usize, height: usize, out: &mut [u8], parallel: bool) {
        assert_eq!(out.len(), width * height * 3, "frame buffer size");
        let look = Look::new(state);
        let columns = self.columns(state, &look, width, height);
        let row = |(y, line): (usize, &mut [u8])| self.render_row(state, &look, &columns, width, height, y, line);
        if parallel {
            out.par_chunks_mut(width * 3).enumerate().for_each(row);
        } else {
            out.chunks_mut(width * 3).enumerate().for_each(row);
        }
    }

    /// Renders `state` into a new RGB8 buffer.
    pub fn frame(&self, state: &SceneState, width: usize, height: usize) -> Vec<u8> {
        let mut out = vec![0u8; width * height * 3];
        self.render(state, width, height, &mut out, false);
        out
    }

    /// The land profile of every layer under every column: `[layer][x]`.
    fn columns(&self, s: &SceneState, look: &Look, width: usize, height: usize) -> Vec<Vec<Column>> {
        let hf = height as f32;
        let active: Vec<(Scenery, f32)> =
            Scenery::ALL.iter().map(|&sc| (sc, s.scenery.0[sc.index()])).filter(|(_, w)| *w > 1e-4).collect();
        // The sun's side decides which flanks are lit.
        let sun_side = if look.sun_pos.0 < 0.5 { -1.0 } else { 1.0 };
        (0..LAYERS)
            .map(|layer| {
                let screen_x = |x: usize| (x as f64 + 0.5 - width as f64 / 2.0) / height as f64;
                let world_x = |x: usize| s.camera_x * PARALLAX[layer] + screen_x(x);
                let step = 0.02;
                (0..width)
                    .map(|x| {
                        let wx = world_x(x);
                        let mut h = 0.0f32;
                        let mut colour = [0.0f32; 3];
                        let mut building = None;
                        let mut mountain = 0.0f32;
                        for &(sc, w) in &active {
                            let (hs, b) = land_height(self.seed, sc, layer, wx);
                            h += w * hs;
                            let mut c = LAND[sc.index()][layer];
                            match sc {
                                Scenery::City => {
                                    if let Some(b) = b {
                                        let v = 0.82 + 0.36 * hash01(self.seed, b.cell, layer as i64);
                                        c = scale3(c, v);
                                        if w > 0.5 {
                                            building = Some(b);
                                        }
                                    }
                                }
                                Scenery::Mountains => mountain = w,
                                _ => {}
                            }
                            colour = add3(colour, scale3(c, w));
                        }
                        // Slope shading: flanks facing the sun are brighter.
                        let around = |dx: f64| -> f32 {
                            active.iter().map(|&(sc, w)| w * land_height(self.seed, sc, layer, wx + dx).0).sum()
                        };
                        let slope = (around(step) - around(-step)) / (2.0 * step as f32);
                        let shade = 1.0 + (0.08 * slope * sun_side).clamp(-0.15, 0.15);
                        colour = scale3(colour, shade);
                        let cap = if mountain > 0.5 && layer < 2 {
                            let line = [0.26, 0.2][layer] + 0.04 * fbm1(self.seed ^ 0xCA9, wx * 4.0, 2);
                            (BASE[layer] - line) * hf
                        } else {
                            f32::MIN
                        };
                        // Far land stands in the sea: the water in front of it is not land.
                        let sea = s.scenery.0[Scenery::Ocean.index()];
                        let bottom = if layer + 1 < LAYERS && sea > 0.0 {
                            (BASE[layer] + 2.0 * (1.0 - sea)) * hf
                        } else {
                            f32::MAX
                        };
                        Column { top: (BASE[layer] - h) * hf, bottom, colour, cap, building }
                    })
                    .collect()
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn render_row(
        &self,
        s: &SceneState,
        look: &Look,
        columns: &[Vec<Column>],
        width: usize,
        height: usize,
        y: usize,
        line: &mut [u8],
    ) {
        let hf = height as f32;
        let v = (y as f32 + 0.5) / hf;
        let t = s.t;
        for x in 0..width {
            let u = (x as f32 + 0.5 - width as f32 / 2.0) / hf;
            let yf = y as f32 + 0.5;
            let land = (0..LAYERS).rev().find(|&l| yf >= columns[l][x].top && yf < columns[l][x].bottom);
            let mut c = match land {
                Some(l) => self.land(s, look, &columns[l][x], l, u, yf, hf),
                None if v < HORIZON => self.sky(s, look, u, v, x, width, hf),
                None => self.water(s, look, columns, u, v, x, width, yf, hf),
            };
            // Fog: thicker with depth, drifting in banks.
            if look.fog > 0.0 {
                let depth = match land {
                    Some(l) => FOG_DEPTH[l],
                    None if v < HORIZON => 1.0 - 0.2 * smoothstep(0.0, HORIZON, HORIZON - v),
                    None => 0.9,
                };
                let bank = fbm2(self.seed ^ 0xF06, (u as f64 + s.camera_x * 0.5) * 1.6 + t * 0.04, v as f64 * 3.0, 3);
                let amount = (look.fog * depth * (0.75 + 0.5 * bank)).min(0.97);
                c = lerp3(c, look.fog_colour, amount);
            }
            if look.rain > 0.0 {
                c = self.rain(s, look, c, u, v, hf);
            }
            if look.snow > 0.0 {
                c = self.snowflakes(s, look, c, u, v);
            }
            let px = &mut line[x * 3..x * 3 + 3];
            for k in 0..3 {
                px[k] = (c[k].clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn sky(&self, s: &SceneState, look: &Look, u: f32, v: f32, x: usize, width: usize, hf: f32) -> Rgb {
        let g = ((HORIZON - v) / HORIZON).clamp(0.0, 1.0).powf(0.6);
        let mut c = lerp3(look.horizon, look.zenith, g);
        if look.city_glow > 0.0 {
            c = add3(c, scale3([0.30, 0.17, 0.06], look.city_glow * (1.0 - g).powi(4)));
        }
        c = lerp3(c, look.overcast_sky, look.overcast);
        let sx = x as f32 / width as f32;
        let aspect = width as f32 / hf;
        // Sun: disc and glow, in screen-height units.
        if look.sun_visible > 0.0 {
            let d = (((sx - look.sun_pos.0) * aspect).powi(2) + (v - look.sun_pos.1).powi(2)).sqrt();
            let disc = smoothstep(0.04, 0.033, d);
            let glow = (-d / 0.09).exp() * 0.55 + (-d / 0.3).exp() * 0.25;
            c = lerp3(c, look.sun_colour, (disc + glow).min(1.0) * look.sun_visible);
        }
        if look.moon_visible > 0.0 {
            let dx = (sx - look.moon_pos.0) * aspect;
            let dy = v - look.moon_pos.1;
            let d = (dx * dx + dy * dy).sqrt();
            let craters = 0.82 + 0.18 * value2(self.seed ^ 0x300, dx as f64 * 90.0, dy as f64 * 90.0);
            let disc = smoothstep(0.03, 0.026, d);
            let glow = (-d / 0.07).exp() * 0.18;
            c = lerp3(c, scale3([0.92, 0.93, 0.98], craters), disc * look.moon_visible);
            c = add3(c, scale3([0.5, 0.55, 0.7], glow * look.moon_visible));
        }
        if look.stars > 0.0 {
            c = add3(c, scale3([1.0, 0.97, 0.9], self.star(s, u, v, hf) * look.stars * smoothstep(0.02, 0.2, g)));
        }
        // Clouds, drifting with the wind and a little with the camera.
        let n = fbm2(
            self.seed ^ 0xC10D,
            (u as f64 + s.camera_x * 0.08 + s.t * 0.012) * 2.2,
            v as f64 * 6.0 + s.t * 0.004,
            5,
        );
        let cover = look.cloud_cover;
        let density = smoothstep(1.0 - cover * 0.85, 1.25 - cover * 0.85, n) * smoothstep(0.0, 0.07, HORIZON - v);
        if density > 0.0 {
            let shade = 1.0 - 0.3 * smoothstep(0.45, 0.75, n);
            let lit = add3(scale3(look.cloud_colour, shade), scale3(look.sun_colour, 0.12 * look.sun_visible));
            c = lerp3(c, lit, density * 0.95);
        }
        c
    }

    /// Brightness of a star at this pixel (0 when none), twinkling.
    fn star(&self, s: &SceneState, u: f32, v: f32, hf: f32) -> f32 {
        let cell = 0.022f64;
        let sx = u as f64 + s.camera_x * 0.02;
        let sy = v as f64;
        let (i, j) = ((sx / cell).floor() as i64, (sy / cell).floor() as i64);
        let seed = self.seed ^ 0x57A2;
        if hash01(seed, i, j) > 0.3 {
            return 0.0;
        }
        let px = (i as f64 + 0.15 + 0.7 * hash01(seed ^ 1, i, j) as f64) * cell;
        let py = (j as f64 + 0.15 + 0.7 * hash01(seed ^ 2, i, j) as f64) * cell;
        let d_px = (((sx - px).powi(2) + (sy - py).powi(2)).sqrt() * hf as f64) as f32;
        let size = 0.55 + hf / 512.0;
        let core = (1.0 - d_px / size).max(0.0);
        if core == 0.0 {
            return 0.0;
        }
        let phase = hash01(seed ^ 3, i, j) * std::f32::consts::TAU;
        let speed = 1.5 + 3.5 * hash01(seed ^ 4, i, j);
        let twinkle = 0.5 + 0.5 * (s.t as f32 * speed + phase).sin();
        core * (0.35 + 0.65 * hash01(seed ^ 5, i, j)) * (0.35 + 0.65 * twinkle)
    }

    #[allow(clippy::too_many_arguments)]
    fn land(&self, s: &SceneState, look: &Look, col: &Column, layer: usize, u: f32, yf: f32, hf: f32) -> Rgb {
        let below = (yf - col.top) / hf;
        // Surface texture (grass, rock strata, sand ripples), fixed to the land as it pans.
        let wx = s.camera_x * PARALLAX[layer] + u as f64;
        let grain = value2(self.seed ^ 0x7E7 ^ layer as u64, wx * 45.0, (yf / hf) as f64 * 90.0);
        let mut c = scale3(col.colour, (1.0 - 0.25 * smoothstep(0.0, 0.25, below)) * (0.93 + 0.14 * grain));
        if yf < col.cap {
            c = [0.93, 0.94, 0.97];
        }
        c = mul3(c, look.light);
        if look.snow > 0.0 {
            // Snow on the ground: bright even at night, where it catches the moonlight.
            let settle = if below < 0.012 { 0.85 } else { 0.6 };
            let snow =
                mul3([0.90, 0.92, 0.96], [look.light[0].max(0.3), look.light[1].max(0.32), look.light[2].max(0.42)]);
            c = lerp3(c, snow, look.snow * settle);
        }
        c = lerp3(c, look.horizon, HAZE[layer] * (1.0 - 0.7 * look.night));
        if let Some(b) = col.building {
            c = self.window(s, look, c, &b, layer, yf, hf);
        }
        c
    }

    /// City windows: a grid on each building face, some lit at night, a few switching.
    #[allow(clippy::too_many_arguments)]
    fn window(&self, s: &SceneState, look: &Look, c: Rgb, b: &Building, layer: usize, yf: f32, hf: f32) -> Rgb {
        let up = BASE[layer] - yf / hf; // height above the ground line
        if up > b.height - b.grid || up < b.grid * 0.8 {
            return c;
        }
        let gx = b.local_x / b.grid;
        let gy = (b.height - up) / b.grid;
        let (fx, fy) = (gx.fract(), gy.fract());
        if !(0.25..0.72).contains(&fx) || !(0.2..0.7).contains(&fy) {
            return c;
        }
        let seed = self.seed ^ 0x3D0 ^ ((layer as u64) << 32);
        let (i, j) = (gx as i64, gy as i64);
        let id = b.cell.wrapping_mul(4096) + i;
        // A few windows switch on or off every few seconds.
        let epoch = ((s.t * 0.1) as i64).wrapping_add((hash(seed, id, j) % 97) as i64);
        let flicker = hash01(seed ^ 9, id, j) < 0.1;
        let lit_roll =
            if flicker { hash01(seed ^ 7, id, j.wrapping_add(epoch * 131)) } else { hash01(seed ^ 7, id, j) };
        let lit = lit_roll < 0.1 + 0.45 * look.night;
        if lit {
            let warm = [1.0, 0.82 + 0.1 * hash01(seed ^ 8, id, j), 0.45];
            lerp3(c, warm, 0.35 + 0.6 * look.night)
        } else {
            // Unlit glass reflects a little sky by day.
            lerp3(c, scale3(look.zenith, 0.7), 0.25 * (1.0 - look.night))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn water(
        &self,
        s: &SceneState,
        look: &Look,
        columns: &[Vec<Column>],
        u: f32,
        v: f32,
        x: usize,
        width: usize,
        yf: f32,
        hf: f32,
    ) -> Rgb {
        let d = (v - HORIZON).max(0.0005);
        // Ground-plane coordinates under this pixel: distance grows as 1/d.
        let z = 0.04 / d as f64;
        let wx = u as f64 * z * 6.0 + s.camera_x * 0.7;
        let wave = fbm2(self.seed ^ 0xAA7E, wx * 1.5 + s.t * 0.05, z * 5.0 - s.t * 0.35, 3);
        let ripple = 0.5 + 0.5 * (z * 14.0 - s.t * 1.7 + wave as f64 * 5.0).sin() as f32;
        let detail = smoothstep(0.0, 0.06, d);
        let fresnel = smoothstep(0.0, 0.3, d);
        let deep = mul3([0.05, 0.22, 0.32], look.light);
        let sky_reflection = lerp3(look.horizon, look.overcast_sky, look.overcast);
        let mut c = lerp3(sky_reflection, deep, 0.2 + 0.5 * fresnel);
        c = scale3(c, 1.0 + (ripple - 0.5) * 0.35 * detail);
        // Glitter under the sun (or the moon).
        let sx = x as f32 / width as f32;
        let (pos, colour, vis) = if look.sun_visible >= look.moon_visible {
            (look.sun_pos.0, look.sun_colour, look.sun_visible)
        } else {
            (look.moon_pos.0, [0.8, 0.85, 0.95], look.moon_visible * 0.6)
        };
        let beam = (-((sx - pos) * width as f32 / hf).abs() / (0.02 + d * 0.5)).exp();
        c = lerp3(c, colour, (beam * ripple.powi(3) * vis).min(1.0) * 0.85);
        // Foam where the waves meet the beach, washing in and out.
        let beach = columns[LAYERS - 1][x].top;
        let reach = hf * (0.004 + 0.008 * (0.5 + 0.5 * (s.t as f32 * 1.1 + u * 3.0).sin()));
        if beach - yf < reach && beach < hf {
            c = lerp3(c, scale3([0.95, 0.97, 1.0], look.light[1].max(0.1)), 0.85);
        }
        c
    }

    /// Rain: thin slanted streaks in two depth planes, falling fast.
    fn rain(&self, s: &SceneState, look: &Look, c: Rgb, u: f32, v: f32, hf: f32) -> Rgb {
        let mut c = c;
        for (p, (&density, &speed)) in [70.0f64, 34.0].iter().zip(&[2.4f64, 3.3]).enumerate() {
            let a = (u as f64 + s.camera_x * [0.5, 1.1][p]) + v as f64 * 0.16;
            let lane = (a * density).floor() as i64;
            let across = ((a * density).fract() - 0.5).abs() / density * hf as f64; // pixels from the lane's centre
            let width = [0.45, 0.7][p];
            if across > width {
                continue;
            }
            let spacing = [0.33, 0.45][p];
            let along =
                v as f64 / spacing - s.t * speed / spacing + hash01(self.seed ^ 0x8A1, lane, p as i64) as f64 * 9.0;
            let drop = along.floor() as i64;
            if hash01(self.seed ^ 0x8A2, lane, drop) > 0.55 {
                continue;
            }
            let len = [0.12, 0.2][p];
            if along.fract() > len {
                continue;
            }
            let alpha = (1.0 - across / width) as f32 * [0.35, 0.5][p] * look.rain;
            let streak = scale3([0.78, 0.82, 0.9], look.light[1].max(0.3));
            c = lerp3(c, streak, alpha);
        }
        c
    }

    /// Snow: soft flakes in two depth planes, falling and swaying.
    fn snowflakes(&self, s: &SceneState, look: &Look, c: Rgb, u: f32, v: f32) -> Rgb {
        let mut c = c;
        for p in 0..2 {
            let cell = [0.04f64, 0.075][p];
            let fall = [0.06, 0.11][p];
            let sx = u as f64 + s.camera_x * [0.45, 1.05][p];
            let sy = v as f64 - s.t * fall;
            let (i, j) = ((sx / cell).floor() as i64, (sy / cell).floor() as i64);
            let seed = self.seed ^ 0x5E0 ^ (p as u64) << 20;
            if hash01(seed, i, j) > 0.45 {
                continue;
            }
            let sway = 0.15
                * (s.t * (0.6 + hash01(seed ^ 1, i, j) as f64) + std::f64::consts::TAU * hash01(seed ^ 2, i, j) as f64)
                    .sin();
            let fx = (i as f64 + 0.3 + 0.4 * hash01(seed ^ 3, i, j) as f64 + sway) * cell;
            let fy = (j as f64 + 0.2 + 0.6 * hash01(seed ^ 4, i, j) as f64) * cell;
            let d = ((sx - fx).powi(2) + (sy - fy).powi(2)).sqrt() as f32;
            let r = [0.0055, 0.0095][p];
            let a = smoothstep(r, r * 0.35, d) * look.snow * [0.75, 0.95][p];
            if a > 0.0 {
                c = lerp3(c, scale3([0.96, 0.97, 1.0], look.light[1].max(0.35)), a);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Attributes, Camera, TimeOfDay, Timeline};

    fn attrs(time: TimeOfDay, weather: Weather, scenery: Scenery, camera: Camera) -> Attributes {
        Attributes { time, weather, scenery, camera }
    }

    fn frame(a: Attributes, t: f64, w: usize, h: usize) -> Vec<u8> {
        World::new(5).frame(&Timeline::new(a).state_at(t), w, h)
    }

    fn luma(rgb: &[u8]) -> Vec<f64> {
        rgb.chunks_exact(3).map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).collect()
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    fn std(v: &[f64]) -> f64 {
        let m = mean(v);
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn every_size_from_64_to_512_renders_a_picture() {
        for (w, h) in [(64, 64), (128, 128), (256, 144), (512, 512), (512, 288)] {
            for &s in Scenery::ALL {
                let y = luma(&frame(attrs(TimeOfDay::Day, Weather::Clear, s, Camera::Still), 3.0, w, h));
                assert!(std(&y) > 8.0, "{w}x{h} {s}: flat picture (std {:.1})", std(&y));
            }
        }
    }

    #[test]
    fn night_is_dark_with_stars_and_day_is_bright() {
        let a = attrs(TimeOfDay::Night, Weather::Clear, Scenery::Hills, Camera::Still);
        let night = luma(&frame(a, 1.0, 256, 256));
        let day = luma(&frame(Attributes { time: TimeOfDay::Day, ..a }, 1.0, 256, 256));
        assert!(mean(&night) < 35.0 && mean(&day) > 110.0, "night {:.0}, day {:.0}", mean(&night), mean(&day));
        // Stars: sky pixels much brighter than their row's median.
        let sky_rows = (0..100).map(|y| &night[y * 256..(y + 1) * 256]);
        let stars: usize = sky_rows
            .map(|row| {
                let mut sorted = row.to_vec();
                sorted.sort_by(f64::total_cmp);
                let median = sorted[128];
                row.iter().filter(|&&v| v > median + 40.0).count()
            })
            .sum();
        assert!(stars > 30, "only {stars} star pixels");
        // They twinkle: the same sky a second later differs only at the stars.
        let later = luma(&frame(a, 1.7, 256, 256));
        let changed = night.iter().zip(&later).filter(|(a, b)| (*a - *b).abs() > 10.0).count();
        assert!(changed > 10 && changed < 3000, "{changed} pixels changed");
    }

    #[test]
    fn weather_is_readable() {
        let clear = attrs(TimeOfDay::Day, Weather::Clear, Scenery::Mountains, Camera::Still);
        // Fog veils the land: edges and texture fade (local contrast, mean |∇| of luma).
        let detail = |rgb: Vec<u8>| {
            let y = luma(&rgb);
            let grads: Vec<f64> = (0..256 * 255).map(|i| (y[i] - y[i + 256]).abs() + (y[i] - y[i + 1]).abs()).collect();
            mean(&grads)
        };
        let base = detail(frame(clear, 2.0, 256, 256));
        let fog = detail(frame(Attributes { weather: Weather::Fog, ..clear }, 2.0, 256, 256));
        assert!(fog < 0.6 * base, "fog lowers local contrast: {fog:.2} vs {base:.2}");
        for w in [Weather::Rain, Weather::Snow] {
            // Precipitation moves: frames a fraction of a second apart differ all over.
            let a = frame(Attributes { weather: w, ..clear }, 2.0, 256, 256);
            let b = frame(Attributes { weather: w, ..clear }, 2.25, 256, 256);
            let moved = luma(&a).iter().zip(luma(&b)).filter(|(x, y)| (*x - y).abs() > 8.0).count();
            assert!(moved > 600, "{w}: only {moved} pixels moved");
        }
        // A clear still sky barely moves in the same quarter second (clouds drift slowly).
        let a = luma(&frame(clear, 2.0, 256, 256));
        let b = luma(&frame(clear, 2.25, 256, 256));
        let moved = a.iter().zip(&b).filter(|(x, y)| (*x - *y).abs() > 8.0).count();
        assert!(moved < 300, "{moved}");
    }

    #[test]
    fn lit_windows_appear_in_the_city_at_night() {
        let a = attrs(TimeOfDay::Night, Weather::Clear, Scenery::City, Camera::Still);
        let rgb = frame(a, 1.0, 256, 256);
        let warm = rgb.chunks_exact(3).filter(|p| p[0] > 120 && p[0] as i32 > p[2] as i32 + 50).count();
        assert!(warm > 150, "{warm} lit window pixels");
        let hills = frame(Attributes { scenery: Scenery::Hills, ..a }, 1.0, 256, 256);
        let warm_hills = hills.chunks_exact(3).filter(|p| p[0] > 120 && p[0] as i32 > p[2] as i32 + 50).count();
        assert!(warm_hills < 20);
    }

    /// Best horizontal shift (in pixels) of the bottom band of `b` relative to `a`.
    fn shift(a: &[u8], b: &[u8], w: usize, h: usize) -> i64 {
        let (la, lb) = (luma(a), luma(b));
        let rows = h * 85 / 100..h;
        (-40i64..=40)
            .min_by_key(|&s| {
                let mut err = 0.0;
                for y in rows.clone() {
                    for x in 48..w - 48 {
                        let xb = (x as i64 - s) as usize;
                        err += (la[y * w + x] - lb[y * w + xb]).abs();
                    }
                }
                (err * 100.0) as i64
            })
            .unwrap()
    }

    #[test]
    fn panning_moves_the_picture_with_parallax_and_never_repeats() {
        let (w, h) = (256, 128);
        let a = attrs(TimeOfDay::Day, Weather::Clear, Scenery::Forest, Camera::PanRight);
        let tl = Timeline::new(a);
        let world = World::new(9);
        // Panning right moves the nearest land left by PAN_SPEED screen heights per second.
        let f0 = world.frame(&tl.state_at(10.0), w, h);
        let f1 = world.frame(&tl.state_at(10.5), w, h);
        let expected = (crate::world::PAN_SPEED * 0.5 * h as f64).round() as i64;
        assert!((shift(&f0, &f1, w, h) - expected).abs() <= 1, "{} vs {expected}", shift(&f0, &f1, w, h));
        let left = Timeline::new(Attributes { camera: Camera::PanLeft, ..a });
        let g0 = world.frame(&left.state_at(10.0), w, h);
        let g1 = world.frame(&left.state_at(10.5), w, h);
        assert!((shift(&g0, &g1, w, h) + expected).abs() <= 1);
        // Over a minute of panning no frame repeats the first.
        let first = luma(&f0);
        for s in 1..=60 {
            let later = luma(&world.frame(&tl.state_at(10.0 + s as f64), w, h));
            let diff = mean(&first.iter().zip(&later).map(|(x, y)| (x - y).abs()).collect::<Vec<_>>());
            assert!(diff > 3.0, "frame at +{s} s looks like the first (mean diff {diff:.2})");
        }
    }
}
