//! Finding the claude processes on the host and what to attach for each.
//!
//! A full `/proc` scan at start, then one check per exec the kernel reports. A process runs
//! Claude Code when its executable is named so (a fast path: `claude`, the native installer's
//! `versions/<version>`, npm's `claude-code/cli.js`) or when the file itself says so
//! ([`content`]): npm's `bin/claude.exe`, an Agent SDK's bundled build, a renamed copy. The
//! verdict on a file is cached per (device, inode, size, mtime), so an exec of a known file
//! costs a `stat` and no read, and an unknown one costs about 16 KiB of bounded reads, once.
//!
//! A native claude binary is attached once per file (inode), which covers every process running
//! it, started now or later; a `cli.js` run by node (or bun) is attached per process, in every
//! TLS library that process maps (a distro node links the shared `libssl.so.3`), so the other
//! node programs on the host never hit a probe. Instances in a Docker or Podman container are
//! named after it, with the name the engine reports ([`engine`]), and only when the engine
//! vouches for the process: its cgroup must lie within the container's as the cgroup of the
//! engine's main process of the container shows it ([`instance::container_member`]). A process
//! in a cgroup that only names the container (a `docker-<a real id>.scope` under a unit
//! delegated to a user) is watched per process, as `pid:N`.
//!
//! The files that say what a process is are chosen by whoever started it (a script argument
//! can name a FIFO, a terminal, a device, a file on a FUSE mount): they are opened only through
//! [`crate::untrusted`], resolved where the process sees them (`/proc/<pid>/root`, its working
//! directory), and in the daemon never on its event loop. There discovery runs with
//! [`Discovery::deferring_looks`]: a process whose verdict needs a read (a script, an
//! executable not judged before, a background worker's session file) or whose container
//! needs the engine's name is not judged at once; a [`Look`] is queued instead, taken by the daemon ([`Discovery::take_looks`]) and run
//! on a blocking thread ([`Look::run`]), and its answer ([`Discovery::learn`]) names the
//! processes to look at again. Without it (`trace`, `config check`, tests) looks run in place.

pub mod content;
pub mod engine;
pub mod image;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claude_watch_core::instance::table::{PidTable, Standing};
use claude_watch_core::schedule::rescan::Rescans;

use tracing::{debug, warn};

use crate::capture::{CaptureError, FileId, Target, targets};
use crate::instance::bg::{self, Role};
use crate::instance::{
    self, BgSession, ClaudeKind, Container, InstanceId, MatchRule, Placement, ProcessInfo,
};
use crate::time::{MonoNs, mono_now_ns};
use crate::untrusted::{self, Identity, Limits, Resolve};
use claude_ebpf_common::{ImageKey, verdict};

pub use claude_watch_core::instance::Found;
pub use content::ClaudeFile;
pub use image::Exec;

/// How far up the parent chain to look for an enclosing claude.
const MAX_ANCESTRY: usize = 16;
/// Files whose verdict is remembered (oldest forgotten first).
const VERDICTS_KEPT: usize = 8192;
/// Unclaimed background spares looked at again (a few per user running `claude --bg`).
const SPARES_KEPT: usize = 256;
/// Containers whose name is remembered.
const CONTAINERS_KEPT: usize = 1024;
/// Instances whose owner is remembered (names a process chooses: rules without a uid, pm2 and
/// supervisord programs, background sessions).
const OWNERS_KEPT: usize = 4096;
/// Processes whose last look is remembered (each answer is for one exec of one process, so a
/// pid reused or an exec again is looked at anew).
const ANSWERS_KEPT: usize = 16_384;

/// Judged executables queued for the exec filter between two takes (more wait for their next
/// exec).
const JUDGED_QUEUED: usize = 1024;
/// How long what a look read of a session file answers for that worker (a spare is looked at
/// again after it, until a session claims it).
const SESSION_FRESH: Duration = Duration::from_secs(1);
/// How long reading a script's head or an executable's module graph may take.
const READ_BUDGET: Duration = Duration::from_secs(2);

/// A bounded map that forgets its oldest entries first.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Verdicts per file and the way it was read (a file is a script or an executable), shared
/// with the threads that run looks.
#[derive(Debug)]
struct Verdicts {
    map: Bounded<(Identity, ClaudeKind), Option<ClaudeFile>>,
    /// Executables judged, by the key the kernel gives their image (what an exec record of a
    /// process gone by then is judged by).
    images: Bounded<ImageKey, ImageVerdict>,
    /// Files actually read (not answered from the cache), for the operator and the bench.
    reads: u64,
}

impl Verdicts {
    fn shared() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            map: Bounded::new(VERDICTS_KEPT),
            images: Bounded::new(VERDICTS_KEPT),
            reads: 0,
        }))
    }
}

/// What an executable image was judged to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ImageVerdict {
    /// Its file says it is Claude Code.
    claude: bool,
    /// A name it was run or found by says Claude Code or an interpreter (whose script decides):
    /// its execs never stay in the kernel.
    named: bool,
    /// Its file's owner (whose share of the kernel's map it takes).
    owner: u32,
}

impl ImageVerdict {
    /// The kernel's verdict ([`verdict`]) on the image run by the name `named` too.
    fn kernel(self, named: bool) -> u32 {
        if self.claude || self.named || named {
            verdict::REPORT_NOW
        } else {
            verdict::NOT_CLAUDE
        }
    }
}

/// Whether `path`'s name says Claude Code or an interpreter whose script decides.
fn named(path: &Path) -> bool {
    instance::classify(path, &[]).is_some() || is_interpreter(path)
}

/// What a process's verdict was for: its start time, executable and script argument (a
/// process that execs again, or a pid reused, is judged anew).
type Fingerprint = u64;

/// What one look at a process found.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    fingerprint: Fingerprint,
    verdict: Option<ClaudeFile>,
    /// The identity of the executable judged (native only).
    id: Option<FileId>,
    /// The executable as the exec filter keys it, and its owner, when the answer came from a
    /// verdict on its file read before (native only).
    image: Option<(ImageKey, u32)>,
}

/// How a process runs Claude Code, which release when the file says, and the executable
/// judged (native).
type Claude = (ClaudeKind, Option<String>, Option<FileId>);

/// Whether a process runs Claude Code: known, or waiting for a look.
#[derive(Debug)]
enum Recognized {
    /// How, which release when the file says, and the executable judged (native).
    Known(Option<Claude>),
    /// A look is queued (or running) for the process.
    Pending,
}

/// What files are, remembered per file [`Identity`] (a file replaced or rewritten is judged
/// anew), and what each process was found to be.
#[derive(Debug)]
struct Recognizer {
    verdicts: Arc<Mutex<Verdicts>>,
    answers: Bounded<u32, Answer>,
    /// Run looks in place (`false`: queue them for the daemon's blocking threads).
    inline: bool,
    /// Looks queued, not taken yet.
    looks: Vec<Look>,
    /// Processes with a look queued or running, and the exec it is for.
    pending: HashMap<u32, Fingerprint>,
    /// Executables judged, with their owners and the kernel's verdict: not Claude Code on a
    /// second exec, or to report at once ([`Discovery::take_judged_images`]).
    judged: Vec<(ImageKey, u32, u32)>,
    /// Images whose file a look is judging by its path, and the process whose exec asked.
    images_pending: HashMap<ImageKey, u32>,
}

impl Default for Recognizer {
    fn default() -> Self {
        Self {
            verdicts: Verdicts::shared(),
            answers: Bounded::new(ANSWERS_KEPT),
            inline: true,
            looks: Vec::new(),
            pending: HashMap::new(),
            judged: Vec::new(),
            images_pending: HashMap::new(),
        }
    }
}

