//! The service configuration: `config.toml`, every setting documented there, overridden by
//! command-line flags.
//!
//! Unknown keys are errors (`deny_unknown_fields` at every level), and every error names the
//! key and the line of the file it is on, or the flag that set it.

use endless_model::media::Size;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration. `Config::default()` is what the shipped `config.toml` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub sessions: Sessions,
    pub encoder: Encoder,
    pub recording: Recording,
    pub model: Model,
}

/// HTTP and WebSocket server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder of the browser player, served at `/`.
    pub web_dir: PathBuf,
    /// Largest WebSocket message accepted from a client, in bytes.
    pub max_message_bytes: Bounded<256, 16_777_216>,
    /// Seconds a graceful shutdown may take (recordings are finalised in it).
    pub shutdown_grace_secs: Bounded<1, 600>,
    /// Key a client must present to create a session; empty: anyone may.
    pub api_key: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_dir: PathBuf::from("web"),
            max_message_bytes: Bounded(65_536),
            shutdown_grace_secs: Bounded(10),
            api_key: String::new(),
        }
    }
}

/// Where frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The procedural world: a real preview that needs no model.
    World,
    /// The latent video diffusion model.
    Model,
}

/// Sessions and generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sessions {
    pub source: Source,
    /// Live sessions at most; creating one more is refused.
    pub max_sessions: Bounded<1, 1024>,
    /// Frame size of new sessions, WIDTHxHEIGHT (even sides, 16 to 4096).
    pub size: Size,
    /// Frames per second of new sessions.
    pub fps: Bounded<1, 120>,
    /// Frames generated per chunk.
    pub chunk_frames: Bounded<1, 256>,
    /// Chunks generation may run ahead of playback.
    pub buffer_chunks: Bounded<1, 64>,
    /// Seconds a session with no viewer lives on before it is closed.
    pub idle_timeout_secs: Bounded<1, 86_400>,
    /// Longest prompt accepted, in characters.
    pub max_prompt_chars: Bounded<1, 10_000>,
    /// Default seconds a steer takes to blend into the new prompt.
    pub transition_secs: Bounded<0, 60>,
    /// Shortest interval between two steers of one session, in milliseconds.
    pub steer_min_interval_ms: Bounded<0, 60_000>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            source: Source::Model,
            max_sessions: Bounded(16),
            size: Size::new(256, 256),
            fps: Bounded(12),
            chunk_frames: Bounded(12),
            buffer_chunks: Bounded(2),
            idle_timeout_secs: Bounded(60),
            max_prompt_chars: Bounded(500),
            transition_secs: Bounded(2),
            steer_min_interval_ms: Bounded(250),
        }
    }
}

/// x264 speed presets, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeedPreset {
    Ultrafast,
    Superfast,
    Veryfast,
    Faster,
    Fast,
    Medium,
}

/// H.264 encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encoder {
    pub speed_preset: SpeedPreset,
    /// Seconds between keyframes at most (a late joiner waits at most this long, less when a
    /// key unit is forced on join).
    pub keyframe_interval_secs: Bounded<1, 10>,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: Bounded<100, 100_000>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { speed_preset: SpeedPreset::Veryfast, keyframe_interval_secs: Bounded(2), bitrate_kbps: Bounded(2500) }
    }
}

/// Recordings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recording {
    /// Folder the MP4 files and their JSON timelines go to.
    pub dir: PathBuf,
    /// Longest recording, in seconds; a recording is stopped and finalised there.
    pub max_secs: Bounded<1, 86_400>,
    /// Disk the recordings folder may use, in MiB; starting a recording beyond it fails.
    pub quota_mib: Bounded<1, 10_485_760>,
}

impl Default for Recording {
    fn default() -> Self {
        Recording { dir: PathBuf::from("recordings"), max_secs: Bounded(3600), quota_mib: Bounded(4096) }
    }
}

/// How a model chunk uses the frames before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtendMode {
    /// VDM's replacement: past frames only as noised latents.
    Replacement,
    /// Past frames also clean in the context channels (W.A.L.T).
    Conditioned,
    /// Conditioned plus reconstruction guidance (Ho et al. 2022).
    Guided,
}

