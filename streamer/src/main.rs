//! `endless`: the service binary.

use anyhow::Result;
use clap::{Parser, Subcommand};
use endless_streamer::config::{Config, Override};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "endless", version, about = "endless: never-ending generated video, live")]
struct Cli {
    /// Configuration file; without it the built-in defaults (the same as the shipped
    /// config.toml) are used.
    #[arg(long, global = true, env = "ENDLESS_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides any setting: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Overrides server.listen.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Overrides sessions.source (world or model).
    #[arg(long, global = true)]
    source: Option<String>,
    /// Overrides sessions.size (WIDTHxHEIGHT).
    #[arg(long, global = true)]
    size: Option<String>,
    /// Overrides sessions.fps.
    #[arg(long, global = true)]
    fps: Option<u32>,
    /// Overrides recording.dir.
    #[arg(long, global = true)]
    recordings_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the player, the API and the streams until SIGINT or SIGTERM.
    Serve,
    /// Checks the configuration and prints the settings in effect, as TOML.
    Config,
    /// Measures the model source: per-session generation rate and real-time factor for 1, 2,
    /// 4, … concurrent sessions on one device until real time breaks, prompt-switch latency on
    /// a session played in real time, and (when asked) resident memory over long streaming;
    /// prints tables and writes JSON. Uses the [model] and [sessions] settings.
    Bench {
        /// Seconds of video each session generates per measurement.
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        /// Most concurrent sessions tried.
        #[arg(long, default_value_t = 64)]
        max_sessions: usize,
        /// JSON output.
        #[arg(long, default_value = "bench.json")]
        json: PathBuf,
        /// Keep doubling the sessions after real time breaks (up to --max-sessions).
        #[arg(long)]
        past_realtime: bool,
        /// Prompt switches to time on one session played in real time (0: none).
        #[arg(long, default_value_t = 5)]
        switches: usize,
        /// Minutes of real-time streaming at which to read resident memory, e.g. 1,10,60
        /// (none by default: it takes that long).
        #[arg(long, value_delimiter = ',')]
        memory_minutes: Vec<f64>,
        /// Sessions streaming during the memory measurement.
        #[arg(long, default_value_t = 1)]
        memory_sessions: usize,
    },
    /// Regenerates a recording from its JSON timeline into an MP4 and checks the frames
    /// against the recording's digest (exit status 1 when they differ).
    Replay {
        /// The recording's timeline, `<name>.json` beside the MP4.
        timeline: PathBuf,
        /// The MP4 to write.
        #[arg(long)]
        out: PathBuf,
    },
}

impl Cli {
    /// The overrides in the order they apply: named flags, then every --set.
    fn overrides(&self) -> Result<Vec<Override>> {
        let mut out = Vec::new();
        let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
        if let Some(v) = &self.listen {
            out.push(Override::named("--listen", "server.listen", quoted(v)));
        }
        if let Some(v) = &self.source {
            out.push(Override::named("--source", "sessions.source", quoted(v)));
        }
        if let Some(v) = &self.size {
            out.push(Override::named("--size", "sessions.size", quoted(v)));
        }
        if let Some(v) = self.fps {
            out.push(Override::named("--fps", "sessions.fps", v));
        }
        if let Some(v) = &self.recordings_dir {
            out.push(Override::named("--recordings-dir", "recording.dir", quoted(&v.display().to_string())));
        }
        for s in &self.set {
            out.push(Override::from_set(s)?);
        }
        Ok(out)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let config = match cli.overrides().and_then(|o| Ok(Config::load(cli.config.as_deref(), &o)?)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config).expect("a Config always serialises"));
            ExitCode::SUCCESS
        }
        Command::Bench { seconds, max_sessions, json, past_realtime, switches, memory_minutes, memory_sessions } => {
            let options = endless_streamer::bench::BenchOptions {
                seconds,
                max_sessions,
                past_realtime,
                switches,
                memory_minutes,
                memory_sessions,
            };
            match endless_streamer::bench::run(&config, &options) {
                Ok(report) => {
                    match std::fs::write(&json, serde_json::to_string_pretty(&report).expect("the report serialises")) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: writing {}: {e}", json.display());
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay { timeline, out } => match endless_streamer::replay::replay(&timeline, &out, &config) {
            Ok(r) => {
                let verdict = match r.exact() {
                    Some(true) => "bit-exact: the frames equal the recorded ones",
                    Some(false) => "NOT exact: the frames differ from the recorded ones",
                    None => "the recording has no digest (not finalised): nothing to check against",
                };
                println!(
                    "replayed {} frames from frame {} into {} ({}); {verdict}",
                    r.frames,
                    r.start_frame,
                    out.display(),
                    r.digest
                );
                if r.exact() == Some(false) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let running = endless_streamer::server::start(config, shutdown.clone()).await?;
        println!("endless is serving on http://{}", running.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut done = running.done;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            _ = term.recv() => tracing::info!("SIGTERM"),
            r = &mut done => return r?,
        }
        // Recordings are finalised within the configured grace time, then the server stops.
        shutdown.cancel();
        done.await?
    })
}