/// The fingerprint of one exec of one process.
fn fingerprint(start_time: u64, exe: &Path, script: Option<&str>) -> Fingerprint {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (start_time, exe, script).hash(&mut h);
    h.finish()
}

impl Recognizer {
    /// Whether the process `pid` (directory `dir`, `/proc/<pid>`), started at `start_time`
    /// with executable `exe` and command line `cmdline`, runs Claude Code: how, which release
    /// when the file says, and (for a native binary) the identity of the executable file that
    /// was judged. A native executable already judged is answered at once (its identity from
    /// the `/proc/<pid>/exe` link, without calling its filesystem); a script, or a file not
    /// judged yet, needs a look ([`Recognized::Pending`] until [`Self::learn`]).
    fn process(
        &mut self,
        pid: u32,
        dir: &Path,
        start_time: u64,
        exe: &Path,
        cmdline: &[String],
    ) -> Recognized {
        if exe.as_os_str().is_empty() {
            return Recognized::Known(None);
        }
        let by_name = instance::classify(exe, cmdline);
        let script = if by_name == Some(ClaudeKind::Script) || is_interpreter(exe) {
            match script_arg(cmdline) {
                Some(script) => Some(script),
                None => return Recognized::Known(None),
            }
        } else {
            None
        };
        let kind = if script.is_some() {
            ClaudeKind::Script
        } else {
            ClaudeKind::Native
        };
        let print = fingerprint(start_time, exe, script);
        let answer = match self.answers.get(&pid).filter(|a| a.fingerprint == print) {
            Some(answer) => answer.clone(),
            None => match script
                .is_none()
                .then(|| self.judged_executable(dir, print))
                .flatten()
            {
                Some(answer) => {
                    // A file read before: not Claude Code and not named like it, its execs
                    // can stay in the kernel (bounded: the daemon keeps a share per owner);
                    // Claude Code, they wake the daemon.
                    if let Some((image, owner)) = answer.image {
                        let judged = if answer.verdict.is_none() && by_name.is_none() {
                            verdict::NOT_CLAUDE
                        } else {
                            verdict::REPORT_NOW
                        };
                        self.judge(image, owner, judged);
                    }
                    answer
                }
                None => {
                    let look = Look {
                        pid,
                        uid: 0,
                        what: LookAt::File {
                            fingerprint: print,
                            dir: dir.to_owned(),
                            script: script.map(PathBuf::from),
                            verdicts: self.verdicts.clone(),
                        },
                    };
                    if !self.inline {
                        if self.pending.get(&pid) != Some(&print) {
                            self.pending.insert(pid, print);
                            self.looks.push(look.owned_by(dir));
                        }
                        return Recognized::Pending;
                    }
                    let LookedAt::File(answer) = look.run().what else {
                        unreachable!("a file look answers a file")
                    };
                    self.answers.insert(pid, answer.clone());
                    answer
                }
            },
        };
        let exe_id = answer.id.filter(|_| kind == ClaudeKind::Native);
        Recognized::Known(match (answer.verdict, by_name) {
            (Some(file), _) => Some((kind, file.version, exe_id)),
            (None, Some(named)) => Some((named, None, exe_id.filter(|_| named == kind))),
            (None, None) => None,
        })
    }

    /// The answer for the executable of the process in `dir` when its file was judged before
    /// (by identity, as the kernel holds it: the event loop may ask).
    fn judged_executable(&mut self, dir: &Path, print: Fingerprint) -> Option<Answer> {
        let identity = untrusted::identity(&dir.join("exe"), Resolve::Proc).ok()?;
        if !identity.regular {
            return None;
        }
        let verdict = crate::locked(&self.verdicts)
            .map
            .get(&(identity, ClaudeKind::Native))
            .cloned()?;
        Some(Answer {
            fingerprint: print,
            verdict,
            id: Some(FileId {
                dev: identity.dev,
                ino: identity.ino,
            }),
            image: Some((image::key_of(&identity), identity.uid)),
        })
    }

    /// Remembers what a look at process `pid` found.
    fn learn(&mut self, pid: u32, answer: Answer) {
        if self.pending.get(&pid) == Some(&answer.fingerprint) {
            self.pending.remove(&pid);
        }
        self.answers.insert(pid, answer);
    }

    /// Queues the kernel's verdict on `image` (owned by `owner`) for its map.
    fn judge(&mut self, image: ImageKey, owner: u32, judged: u32) {
        if self.judged.len() < JUDGED_QUEUED {
            self.judged.push((image, owner, judged));
        }
    }

    /// An exec of `exec`'s image by a process gone by the time it was read (or running
    /// something else now): judged by its path. An image judged before gets its kernel
    /// verdict (not Claude Code from its second exec on, as for a live process); one not judged
    /// yet gets a look at the file its path leads to, which judges it only if that file is the
    /// image ([`image::open_image`]); a relative or cut path waits for the image's next exec.
    fn gone(&mut self, pid: u32, exec: &Exec) {
        let by_name = exec.path.as_deref().is_some_and(named);
        let known = crate::locked(&self.verdicts)
            .images
            .get(&exec.image)
            .copied();
        if let Some(known) = known {
            self.judge(exec.image, known.owner, known.kernel(by_name));
            return;
        }
        let Some(path) = exec.path.clone().filter(|p| p.is_absolute()) else {
            return;
        };
        if self.images_pending.contains_key(&exec.image)
            || self.images_pending.len() >= JUDGED_QUEUED
        {
            return;
        }
        let look = Look {
            pid,
            uid: exec.uid,
            what: LookAt::Image {
                image: exec.image,
                path,
                verdicts: self.verdicts.clone(),
            },
        };
        if self.inline {
            if let LookedAt::Image { image, verdict } = look.run().what {
                self.learn_image(image, verdict);
            }
            return;
        }
        self.images_pending.insert(exec.image, pid);
        self.looks.push(look);
    }

    /// Takes in what a look at an image's path found: Claude Code, or a name that says Claude
    /// Code or an interpreter, is reported at once from its next exec on; not Claude Code
    /// waits for its next exec (a program run once never takes room in the kernel's map).
    fn learn_image(&mut self, image: ImageKey, judged: Option<ImageVerdict>) {
        self.images_pending.remove(&image);
        if let Some(judged) = judged
            && judged.kernel(false) == verdict::REPORT_NOW
        {
            self.judge(image, judged.owner, verdict::REPORT_NOW);
        }
    }
}

/// A look discovery needs before it can judge a process, run off the event loop
/// ([`Look::run`]): the file that says whether it is Claude Code (its executable, or the
/// script its interpreter runs), or the engine's name for its container.
#[derive(Debug)]
pub struct Look {
    /// The process looked at.
    pub pid: u32,
    /// Its owner (of `/proc/<pid>`): the user whose share of looks it takes.
    pub uid: u32,
    what: LookAt,
}

/// What a [`Look`] reads.
#[derive(Debug)]
enum LookAt {
    /// The file that says what the process in `dir` (`/proc/<pid>`) is, for the exec
    /// `fingerprint`: its script argument when it has one (resolved where the process sees
    /// it), else `/proc/<pid>/exe`.
    File {
        fingerprint: Fingerprint,
        dir: PathBuf,
        script: Option<PathBuf>,
        verdicts: Arc<Mutex<Verdicts>>,
    },
    /// The engine's name for a container, and the cgroup of its main process (read under
    /// `proc_root`).
    Container {
        container: Container,
        socket: PathBuf,
        proc_root: PathBuf,
    },
    /// The session file of a background worker (under a directory its environment names).
    Session {
        proc_root: PathBuf,
        info: Box<ProcessInfo>,
    },
    /// The file an exec's path leads to, judged as `image` only if it is that image (its
    /// process is gone).
    Image {
        image: ImageKey,
        path: PathBuf,
        verdicts: Arc<Mutex<Verdicts>>,
    },
}

