//! What `claude-watch status` shows; the types live with the core that fills them in
//! ([`crate::watch::status`]).

pub use crate::watch::status::{CaptureView, FleetStatus, IncidentStatus, InstanceView, Snapshot};