/// The model source (`sessions.source = "model"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Model {
    /// Pipeline folder (what `endless-model train` writes), or a folder of tiers (`cpu/`,
    /// `gpu/`) of which the device picks one; the pipeline's size and fps are the streams'.
    pub dir: PathBuf,
    /// all-MiniLM-L6-v2 folder; empty: $ENDLESS_MINILM_DIR or ~/.cache/endless/minilm.
    pub text_dir: PathBuf,
    /// "auto" (the GPU if one answers, else the CPU), "cpu" or "cuda".
    pub device: endless_model::device::DeviceKind,
    /// DDIM steps per chunk at full quality.
    pub steps: Bounded<1, 1000>,
    /// Fewest steps the scheduler lowers a chunk to under overload.
    pub min_steps: Bounded<1, 1000>,
    pub mode: ExtendMode,
    /// Reconstruction-guidance weight (mode "guided"), in tenths.
    pub guidance_weight_tenths: Bounded<0, 1000>,
    /// Classifier-free guidance scale of the text, in tenths (10: none).
    pub text_guidance_tenths: Bounded<0, 1000>,
    /// Classifier-free guidance scale of the past frames, in tenths (10: none).
    pub context_guidance_tenths: Bounded<0, 1000>,
    /// What each denoising step feeds back as self-conditioning: "per-pass", "guided" or "off".
    pub self_conditioning: endless_model::pipeline::SelfConditioning,
    /// Past latent frames each chunk is conditioned on.
    pub context_frames: Bounded<1, 64>,
    /// How many of them are long-range anchors once the stream has some.
    pub anchors: Bounded<0, 63>,
    /// Latent frames between anchor candidates.
    pub anchor_every: Bounded<1, 4096>,
    /// Most chunks of different sessions denoised in one batch.
    pub max_batch: Bounded<1, 256>,
    /// On the CPU, decode on a thread of its own while the next batch is denoised.
    pub decode_thread: bool,
    /// Threads of that decoder's own pool; 0: one per core.
    pub decode_threads: Bounded<0, 64>,
    /// On the CPU, run the guided passes of each denoising step side by side.
    pub parallel_passes: bool,
    /// Use the EMA weights when the folder has them.
    pub ema: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            dir: PathBuf::from("models"),
            text_dir: PathBuf::new(),
            device: endless_model::device::DeviceKind::Auto,
            steps: Bounded(4),
            min_steps: Bounded(2),
            mode: ExtendMode::Conditioned,
            guidance_weight_tenths: Bounded(20),
            text_guidance_tenths: Bounded(80),
            context_guidance_tenths: Bounded(10),
            self_conditioning: endless_model::pipeline::SelfConditioning::PerPass,
            context_frames: Bounded(2),
            anchors: Bounded(1),
            anchor_every: Bounded(8),
            max_batch: Bounded(8),
            decode_thread: true,
            decode_threads: Bounded(0),
            parallel_passes: true,
            ema: true,
        }
    }
}

/// A whole number in `MIN..=MAX`; anything else fails to load, naming the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Bounded<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> Bounded<MIN, MAX> {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl<const MIN: i64, const MAX: i64> TryFrom<i64> for Bounded<MIN, MAX> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&v) { Ok(Bounded(v)) } else { Err(format!("{v} is out of range {MIN}..={MAX}")) }
    }
}

impl<const MIN: i64, const MAX: i64> From<Bounded<MIN, MAX>> for i64 {
    fn from(b: Bounded<MIN, MAX>) -> i64 {
        b.0
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: `{key}`: {message}")]
    File { path: String, line: usize, key: String, message: String },
    #[error("{flag}: `{key}`: {message}")]
    Flag { flag: String, key: String, message: String },
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted path of the key an error is about, e.g. `sessions.fps`.
fn key_of<E>(e: &serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    if path == "." { "(top level)".into() } else { path }
}

impl Config {
    /// Parses a configuration file's text. `path` only names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let located = |key: String, e: toml::de::Error| ConfigError::File {
            path: path.to_string(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            key,
            message: e.message().trim().to_string(),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| located("(syntax)".into(), e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = key_of(&e);
            located(key, e.into_inner())
        })
    }

    /// Loads `path` (or the defaults when `None`), then applies `overrides` in order. Each
    /// override is `(flag, "section.key", toml value)`; a value that is not valid TOML is
    /// taken as a string, so `--set server.web_dir=web` works without quotes.
    pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
                Config::parse(&text, &p.display().to_string())?
            }
            None => Config::default(),
        };
        for o in overrides {
            config = config.with(o)?;
        }
        Ok(config)
    }

    /// This configuration with one override applied.
    pub fn with(&self, o: &Override) -> Result<Config, ConfigError> {
        let flag_error = |message: String| ConfigError::Flag { flag: o.flag.clone(), key: o.key.clone(), message };
        let mut table = toml::Table::try_from(self).expect("a Config always serialises to a table");
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", o.value))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(o.value.clone()));
        let parts: Vec<&str> = o.key.split('.').collect();
        let (last, sections) = parts.split_last().expect("split always yields one part");
        let mut at = &mut table;
        for s in sections {
            at = match at.get_mut(*s) {
                Some(toml::Value::Table(t)) => t,
                _ => return Err(flag_error("no such section".into())),
            };
        }
        if !at.contains_key(*last) {
            return Err(flag_error("no such key".into()));
        }
        at.insert(last.to_string(), value);
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| flag_error(e.into_inner().message().trim().to_string()))
    }
}