/// What a [`Look`] found, for [`Discovery::learn`].
#[derive(Debug)]
pub struct Looked {
    /// The process looked at.
    pub pid: u32,
    what: LookedAt,
}

#[derive(Debug)]
enum LookedAt {
    File(Answer),
    Container {
        container: Container,
        vouch: Option<Vouch>,
    },
    Session {
        start_time: u64,
        session: Option<BgSession>,
    },
    Image {
        image: ImageKey,
        verdict: Option<ImageVerdict>,
    },
}

/// What the engine says of a container, kept to judge each process whose cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vouch {
    /// The engine's name for it, without Docker's `/` (`None`: not a valid container name; its
    /// processes are named by the short id).
    name: Option<String>,
    /// Its main process (`State.Pid`), as the engine reported it.
    main_pid: u32,
    /// That process's `/proc/<pid>/cgroup`, read right after the engine answered: where the
    /// container's cgroup is ([`instance::container_member`]).
    main_cgroup: String,
}

/// What the engine on `socket` says of `container`, with its main process's cgroup read under
/// `proc_root`; `None` when there is nothing to judge its processes by: the engine did not
/// answer (or answered an error), the container runs no process (`State.Pid` 0), or that
/// process was gone before its cgroup was read. Its processes are then named by the
/// container's id, as when no engine is asked, and the engine is asked again for the
/// container's next process.
///
/// The main process is read by the pid the engine gave: had it ended and its pid been taken by
/// a process in a forged cgroup before the engine noticed, that cgroup would be taken for the
/// container's (a window of the engine's notice of an exit, and a pid cycled through within it).
fn ask_engine(socket: &Path, proc_root: &Path, container: &Container) -> Option<Vouch> {
    let inspect = engine::inspect(socket, container, engine::TIMEOUT)
        .inspect_err(|e| warn!(container = %container.short_id(), error = %crate::error_chain(e), "container unknown to the engine: its processes are named by the container's id"))
        .ok()?;
    if inspect.pid == 0 {
        warn!(
            container = %container.short_id(),
            running = inspect.running,
            "the engine says the container runs no process: its processes are named by the container's id"
        );
        return None;
    }
    let main_cgroup = instance::proc::read_text_in(proc_root, inspect.pid, "cgroup")
        .inspect_err(|e| warn!(container = %container.short_id(), main_pid = inspect.pid, error = %crate::error_chain(e), "the container's main process is gone: its processes are named by the container's id"))
        .ok()?;
    Some(Vouch {
        name: inspect.name,
        main_pid: inspect.pid,
        main_cgroup,
    })
}

impl Look {
    /// The look, in the queue of the user owning process directory `dir`.
    fn owned_by(mut self, dir: &Path) -> Self {
        self.uid = std::fs::metadata(dir).map_or(0, |m| m.uid());
        self
    }

    /// Runs the look (blocking: it opens files another user chose, through
    /// [`crate::untrusted`], or asks the container engine).
    #[must_use]
    pub fn run(self) -> Looked {
        let what = match self.what {
            LookAt::File {
                fingerprint,
                dir,
                script,
                verdicts,
            } => {
                let (verdict, id) = match script {
                    Some(script) => judge_script(&dir, &script, &verdicts),
                    None => {
                        let exe = dir.join("exe");
                        let (verdict, id) =
                            judge_file(&exe, Resolve::Proc, ClaudeKind::Native, &verdicts);
                        // The image's verdict too, for its execs read after their process
                        // is gone.
                        if let Some((_, identity)) = id {
                            let by_name = std::fs::read_link(&exe).is_ok_and(|p| named(&p));
                            crate::locked(&verdicts).images.insert(
                                image::key_of(&identity),
                                ImageVerdict {
                                    claude: verdict.is_some(),
                                    named: by_name,
                                    owner: identity.uid,
                                },
                            );
                        }
                        (verdict, id)
                    }
                };
                let id = id.map(|(id, _)| id);
                LookedAt::File(Answer {
                    fingerprint,
                    image: None,
                    verdict,
                    id,
                })
            }
            LookAt::Container {
                container,
                socket,
                proc_root,
            } => LookedAt::Container {
                vouch: ask_engine(&socket, &proc_root, &container),
                container,
            },
            LookAt::Session { proc_root, info } => LookedAt::Session {
                start_time: info.start_time,
                session: bg_session(&proc_root, &info),
            },
            LookAt::Image {
                image,
                path,
                verdicts,
            } => LookedAt::Image {
                image,
                verdict: judge_image(&path, image, &verdicts),
            },
        };
        Looked {
            pid: self.pid,
            what,
        }
    }
}

/// The verdict on script `script` of the process in `dir`, resolved where the process sees it:
/// in its root, from its working directory when relative.
fn judge_script(
    dir: &Path,
    script: &Path,
    verdicts: &Mutex<Verdicts>,
) -> (Option<ClaudeFile>, Option<(FileId, Identity)>) {
    let path = if script.is_absolute() {
        script.to_owned()
    } else {
        // The working directory as the process sees it (from its root).
        let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
            return (None, None);
        };
        cwd.join(script)
    };
    judge_file(
        &path,
        Resolve::InRoot(&dir.join("root")),
        ClaudeKind::Script,
        verdicts,
    )
}

/// The verdict on the file at `path` read as `kind` (a script's head, or a native
/// executable's module graph): from the cache when its key is known, else read once and
/// remembered; with the identity of the file opened. Anything but a regular file is never
/// opened for reading (see [`crate::untrusted`]).
fn judge_file(
    path: &Path,
    resolve: Resolve<'_>,
    kind: ClaudeKind,
    verdicts: &Mutex<Verdicts>,
) -> (Option<ClaudeFile>, Option<(FileId, Identity)>) {
    let mut opened = match untrusted::open(path, resolve) {
        Ok(opened) => opened,
        Err(e) => {
            debug!(path = %path.display(), error = %crate::error_chain(&e), "not judged");
            return (None, None);
        }
    };
    let (verdict, identity) = judge_opened(&mut opened, kind, verdicts);
    let id = FileId {
        dev: identity.dev,
        ino: identity.ino,
    };
    (verdict, Some((id, identity)))
}

/// The verdict on the file `opened`, read as `kind` (see [`judge_file`]), and its identity.
fn judge_opened(
    opened: &mut untrusted::Opened,
    kind: ClaudeKind,
    verdicts: &Mutex<Verdicts>,
) -> (Option<ClaudeFile>, Identity) {
    let identity = Identity::of(opened.metadata());
    let key = (identity, kind);
    let lock = || crate::locked(verdicts);
    if let Some(verdict) = lock().map.get(&key) {
        return (verdict.clone(), identity);
    }
    lock().reads += 1;
    let verdict = match kind {
        ClaudeKind::Script => opened
            .read_head(Limits {
                max_bytes: content::HEAD_BYTES as u64,
                budget: READ_BUDGET,
            })
            .ok()
            .and_then(|head| content::script(&head)),
        ClaudeKind::Native => {
            let mut file = opened.file();
            content::native(&mut file, identity.size).ok().flatten()
        }
    };
    lock().map.insert(key, verdict.clone());
    (verdict, identity)
}

/// The verdict on `image`, an exec's image whose process is gone, from the file its `path`
/// leads to when that file is the image ([`image::open_image`]; `None` when it is not, or
/// cannot be opened: the image's next exec tries again), remembered for the image.
fn judge_image(path: &Path, image: ImageKey, verdicts: &Mutex<Verdicts>) -> Option<ImageVerdict> {
    let (mut opened, resolved) = image::open_image(Some(path), image)
        .inspect_err(|e| debug!(path = %path.display(), error = %crate::error_chain(e), "image not judged by its path"))
        .ok()?;
    let (verdict, identity) = judge_opened(&mut opened, ClaudeKind::Native, verdicts);
    let judged = ImageVerdict {
        claude: verdict.is_some(),
        named: named(path) || resolved.as_deref().is_some_and(named),
        owner: identity.uid,
    };
    crate::locked(verdicts).images.insert(image, judged);
    Some(judged)
}

