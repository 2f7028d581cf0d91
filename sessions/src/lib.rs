//! Sessions of endless: frame sources, the playout clock and the registry of live sessions.
//! Session logic knows nothing of sockets or codecs: it hands real-time RGB frames to
//! whoever encodes them.

pub mod id;
pub mod model;
pub mod registry;
pub mod session;
pub mod source;

pub use id::{OwnerToken, SessionId};
pub use model::{ModelFactory, ModelSettings, ModelSource, Scheduler, SchedulerStats, replay_source};
pub use registry::{CreateRequest, Registry, RegistryError, SourceFactory, WorldFactory};
pub use session::{Frame, Output, Session, SessionError, SessionInfo, Settings, ViewerGuard};
pub use source::{FrameSource, PromptEvent, SourceError, WorldSource};