/// One command-line override of a setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The flag as the user wrote it, for error messages.
    pub flag: String,
    /// Dotted key, `section.key`.
    pub key: String,
    /// The value as TOML (or a bare string).
    pub value: String,
}

impl Override {
    /// Parses `--set section.key=value`.
    pub fn from_set(arg: &str) -> Result<Override, ConfigError> {
        let (key, value) = arg.split_once('=').ok_or_else(|| ConfigError::Flag {
            flag: format!("--set {arg}"),
            key: arg.to_string(),
            message: "expected --set section.key=value".into(),
        })?;
        Ok(Override { flag: format!("--set {arg}"), key: key.trim().to_string(), value: value.trim().to_string() })
    }

    /// A named flag that sets one key.
    pub fn named(flag: &str, key: &str, value: impl ToString) -> Override {
        let value = value.to_string();
        Override { flag: format!("{flag} {value}"), key: key.to_string(), value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../config.toml");

    #[test]
    fn the_shipped_config_is_the_default() {
        assert_eq!(Config::parse(SHIPPED, "config.toml").unwrap(), Config::default());
    }

    #[test]
    fn every_default_setting_is_documented_in_the_shipped_file() {
        // Each key of the defaults appears in config.toml with a comment line above it.
        let table = toml::Table::try_from(Config::default()).unwrap();
        let lines: Vec<&str> = SHIPPED.lines().collect();
        for (section, keys) in &table {
            assert!(SHIPPED.contains(&format!("[{section}]")), "[{section}] missing");
            for key in keys.as_table().unwrap().keys() {
                let at = lines
                    .iter()
                    .position(|l| l.starts_with(&format!("{key} =")))
                    .unwrap_or_else(|| panic!("{section}.{key} is not in config.toml"));
                assert!(lines[at - 1].starts_with('#'), "{section}.{key} has no comment above it");
            }
        }
    }

    #[test]
    fn an_unknown_key_names_the_key_and_line() {
        let text = "[server]\nlisten = \"127.0.0.1:9000\"\n\n[sessions]\nfsp = 10\n";
        let e = Config::parse(text, "my.toml").unwrap_err().to_string();
        assert!(e.starts_with("my.toml:5: `sessions"), "{e}");
        assert!(e.contains("fsp"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_key_and_line() {
        let text = "# comment\n[sessions]\nsize = \"256x256\"\nfps = 0\n";
        let e = Config::parse(text, "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:4: `sessions.fps`"), "{e}");
        assert!(e.contains("out of range 1..=120"), "{e}");
        let e = Config::parse("[sessions]\n\nsize = \"255x100\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:3: `sessions.size`") && e.contains("even"), "{e}");
        let e = Config::parse("[server]\nlisten = \"nowhere\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:2: `server.listen`"), "{e}");
        let e = Config::parse("[encoder]\nspeed_preset = \"warp\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:2: `encoder.speed_preset`") && e.contains("veryfast"), "{e}");
        let e = Config::parse("[sessions\n", "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml:1: `(syntax)`"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_name_themselves_in_errors() {
        let base = Config::parse("[sessions]\nfps = 10\n", "c.toml").unwrap();
        assert_eq!(base.sessions.fps.get(), 10);
        let c = base.with(&Override::from_set("sessions.fps=24").unwrap()).unwrap();
        assert_eq!(c.sessions.fps.get(), 24);
        let c = c.with(&Override::named("--listen", "server.listen", "0.0.0.0:9999")).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        let c = c.with(&Override::from_set("recording.dir=/tmp/rec").unwrap()).unwrap();
        assert_eq!(c.recording.dir, PathBuf::from("/tmp/rec"));
        let e = c.with(&Override::from_set("sessions.fps=500").unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("--set sessions.fps=500: `sessions.fps`") && e.contains("1..=120"), "{e}");
        let e = c.with(&Override::from_set("sessions.nope=1").unwrap()).unwrap_err().to_string();
        assert!(e.contains("no such key"), "{e}");
        assert!(Override::from_set("novalue").is_err());
    }
}