/// Whether `exe` is a JavaScript runtime that may run `cli.js` (node, nodejs, bun).
fn is_interpreter(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with("node") || f == "bun")
}

/// The script an interpreter runs: its first argument that is not an option, when it looks
/// like a JavaScript file or a bin shim (no extension).
fn script_arg(cmdline: &[String]) -> Option<&str> {
    let script = cmdline.iter().skip(1).find(|a| !a.starts_with('-'))?;
    let ext = Path::new(script).extension().and_then(|e| e.to_str());
    matches!(ext, None | Some("js" | "mjs" | "cjs")).then_some(script.as_str())
}

/// What [`Discovery::check`] made of a process.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a Found is moved on into the core's Input::Started, unboxed there too"
)]
pub enum Checked {
    /// A claude instance process not in the table before (or a new process on a known pid).
    Found(Found),
    /// A process in the table is not that process any more (it exec'd, or its pid was
    /// reused), and its pid is no claude instance now, or not yet (a look it needs is under
    /// way: it is found once the look is in).
    Left,
    /// Nothing to tell the core: known already, not claude, or waiting for a look.
    Nothing,
}

/// What a process is: the classifier over `/proc`. The claude processes already known are the
/// core's pid table ([`PidTable`]), lent to each call; discovery keeps what files and engines
/// said (caches) and the looks under way.
#[derive(Debug)]
pub struct Discovery {
    proc_root: PathBuf,
    rules: Vec<MatchRule>,
    recognizer: Recognizer,
    docker_socket: Option<PathBuf>,
    /// What the engine said of each container asked about (not remembered when it said
    /// nothing to judge by: asked again for the container's next process).
    containers: Bounded<Container, Vouch>,
    /// Containers whose name a look is asking the engine for, and the processes waiting.
    naming: HashMap<Container, Vec<u32>>,
    /// Processes whose container the engine said nothing of: named by the id.
    unnamed: std::collections::HashSet<u32>,
    /// Processes waiting for a look at one of their ancestors, by that ancestor's pid.
    recheck_after: HashMap<u32, Vec<u32>>,
    /// What a look read of a background worker's session file (by pid, with its start time and
    /// when), used for [`SESSION_FRESH`].
    sessions: HashMap<u32, (u64, Option<BgSession>, MonoNs)>,
    /// Background workers whose session file a look is reading.
    sessions_pending: std::collections::HashSet<u32>,
    /// The user whose process first took each instance whose name processes choose: other
    /// users' processes are refused the name also while none of its processes runs (during
    /// its own restart), so none can squat it.
    owners: Bounded<InstanceId, u32>,
    /// Script instances to look at again (the core's schedule).
    rescans: Rescans,
    /// Background spares not claimed by a session yet.
    spares: Vec<Spare>,
}

/// A background spare (`claude bg-spare`) waiting to be claimed by a session.
#[derive(Debug)]
struct Spare {
    pid: u32,
    start_time: u64,
    claude: Claude,
}

impl Discovery {
    /// Discovery over `proc_root` (normally `/proc`) naming instances with `rules`.
    pub fn new(proc_root: impl Into<PathBuf>, rules: Vec<MatchRule>) -> Self {
        Self {
            proc_root: proc_root.into(),
            rules,
            recognizer: Recognizer::default(),
            docker_socket: None,
            containers: Bounded::new(CONTAINERS_KEPT),
            naming: HashMap::new(),
            unnamed: std::collections::HashSet::new(),
            recheck_after: HashMap::new(),
            sessions: HashMap::new(),
            sessions_pending: std::collections::HashSet::new(),
            owners: Bounded::new(OWNERS_KEPT),
            rescans: Rescans::default(),
            spares: Vec::new(),
        }
    }

    /// Never reads a file or asks the engine in place: what needs it is queued as a [`Look`]
    /// ([`Self::take_looks`]) to run off the event loop, and the process is judged once the
    /// look's answer is in ([`Self::learn`]).
    #[must_use]
    pub fn deferring_looks(mut self) -> Self {
        self.recognizer.inline = false;
        self
    }

    /// The looks queued since the last call.
    pub fn take_looks(&mut self) -> Vec<Look> {
        std::mem::take(&mut self.recognizer.looks)
    }

    /// Takes in what a look found; returns the processes to check again now
    /// ([`Self::check`]): the one looked at, and those that waited for it.
    pub fn learn(&mut self, looked: Looked) -> Vec<u32> {
        match looked.what {
            LookedAt::File(answer) => {
                self.recognizer.learn(looked.pid, answer);
                let mut again = vec![looked.pid];
                again.extend(self.recheck_after.remove(&looked.pid).unwrap_or_default());
                again
            }
            LookedAt::Container { container, vouch } => {
                let waiting = self.naming.remove(&container).unwrap_or_default();
                match vouch {
                    Some(vouch) => self.containers.insert(container, vouch),
                    None => self.unnamed.extend(waiting.iter().copied()),
                }
                waiting
            }
            LookedAt::Session {
                start_time,
                session,
            } => {
                self.sessions_pending.remove(&looked.pid);
                self.sessions
                    .insert(looked.pid, (start_time, session, mono_now_ns()));
                vec![looked.pid]
            }
            LookedAt::Image { image, verdict } => {
                self.recognizer.learn_image(image, verdict);
                Vec::new()
            }
        }
    }

    /// The background session the worker `info` runs, from its session file: `Some` when
    /// known now (a look's answer at most [`SESSION_FRESH`] old, or read in place without
    /// deferred looks), `None` while a look reads it (the process is checked again once it is
    /// in).
    fn session_of(&mut self, info: &ProcessInfo) -> Option<Option<BgSession>> {
        if self.recognizer.inline {
            return Some(bg_session(&self.proc_root, info));
        }
        if let Some((start_time, session, at)) = self.sessions.get(&info.pid)
            && *start_time == info.start_time
            && Duration::from_nanos(mono_now_ns().saturating_sub(*at)) < SESSION_FRESH
        {
            return Some(session.clone());
        }
        if self.sessions_pending.insert(info.pid) {
            self.recognizer.looks.push(Look {
                pid: info.pid,
                uid: info.uid,
                what: LookAt::Session {
                    proc_root: self.proc_root.clone(),
                    info: Box::new(info.clone()),
                },
            });
        }
        None
    }

    /// A look at process `pid` was given up (it took longer than its budget, or there was no
    /// room for it): the processes waiting for it are not judged until something brings them
    /// here again.
    pub fn forget_look(&mut self, pid: u32) {
        self.recognizer.pending.remove(&pid);
        self.recognizer
            .images_pending
            .retain(|_, asked| *asked != pid);
        self.sessions_pending.remove(&pid);
        self.recheck_after.remove(&pid);
    }

    /// Whether the name of `container` (of process `pid`) is known, or will not be asked;
    /// otherwise a look asks the engine (in place, or queued).
    fn container_named(&mut self, container: &Container, pid: u32) -> bool {
        let Some(socket) = self.docker_socket.clone() else {
            return true;
        };
        if self.containers.get(container).is_some() || self.unnamed.contains(&pid) {
            return true;
        }
        let look = Look {
            pid,
            uid: 0,
            what: LookAt::Container {
                container: container.clone(),
                socket,
                proc_root: self.proc_root.clone(),
            },
        };
        if self.recognizer.inline {
            self.learn(look.run());
            self.unnamed.remove(&pid);
            return true;
        }
        let waiting = self.naming.entry(container.clone()).or_default();
        if waiting.is_empty() {
            let dir = self.proc_root.join(pid.to_string());
            self.recognizer.looks.push(look.owned_by(&dir));
        }
        if !waiting.contains(&pid) {
            waiting.push(pid);
        }
        false
    }

