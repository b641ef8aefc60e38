//! One record per instance: everything the core keeps of it, so that forgetting an instance
//! is dropping its record (its detector state, its recovery state and the pids of its live
//! processes in it, each in one place; the pid table beside it and the policy's restart slots,
//! incident and index of the instances it heard of only name it, and [`super::Watch::forget`]
//! tells the policy).
//!
//! The policy's calls are lent the records as their [`policy::Table`]: a record is its
//! instance's recovery state's holder (`AsRef`/`AsMut`), made (as root's) when the policy
//! hears first of an instance.

use std::collections::{BTreeMap, BTreeSet};

use crate::detect::{self, EpisodeEnd, MonoNs};
use crate::instance::{InstanceId, Placement};
use crate::policy;

use super::status::LastSeen;

/// What the core knows of one instance (kept after its processes exit, until forgotten).
#[derive(Debug)]
pub(super) struct Record {
    /// The user whose process first made it (for the per-user share,
    /// [`super::MAX_INSTANCES_PER_USER`]; unknown: root's).
    pub owner: u32,
    /// Its live processes (their [`crate::instance::Found`] in the pid table).
    pub pids: BTreeSet<u32>,
    /// Without a live process since then: forgotten [`super::FORGET_AFTER`] later once at
    /// rest (or earlier, longest idle first, to make room for a new instance).
    pub idle_since: Option<MonoNs>,
    /// The executable of its newest process.
    pub binary: Option<String>,
    /// Where its newest process lives.
    pub placement: Option<Placement>,
    /// Its latest API answer.
    pub last_seen: Option<LastSeen>,
    /// A resumed episode too old to act on: its next API answer decides.
    pub recheck: bool,
    /// The id of its latest episode (actions that end after it closed name it).
    pub last_episode: Option<String>,
    /// Why its latest restart failed or was refused (until one succeeds).
    pub restart_error: Option<String>,
    /// Its recoveries since the daemon started (what `status` shows of its past).
    pub recoveries: Recoveries,
    /// What the detector knows of it: its 401 window, sessions, throttles.
    pub detection: detect::Instance,
    /// Where it stands in recovery (the policy's calls are given the records).
    pub recovery: policy::Instance,
}

impl Record {
    /// A record of instance `id`, first seen through a process of `owner`.
    pub fn new(id: &InstanceId, owner: u32) -> Self {
        Self {
            owner,
            pids: BTreeSet::new(),
            idle_since: None,
            binary: None,
            placement: None,
            last_seen: None,
            recheck: false,
            last_episode: None,
            restart_error: None,
            recoveries: Recoveries::default(),
            detection: detect::Instance::new(id.clone()),
            recovery: policy::Instance::default(),
        }
    }

    /// `id`'s record in `records`, made (as root's) if it has none.
    pub fn of<'a>(records: &'a mut BTreeMap<InstanceId, Self>, id: &InstanceId) -> &'a mut Self {
        records.entry(id.clone()).or_insert_with(|| id.into())
    }

    /// Whether it has a live process.
    pub fn live(&self) -> bool {
        !self.pids.is_empty()
    }
}

/// A record made by the policy for an instance it hears of first (as root's).
impl From<&InstanceId> for Record {
    fn from(id: &InstanceId) -> Self {
        Self::new(id, 0)
    }
}

impl AsRef<policy::Instance> for Record {
    fn as_ref(&self) -> &policy::Instance {
        &self.recovery
    }
}

impl AsMut<policy::Instance> for Record {
    fn as_mut(&mut self) -> &mut policy::Instance {
        &mut self.recovery
    }
}

/// An instance's recoveries since the daemon started.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Recoveries {
    /// Restarts made (accepted by the supervisor), healed or not.
    pub restarts: u32,
    /// The latest recovery: when (wall ms) and how.
    pub last: Option<(u64, EpisodeEnd)>,
}
