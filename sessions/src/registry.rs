//! All live sessions: creation within limits, lookup, fork, close and idle eviction.

use crate::id::{OwnerToken, SessionId};
use crate::session::{Session, SessionError, SessionInfo, Settings};
use crate::source::{FrameSource, PromptEvent, SourceError, WorldSource};
use dashmap::DashMap;
use endless_model::media::Size;
use std::sync::Arc;
use std::time::Duration;

/// What a client asks for when it creates a session.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub prompt: String,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    pub size: Size,
    pub fps: f64,
}

/// Why the registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("the server is full ({0} live sessions): try again later")]
    Full(usize),
    #[error("no such session")]
    NotFound,
    #[error("fps must be between 1 and 120")]
    BadFps,
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Makes the frame source of a new session.
pub trait SourceFactory: Send + Sync {
    fn create(&self, prompt: &str, seed: u64, size: Size, fps: f64) -> Result<Box<dyn FrameSource>, SourceError>;
}

/// The procedural world for every session.
pub struct WorldFactory;

impl SourceFactory for WorldFactory {
    fn create(&self, prompt: &str, seed: u64, size: Size, fps: f64) -> Result<Box<dyn FrameSource>, SourceError> {
        if endless_model::world::parse(prompt).is_empty() {
            return Err(SourceError::EmptyPrompt);
        }
        Ok(Box::new(WorldSource::new(prompt, seed, size, fps)))
    }
}

/// Every live session.
pub struct Registry {
    sessions: DashMap<SessionId, Arc<Session>>,
    factory: Box<dyn SourceFactory>,
    settings: Settings,
    max_sessions: usize,
    idle_timeout: Duration,
}

impl Registry {
    pub fn new(
        factory: Box<dyn SourceFactory>,
        settings: Settings,
        max_sessions: usize,
        idle_timeout: Duration,
    ) -> Self {
        Registry { sessions: DashMap::new(), factory, settings, max_sessions, idle_timeout }
    }

    fn check_room(&self) -> Result<(), RegistryError> {
        if self.sessions.len() >= self.max_sessions { Err(RegistryError::Full(self.max_sessions)) } else { Ok(()) }
    }

    fn insert(&self, session: Arc<Session>) {
        tracing::info!(session = %session.id, prompt = %session.prompt(), "session started");
        self.sessions.insert(session.id.clone(), session);
    }

    /// Starts a new session. Returns it with its owner token.
    pub fn create(&self, req: &CreateRequest) -> Result<(Arc<Session>, OwnerToken), RegistryError> {
        self.check_room()?;
        let prompt = req.prompt.trim();
        if prompt.is_empty() {
            return Err(SessionError::EmptyPrompt.into());
        }
        if prompt.chars().count() > self.settings.max_prompt_chars {
            return Err(SessionError::PromptTooLong(self.settings.max_prompt_chars).into());
        }
        if !(1.0..=120.0).contains(&req.fps) {
            return Err(RegistryError::BadFps);
        }
        let seed = req.seed.unwrap_or_else(|| getrandom::u64().expect("the OS random source is available") >> 11);
        let source = self.factory.create(prompt, seed, req.size, req.fps).map_err(SessionError::from)?;
        let history = vec![PromptEvent { frame: 0, prompt: prompt.to_string(), transition_secs: 0.0 }];
        let (session, token) = Session::start(source, prompt, seed, self.settings.clone(), history);
        self.insert(session.clone());
        Ok((session, token))
    }

    /// A new independent session continuing from what `id` shows now (owner only).
    pub fn fork(&self, id: &SessionId, token: &str) -> Result<(Arc<Session>, OwnerToken), RegistryError> {
        let parent = self.get(id)?;
        self.check_room()?;
        let (source, prompt, history) = parent.fork_source(token)?;
        let (session, token) = Session::start(source, &prompt, parent.seed, self.settings.clone(), history);
        tracing::info!(session = %session.id, parent = %parent.id, "session forked");
        self.insert(session.clone());
        Ok((session, token))
    }

    pub fn get(&self, id: &SessionId) -> Result<Arc<Session>, RegistryError> {
        self.sessions.get(id).map(|s| s.clone()).ok_or(RegistryError::NotFound)
    }

    /// Closes `id` (owner only).
    pub fn close(&self, id: &SessionId, token: &str) -> Result<(), RegistryError> {
        let session = self.get(id)?;
        if !session.is_owner(token) {
            return Err(SessionError::NotOwner.into());
        }
        self.remove(id);
        Ok(())
    }

    fn remove(&self, id: &SessionId) {
        if let Some((_, s)) = self.sessions.remove(id) {
            s.close();
            tracing::info!(session = %id, "session closed");
        }
    }

    /// Closes every session idle (no viewer, no recording) for longer than the timeout.
    /// Returns the ids closed.
    pub fn evict_idle(&self) -> Vec<SessionId> {
        let idle: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|s| s.idle_for().is_some_and(|d| d > self.idle_timeout))
            .map(|s| s.id.clone())
            .collect();
        for id in &idle {
            tracing::info!(session = %id, "evicting idle session");
            self.remove(id);
        }
        idle
    }

    /// Snapshots of every live session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.sessions.iter().map(|s| s.info()).collect();
        all.sort_by(|a, b| b.age_secs.total_cmp(&a.age_secs));
        all
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        let ids: Vec<SessionId> = self.sessions.iter().map(|s| s.id.clone()).collect();
        for id in ids {
            self.remove(&id);
        }
    }
}