    /// Asks the engine on `socket` (Docker's API, or Podman's compatible one) for the names of
    /// containers that instances run in.
    #[must_use]
    pub fn with_docker_socket(mut self, socket: PathBuf) -> Self {
        self.docker_socket = Some(socket);
        self
    }

    /// Replaces the match rules (configuration reload); known processes keep their names.
    pub fn set_rules(&mut self, rules: Vec<MatchRule>) {
        self.rules = rules;
    }

    /// Every process running now, by pid (for a scan: each [`Self::check`]ed in turn).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = instance::proc::pids(&self.proc_root);
        pids.sort_unstable();
        pids
    }

    /// Every claude instance running now that is not in `known`, entered there as watched:
    /// for `trace` and `config check`, which keep their own table (the daemon's is the
    /// core's).
    pub fn scan(&mut self, known: &mut PidTable) -> Vec<Found> {
        let mut found = Vec::new();
        for pid in self.pids() {
            if let Checked::Found(f) = self.check(pid, known) {
                known.insert(f.clone(), Standing::Watched);
                found.push(f);
            }
        }
        found
    }

    /// Names claude process `info` from its place on the host, or `None` while a look it
    /// needs is under way, or when it is not an instance (a helper, a tool, an unclaimed
    /// spare).
    fn classify(&mut self, info: ProcessInfo, claude: Claude, known: &PidTable) -> Option<Found> {
        let pid = info.pid;
        let role = self.role(&info)?;
        let placement = match role {
            Role::Outermost => {
                let placement = instance::placement(&info);
                if let Placement::Container(c) = &placement
                    && !self.container_named(c, pid)
                {
                    return None;
                }
                placement
            }
            Role::Helper | Role::Tool | Role::BgMachinery => return None,
            // An unclaimed spare has no session file yet: not an instance now, looked at again
            // on every tick until it is claimed ([`Self::due_claims`]) or exits.
            Role::BgCandidate => match self.session_of(&info)? {
                Some(session) => Placement::ClaudeBg(session),
                None => {
                    debug!(
                        pid,
                        "background spare without a session: not an instance yet"
                    );
                    if self.spares.len() < SPARES_KEPT && !self.spares.iter().any(|s| s.pid == pid)
                    {
                        self.spares.push(Spare {
                            pid,
                            start_time: info.start_time,
                            claude,
                        });
                    }
                    return None;
                }
            },
        };
        Some(self.found(info, claude, placement, known))
    }

    /// Executables judged since the last take, with their owners and the kernel's verdict
    /// ([`verdict`]): not Claude Code (on a second exec of a file read before), or to report
    /// at once (Claude Code, an interpreter): for the kernel's exec filter.
    pub fn take_judged_images(&mut self) -> Vec<(ImageKey, u32, u32)> {
        std::mem::take(&mut self.recognizer.judged)
    }

    /// Unclaimed background spares (see [`Self::check`]) that a session has claimed since
    /// the last look: each is an instance now. Spares that exited (or whose pid was reused)
    /// are forgotten. Called on every tick of the daemon: a claimed spare writes its session
    /// file a second or two before its first API request.
    pub fn due_claims(&mut self, known: &PidTable) -> Vec<Found> {
        let mut claimed = Vec::new();
        for spare in std::mem::take(&mut self.spares) {
            let Ok(info) = instance::read_process_info(&self.proc_root, spare.pid) else {
                continue;
            };
            // A spare whose own requests made it part of the machinery's instance
            // ([`Self::attribute`]) is still a spare until a session claims it.
            let was = known.get(spare.pid);
            let machinery =
                was.is_some_and(|f| matches!(f.placement, Placement::BgMachinery { .. }));
            if info.start_time != spare.start_time || (was.is_some() && !machinery) {
                continue;
            }
            match self.session_of(&info) {
                Some(Some(session)) => {
                    let placement = Placement::ClaudeBg(session);
                    claimed.push(self.found(info, spare.claude.clone(), placement, known));
                }
                Some(None) | None => self.spares.push(spare),
            }
        }
        claimed
    }

    /// The part claude process `info` plays, from its parent chain; `None` while an ancestor
    /// waits for a look (`info` is checked again once it is in).
    fn role(&mut self, info: &ProcessInfo) -> Option<Role> {
        let ancestors = instance::read_ancestry(&self.proc_root, info.pid, MAX_ANCESTRY);
        let mut claude = HashMap::with_capacity(ancestors.len());
        let mut waiting = false;
        for a in &ancestors {
            let dir = self.proc_root.join(a.pid.to_string());
            match self
                .recognizer
                .process(a.pid, &dir, a.start_time, &a.exe, &a.cmdline)
            {
                Recognized::Known(found) => {
                    claude.insert(a.pid, found.is_some());
                }
                Recognized::Pending => {
                    let after = self.recheck_after.entry(a.pid).or_default();
                    if !after.contains(&info.pid) {
                        after.push(info.pid);
                    }
                    waiting = true;
                }
            }
        }
        (!waiting).then(|| {
            bg::role(info, &ancestors, |a| {
                claude.get(&a.pid).copied().unwrap_or(false)
            })
        })
    }

    /// Names a claude instance process found at `placement` (who may join an instance is
    /// judged against its members in `known`).
    fn found(
        &mut self,
        info: ProcessInfo,
        (kind, release, exe_id): Claude,
        placement: Placement,
        known: &PidTable,
    ) -> Found {
        let pid = info.pid;
        let mut placement = placement;
        let instance = match &placement {
            Placement::Container(c) => match self.container_instance(&info, c) {
                Some(instance) => instance,
                None => {
                    placement = Placement::Unsupervised;
                    InstanceId::pid(pid)
                }
            },
            Placement::ClaudeBg(bg) => InstanceId::bg_session(&bg.short_id),
            Placement::BgMachinery { uid } => InstanceId::bg_machinery(*uid),
            _ => instance::identify(&info, &self.rules),
        };
        let members = known
            .uids_of(&instance)
            .chain(self.owners.get(&instance).copied());
        let instance = if instance::may_join(&instance, info.uid, members, &self.rules) {
            if instance::self_named(&instance, &self.rules) {
                self.owners.insert(instance.clone(), info.uid);
            }
            instance
        } else {
            warn!(pid, uid = info.uid, claimed = %instance, "refused: a process of another user than the instance's claims its name; it is watched under its own pid");
            InstanceId::pid(pid)
        };
        let found = Found {
            instance,
            kind,
            info,
            release,
            placement,
            exe_id,
        };
        debug!(pid, instance = %found.instance, exe = %found.info.exe.display(), version = ?found.release, "claude process found");
        if found.kind == ClaudeKind::Script {
            self.rescans.push(pid, found.info.start_time, mono_now_ns());
        }
        found
    }

    /// The instance of process `info`, whose cgroup path names container `c`: the container's
    /// (`docker:<name>`) when the engine vouches for the process, named by the container's id
    /// when the engine was not asked or said nothing to judge by (as before it was asked), and
    /// `None` (logged, once per process found) when the engine's main process of the container
    /// shows the container's cgroup elsewhere: the process is then watched as `pid:N`, and no
    /// supervisor acts for it.
    fn container_instance(&self, info: &ProcessInfo, c: &Container) -> Option<InstanceId> {
        let named = |name: Option<&str>| {
            InstanceId::container(format!(
                "{}:{}",
                c.engine.label(),
                name.unwrap_or_else(|| c.short_id())
            ))
        };
        let Some(vouch) = self.containers.get(c) else {
            return Some(named(None));
        };
        match instance::container_member(c, &info.cgroup, &vouch.main_cgroup) {
            Ok(()) => Some(named(vouch.name.as_deref())),
            Err(why) => {
                warn!(
                    pid = info.pid,
                    uid = info.uid,
                    claimed = %named(vouch.name.as_deref()),
                    container = %c.short_id(),
                    main_pid = vouch.main_pid,
                    reason = %crate::text::printable(&why.to_string()),
                    "refused: a process whose cgroup names a container is not in that container's cgroup; it is watched under its own pid"
                );
                None
            }
        }
    }

    /// Whether process `pid` runs Claude Code, from its executable's name and the (cached)
    /// verdict on its file: how, which release, and the executable judged; `Some(None)` when it
    /// does not, `None` when it is gone or a look at its file is under way.
    fn recognize(&mut self, pid: u32) -> Option<Option<Claude>> {
        let dir = self.proc_root.join(pid.to_string());
        let (exe, cmdline) = instance::proc::read_exe_and_cmdline(&dir);
        let started = instance::proc::start_time_in(&dir)?;
        match self.recognizer.process(pid, &dir, started, &exe, &cmdline) {
            Recognized::Known(recognized) => Some(recognized),
            Recognized::Pending => None,
        }
    }

    /// Files whose verdict is cached, and files read so far (cache misses).
    pub fn files(&self) -> (usize, u64) {
        let verdicts = crate::locked(&self.recognizer.verdicts);
        (verdicts.map.len(), verdicts.reads)
    }
}

/// Which processes are claude instances, judged against the pid table lent to each call: the
/// front's one I/O seam ([`crate::watch::front`]).
pub trait Processes {
    /// Looks at process `pid` (after an exec, or a record from a pid not in `known`).
    fn check(&mut self, pid: u32, known: &PidTable) -> Checked;
    /// Process `pid` exec'd, the image `exec` when the kernel said: checked as
    /// [`Self::check`] while it runs that image.
    fn exec(&mut self, pid: u32, exec: Option<&Exec>, known: &PidTable) -> Checked {
        let _ = exec;
        self.check(pid, known)
    }
    /// Forgets what was kept for a process that exited.
    fn exited(&mut self, pid: u32);
    /// Process `pid`, not in `known`, made an API request itself: the instance it is
    /// attributed to when it is one of Claude Code's background machinery.
    fn attribute(&mut self, _pid: u32, _known: &PidTable) -> Option<Found> {
        None
    }
    /// Script instances due for another look at their mapped files, with whether it is the
    /// last look.
    fn due_rescans(&mut self, _now: MonoNs, _known: &PidTable) -> Vec<(Found, bool)> {
        Vec::new()
    }
}

impl Processes for Discovery {
    /// Checks one process (after an exec, or a record from an unknown pid) against `known`:
    /// [`Checked::Found`] when it is a claude instance not known before (a known pid whose
    /// start time or executable changed, reused or exec'd anew, is looked at anew), and
    /// [`Checked::Left`] when a known one runs something else now.
    fn check(&mut self, pid: u32, known: &PidTable) -> Checked {
        // Every exec on the host lands here: the executable's name and (cached) verdict first.
        let Some(recognized) = self.recognize(pid) else {
            return Checked::Nothing;
        };
        let was = known.get(pid);
        if was.is_none() && recognized.is_none() {
            return Checked::Nothing;
        }
        let Ok(info) = instance::read_process_info(&self.proc_root, pid) else {
            return Checked::Nothing;
        };
        if let Some(was) = was
            && was.info.start_time == info.start_time
            && was.info.exe == info.exe
        {
            return Checked::Nothing;
        }
        let left = was.map_or(Checked::Nothing, |_| Checked::Left);
        let Some(claude) = recognized else {
            return left;
        };
        self.classify(info, claude, known)
            .map_or(left, Checked::Found)
    }

    /// Checks process `pid` after its exec of `exec`'s image while it still runs that image (an
    /// interpreter's image is then reported at once from its next exec on: its script
    /// decides); when it is gone, or runs another image by now (its next exec record follows),
    /// the image is judged by its path instead ([`Recognizer::gone`]).
    fn exec(&mut self, pid: u32, exec: Option<&Exec>, known: &PidTable) -> Checked {
        let Some(exec) = exec else {
            return self.check(pid, known);
        };
        let dir = self.proc_root.join(pid.to_string());
        let running = untrusted::identity(&dir.join("exe"), Resolve::Proc)
            .ok()
            .filter(|id| id.regular && image::key_of(id) == exec.image);
        let Some(running) = running else {
            self.recognizer.gone(pid, exec);
            return Checked::Nothing;
        };
        if is_interpreter(&instance::proc::exe_in(&dir)) {
            self.recognizer
                .judge(exec.image, running.uid, verdict::REPORT_NOW);
        }
        self.check(pid, known)
    }

    /// Forgets what a look at process `pid`, which exited, was waiting for.
    fn exited(&mut self, pid: u32) {
        self.spares.retain(|s| s.pid != pid);
        self.unnamed.remove(&pid);
        self.recheck_after.remove(&pid);
        self.sessions.remove(&pid);
        self.sessions_pending.remove(&pid);
    }

    /// Process `pid`, whose own API request just arrived although [`Self::check`] found no
    /// instance in it: when it is Claude Code's background machinery (its daemon, a pty host,
    /// an unclaimed spare), it joins its owner's observe-only instance `claude-bg-daemon:<uid>`
    /// (and is returned, once); anything else (a helper of an instance, not Claude Code) stays
    /// unattributed.
    fn attribute(&mut self, pid: u32, known: &PidTable) -> Option<Found> {
        if known.get(pid).is_some() {
            return None;
        }
        let claude = self.recognize(pid)??;
        let info = instance::read_process_info(&self.proc_root, pid).ok()?;
        let role = self.role(&info)?;
        let machinery = match role {
            Role::BgMachinery => true,
            // A claimed spare is a worker: `check` names it (on this exchange or the next tick).
            Role::BgCandidate => self.session_of(&info)?.is_none(),
            Role::Outermost | Role::Helper | Role::Tool => false,
        };
        if !machinery {
            return None;
        }
        debug!(
            pid,
            uid = info.uid,
            "requests of Claude Code's background machinery: its observe-only instance"
        );
        let placement = Placement::BgMachinery { uid: info.uid };
        Some(self.found(info, claude, placement, known))
    }

    /// Script instances due at `now` for another look at their mapped files (see [`target`]),
    /// when [`Rescans`] says; the last look is marked `final`.
    fn due_rescans(&mut self, now: MonoNs, known: &PidTable) -> Vec<(Found, bool)> {
        let watched = |pid| known.watched(pid);
        let current = |pid, start| watched(pid).is_some_and(|f| f.info.start_time == start);
        let due = self.rescans.due(now, current);
        due.into_iter()
            .filter_map(|(pid, last)| Some((watched(pid)?.clone(), last)))
            .collect()
    }
}

/// The background session worker `info` runs, from its session file
/// `<config dir>/sessions/<pid>.json` ([`bg::parse_session_file`]). The configuration directory
/// comes from the worker's own `HOME` / `CLAUDE_CONFIG_DIR`, which it controls, so the file must
/// be a regular file owned by the worker's uid (checked on the open file, the last component
/// not followed if a link), and is read to at most [`bg::SESSION_FILE_MAX`] bytes.
fn bg_session(proc_root: &Path, info: &ProcessInfo) -> Option<BgSession> {
    let environ = instance::proc::environ(proc_root, info.pid).ok()?;
    let (home, config) = bg::parse_config_env(&environ);
    drop(environ);
    let dir = bg::config_dir(home.as_deref(), config.as_deref())?;
    let path = dir.join("sessions").join(format!("{}.json", info.pid));
    // Where the worker sees it, never above its root.
    let root = proc_root.join(info.pid.to_string()).join("root");
    let mut file = untrusted::open(&path, Resolve::InRoot(&root))
        .inspect_err(|e| debug!(pid = info.pid, error = %crate::error_chain(e), "no session file"))
        .ok()?;
    if file.metadata().uid() != info.uid {
        debug!(pid = info.pid, path = %path.display(), "session file not the worker owner's");
        return None;
    }
    let raw = file.read_head(Limits::bytes(bg::SESSION_FILE_MAX)).ok()?;
    bg::parse_session_file(&raw, info.pid, info.start_time, info.uid, &dir)
}

/// What to attach for a found process: its executable through `/proc/<pid>/exe` (which works
/// across mount namespaces and for replaced binaries), for every process running that file,
/// when it is the native binary and still the file discovery judged (`exe_id`); for a script,
/// every TLS-carrying file the interpreter maps (its executable, or the shared `libssl` a
/// distro node links), for that process only.
pub fn target(found: &Found) -> Result<Vec<Target>, CaptureError> {
    match found.kind {
        ClaudeKind::Native => Ok(vec![targets::executable(found.info.pid, found.exe_id)?]),
        ClaudeKind::Script => targets::process(found.info.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use claude_watch_core::instance::version_from_path;

    fn nothing(checked: Checked) -> bool {
        matches!(checked, Checked::Nothing)
    }

    #[test]
    fn versions_from_install_paths() {
        assert_eq!(
            version_from_path(Path::new("/root/.local/share/claude/versions/2.1.197")).as_deref(),
            Some("2.1.197")
        );
        assert_eq!(
            version_from_path(Path::new(
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"
            )),
            None
        );
    }

    #[test]
    fn deferred_looks_run_off_the_caller_and_judge_once() {
        let mut discovery = Discovery::new("/proc", Vec::new()).deferring_looks();
        let me = std::process::id();
        // The test binary's executable was never judged: nothing is read in place, a look is
        // queued, once however often the process is checked meanwhile.
        assert!(nothing(discovery.check(me, &PidTable::default())));
        assert!(nothing(discovery.check(me, &PidTable::default())));
        let looks = discovery.take_looks();
        assert_eq!(looks.len(), 1, "{looks:?}");
        assert_eq!(discovery.files(), (0, 0), "nothing read yet");
        let look = looks.into_iter().next().expect("a look");
        assert_eq!((look.pid, look.uid), (me, own_uid()));
        let looked = std::thread::spawn(move || look.run())
            .join()
            .expect("the look ran");
        assert_eq!(discovery.learn(looked), vec![me]);
        assert_eq!(discovery.files(), (1, 1), "read once, remembered");
        // Judged now: not claude, and no new look.
        assert!(nothing(discovery.check(me, &PidTable::default())));
        assert!(discovery.take_looks().is_empty());
        // Another process running the same file is judged in place from the cache.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "discover::tests::sleeper"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("a second test binary");
        let dir = PathBuf::from(format!("/proc/{}", child.id()));
        assert!(
            instance::proc::start_time_in(&dir).is_some(),
            "the child runs"
        );
        assert!(nothing(discovery.check(child.id(), &PidTable::default())));
        assert!(
            discovery.take_looks().is_empty(),
            "answered from the verdict cache"
        );
        assert_eq!(discovery.files(), (1, 1));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A second process running the test binary (started by the test above).
    #[test]
    #[ignore = "a helper process for deferred_looks_run_off_the_caller_and_judge_once"]
    fn sleeper() {
        std::thread::sleep(Duration::from_secs(10));
    }

    /// This process's uid.
    fn own_uid() -> u32 {
        // SAFETY: getuid has no arguments and cannot fail.
        unsafe { libc::getuid() }
    }

    const ID: &str = "3f1c2a9be0d4c5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0";

    impl Scratch {
        /// A fake `/proc` where process `pid`'s cgroup file says `cgroup`.
        fn with_cgroup(&self, pid: u32, cgroup: &str) {
            let dir = self.0.join("proc").join(pid.to_string());
            std::fs::create_dir_all(&dir).expect("process directory");
            std::fs::write(dir.join("cgroup"), cgroup).expect("cgroup file");
        }
    }

    /// A fake container engine on `socket`: answers its next `answers` requests with 200 and
    /// `body`, then returns the request lines it got.
    fn fake_engine(
        socket: &Path,
        body: String,
        answers: usize,
    ) -> std::thread::JoinHandle<Vec<String>> {
        use std::io::{Read as _, Write as _};
        let listener = std::os::unix::net::UnixListener::bind(socket).expect("engine socket");
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..answers {
                let (mut stream, _) = listener.accept().expect("a request");
                let mut head = Vec::new();
                let mut byte = [0; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                requests.push(head.lines().next().unwrap_or_default().to_owned());
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}"
                );
            }
            requests
        })
    }

    /// A claude process `pid` of `uid` in cgroup `cgroup`, as discovery found it.
    fn process(pid: u32, uid: u32, cgroup: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            uid,
            start_time: 7,
            exe: PathBuf::from("/usr/local/bin/claude"),
            cgroup: cgroup.to_owned(),
            ..ProcessInfo::default()
        }
    }

    /// Discovery's verdict on process `info`, whose cgroup names `container`, once the engine's
    /// look (if any) is in.
    fn place(discovery: &mut Discovery, info: ProcessInfo, container: &Container) -> Found {
        assert!(discovery.container_named(container, info.pid));
        let placement = Placement::Container(container.clone());
        let native = (ClaudeKind::Native, None, None);
        discovery.found(info, native, placement, &PidTable::default())
    }

    fn docker() -> Container {
        Container {
            engine: instance::Engine::Docker,
            id: ID.to_owned(),
        }
    }

    #[test]
    fn a_container_takes_only_the_processes_its_engine_vouches_for() {
        let scratch = Scratch::new("discover-vouch");
        let socket = scratch.0.join("docker.sock");
        // The engine's main process of the container, in the container's own scope.
        scratch.with_cgroup(4242, &format!("0::/system.slice/docker-{ID}.scope\n"));
        let engine = fake_engine(
            &socket,
            format!(r#"{{"Id":"{ID}","Name":"/reviewer","State":{{"Running":true,"Pid":4242}}}}"#),
            1,
        );
        let mut discovery = Discovery::new(scratch.0.join("proc"), Vec::new())
            .with_docker_socket(socket)
            .deferring_looks();
        let container = docker();
        // Two processes naming the container wait for one look, run off the caller.
        assert!(!discovery.container_named(&container, 100));
        assert!(!discovery.container_named(&container, 101));
        let mut looks = discovery.take_looks();
        assert_eq!(looks.len(), 1, "{looks:?}");
        let look = looks.pop().expect("a look");
        let looked = std::thread::spawn(move || look.run())
            .join()
            .expect("the look ran");
        assert_eq!(discovery.learn(looked), vec![100, 101]);
        assert_eq!(
            engine.join().expect("the engine ran"),
            vec![format!("GET /containers/{ID}/json HTTP/1.0")]
        );

        // A process in the container's cgroup (or below it) is the container's.
        let real = process(100, 0, &format!("0::/system.slice/docker-{ID}.scope\n"));
        let found = place(&mut discovery, real, &container);
        assert_eq!(found.instance, InstanceId::container("docker:reviewer"));
        assert_eq!(found.placement, Placement::Container(container.clone()));
        let below = process(102, 0, &format!("0::/system.slice/docker-{ID}.scope/app\n"));
        let found = place(&mut discovery, below, &container);
        assert_eq!(found.instance, InstanceId::container("docker:reviewer"));

        // A scope named after it under a unit delegated to a user is not: watched per
        // process, no supervisor acts for it, the engine not asked again.
        let forged = process(
            101,
            1000,
            &format!("0::/system.slice/evil.service/docker-{ID}.scope\n"),
        );
        let found = place(&mut discovery, forged, &container);
        assert_eq!(found.instance, InstanceId::pid(101));
        assert_eq!(found.placement, Placement::Unsupervised);
        assert!(discovery.take_looks().is_empty());
    }

    #[test]
    fn without_the_engines_word_a_container_is_named_by_its_id_and_asked_again() {
        let scratch = Scratch::new("discover-unvouched");
        scratch.with_cgroup(1, "0::/init.scope\n");
        let proc_root = scratch.0.join("proc");
        let by_id = InstanceId::container(format!("docker:{}", &ID[..12]));
        let container = docker();
        let real = || process(100, 0, &format!("0::/system.slice/docker-{ID}.scope\n"));
        // No engine answers (asked in place, as `trace` does): named by the id, as before.
        let mut discovery = Discovery::new(&proc_root, Vec::new())
            .with_docker_socket(scratch.0.join("absent.sock"));
        assert_eq!(place(&mut discovery, real(), &container).instance, by_id);
        // The engine says the container runs no process (`State.Pid` 0), or names a main
        // process that is gone: nothing to judge by, named by the id, asked again for the next.
        for (n, pid) in [0, 4343].into_iter().enumerate() {
            let socket = scratch.0.join(format!("docker-{n}.sock"));
            let engine = fake_engine(
                &socket,
                format!(r#"{{"Id":"{ID}","Name":"/reviewer","State":{{"Pid":{pid}}}}}"#),
                2,
            );
            let mut discovery = Discovery::new(&proc_root, Vec::new()).with_docker_socket(socket);
            assert_eq!(place(&mut discovery, real(), &container).instance, by_id);
            let again = process(103, 0, &format!("0::/system.slice/docker-{ID}.scope\n"));
            assert_eq!(place(&mut discovery, again, &container).instance, by_id);
            assert_eq!(
                engine.join().expect("the engine ran").len(),
                2,
                "asked twice"
            );
        }
    }

    /// Process `pid` in the fake `/proc` of `scratch`, running `exe` since `start_time`.
    fn fake_process(scratch: &Scratch, pid: u32, exe: &str, start_time: u64) {
        let dir = scratch.0.join("proc").join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("process directory");
        let mut stat = format!("{pid} (claude) S 1");
        for _ in 0..17 {
            stat.push_str(" 0");
        }
        std::fs::write(dir.join("stat"), format!("{stat} {start_time} 0\n")).expect("stat");
        std::fs::write(dir.join("cgroup"), "0::/user.slice\n").expect("cgroup");
        std::fs::write(
            dir.join("status"),
            "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\n",
        )
        .expect("status");
        std::fs::write(dir.join("cmdline"), format!("{exe}\0")).expect("cmdline");
        let _ = std::fs::remove_file(dir.join("exe"));
        std::os::unix::fs::symlink(exe, dir.join("exe")).expect("exe link");
    }

    #[test]
    fn a_known_process_is_judged_against_the_table_lent_to_it() {
        let scratch = Scratch::new("discover-table");
        let mut discovery = Discovery::new(scratch.0.join("proc"), Vec::new());
        let mut known = PidTable::default();
        fake_process(&scratch, 100, "/opt/nowhere/bin/claude", 7);
        let Checked::Found(found) = discovery.check(100, &known) else {
            panic!("a process named claude is found");
        };
        assert_eq!(
            (found.instance.clone(), found.info.start_time),
            (InstanceId::pid(100), 7)
        );
        // Not in the table (the core was not told, or forgot it): found again.
        assert!(matches!(discovery.check(100, &known), Checked::Found(_)));
        known.insert(found, Standing::Watched);
        // In the table, unchanged: nothing to tell.
        assert!(nothing(discovery.check(100, &known)));
        // Its pid reused by another claude: found anew.
        fake_process(&scratch, 100, "/opt/nowhere/bin/claude", 9);
        let checked = discovery.check(100, &known);
        let Checked::Found(again) = checked else {
            panic!("a new process on a known pid is found: {checked:?}");
        };
        assert_eq!(again.info.start_time, 9);
        known.insert(again, Standing::Watched);
        // It exec'd something that is not Claude Code: it left.
        fake_process(&scratch, 100, "/opt/nowhere/bin/sleep", 9);
        assert!(matches!(discovery.check(100, &known), Checked::Left));
        known.remove(100);
        assert!(nothing(discovery.check(100, &known)));
    }

    #[test]
    fn scan_of_this_machine_finds_no_test_runner() {
        // The test binary is not claude: a scan must not call it an instance.
        let mut discovery = Discovery::new("/proc", Vec::new());
        let me = std::process::id();
        let found = discovery.scan(&mut PidTable::default());
        assert!(found.iter().all(|f| f.info.pid != me));
        assert!(nothing(discovery.check(me, &PidTable::default())));
    }

    /// An exec read after its process is gone is judged by its path, only when the file there
    /// is the image: not Claude Code goes to the kernel's filter from its second exec on (as
    /// for a live process), an interpreter is reported at once, and a key the file does not
    /// have (another namespace's file, a file replaced) or a relative path is never judged.
    #[test]
    fn an_exec_whose_process_is_gone_is_judged_by_its_path_when_the_file_is_the_image() {
        let dir = std::env::temp_dir().join(format!("cw-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = |path: &Path| {
            let id = untrusted::identity(path, Resolve::NoFollow).unwrap();
            (image::key_of(&id), id.uid)
        };
        let tool = dir.join("tool");
        std::fs::copy("/bin/true", &tool).unwrap();
        let (image, owner) = key(&tool);
        let mut discovery = Discovery::new("/proc", vec![]);
        let known = PidTable::default();
        // No process has this pid (above the kernel's largest pid_max).
        let gone = 1 << 23;
        let exec = |image, path: &Path| Exec {
            image,
            path: Some(path.to_owned()),
            uid: 1000,
        };
        assert!(nothing(discovery.exec(
            gone,
            Some(&exec(image, &tool)),
            &known
        )));
        assert!(
            discovery.take_judged_images().is_empty(),
            "a program run once takes no room"
        );
        assert!(nothing(discovery.exec(
            gone,
            Some(&exec(image, &tool)),
            &known
        )));
        assert_eq!(
            discovery.take_judged_images(),
            [(image, owner, verdict::NOT_CLAUDE)]
        );

        // The path's file is not the image: never judged, however often.
        let other = ImageKey {
            size: image.size + 1,
            ..image
        };
        for _ in 0..3 {
            discovery.exec(gone, Some(&exec(other, &tool)), &known);
        }
        // Relative: where it led is gone with the process.
        let relative = ImageKey {
            ino: image.ino + 1,
            ..image
        };
        for _ in 0..3 {
            discovery.exec(gone, Some(&exec(relative, Path::new("tool"))), &known);
        }
        assert!(discovery.take_judged_images().is_empty());

        // An interpreter (its script decides): reported at once, never kept in the kernel.
        let node = dir.join("node");
        std::fs::copy("/bin/true", &node).unwrap();
        let (interpreter, owner) = key(&node);
        for _ in 0..2 {
            discovery.exec(gone, Some(&exec(interpreter, &node)), &known);
        }
        assert_eq!(
            discovery.take_judged_images(),
            [
                (interpreter, owner, verdict::REPORT_NOW),
                (interpreter, owner, verdict::REPORT_NOW)
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
