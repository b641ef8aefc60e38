//! supervisord: its XML-RPC interface over its unix socket (`supervisor.getProcessInfo`, then
//! `stopProcess` and `startProcess`: the API has no restart call): a small request writer, and
//! a response parser on quick-xml's events, bounded in size (`MAX_RESPONSE`) and nesting.
//!
//! `SUPERVISOR_PROCESS_NAME` / `SUPERVISOR_GROUP_NAME` / `SUPERVISOR_SERVER_URL` in a process's
//! environment only *suggest* supervisord (any process can set them). So:
//! - the socket is one that the supervisord among the process's ancestors really listens on
//!   (its fds against its `/proc/<pid>/net/unix`), unless one is configured
//!   (`supervisor = { kind = "supervisord", url = "unix:///run/supervisor.sock" }`); with no
//!   usable URL in the environment, the ancestor's only listening socket is used;
//! - right before acting, `getProcessInfo(<group>:<program>)` must answer `RUNNING` with `pid`
//!   equal to the latched pid or one of its nearest parents (a wrapper shell,
//!   [`super::is_self_or_wrapper`]), otherwise the restart is refused
//!   ([`SuperviseError::NotRunBy`]).
//!
//! supervisord's socket is usually root's: the daemon talks to it as root, and the ownership
//! check is what keeps a faked environment from steering it at another program.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use quick_xml::escape::{escape, unescape};
use quick_xml::events::Event;
use quick_xml::name::QName;
use quick_xml::reader::Reader;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::{RestartFailure, RestartOutcome, Restarter, SuperviseError, Target, verify_start_time};
use crate::instance::Placement;
use crate::instance::proc;
pub use claude_watch_core::supervise::{SupervisordRestarter, process_name};

/// Most bytes of one XML-RPC response read.
const MAX_RESPONSE: u64 = 256 * 1024;
/// Most bytes of `/proc/<pid>/net/unix` read.
const MAX_NET_UNIX: u64 = 4 * 1024 * 1024;
/// Most open files of supervisord looked at.
const MAX_FDS: usize = 4096;
/// How far up the parent chain supervisord is looked for.
const MAX_ANCESTRY: usize = 8;
/// Deepest nesting of XML-RPC values parsed.
const MAX_DEPTH: usize = 8;

/// The socket path of a `unix://` server URL.
pub fn unix_socket_of(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("unix://")?;
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// A parameter of an XML-RPC call.
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    /// `<string>`.
    Str(&'a str),
    /// `<boolean>`.
    Bool(bool),
}

/// An XML-RPC value, as far as supervisord's answers need.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `<int>`, `<i4>`.
    Int(i64),
    /// `<boolean>`.
    Bool(bool),
    /// `<string>` or bare text.
    Str(String),
    /// `<struct>`, members in order.
    Struct(Vec<(String, Value)>),
    /// `<array>`.
    Array(Vec<Value>),
    /// Anything else (`<double>`, `<dateTime.iso8601>`, `<base64>`), unread.
    Other,
}

impl Value {
    /// The member `name` of a struct.
    pub fn member(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// An XML-RPC answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// `<params><param><value>`.
    Value(Value),
    /// `<fault>`.
    Fault {
        /// `faultCode` (supervisord's: 10 `BAD_NAME`, 60 `ALREADY_STARTED`, 70 `NOT_RUNNING`, ...).
        code: i64,
        /// `faultString`.
        message: String,
    },
}

/// The HTTP request of an XML-RPC call of `method` with `params`.
pub fn request(method: &str, params: &[Param<'_>]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\n<methodCall><methodName>{}</methodName><params>",
        escape(method)
    );
    for p in params {
        match p {
            Param::Str(s) => body.push_str(&format!(
                "<param><value><string>{}</string></value></param>",
                escape(*s)
            )),
            Param::Bool(b) => body.push_str(&format!(
                "<param><value><boolean>{}</boolean></value></param>",
                u8::from(*b)
            )),
        }
    }
    body.push_str("</params></methodCall>\n");
    let mut out = format!(
        "POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nUser-Agent: claude-watch\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Why an HTTP answer is not an XML-RPC response we can read (observed text in it is bounded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlRpcError {
    /// The answer is not UTF-8.
    #[error("response is not UTF-8")]
    NotUtf8,
    /// The HTTP head does not end.
    #[error("no end of HTTP headers")]
    NoHeadEnd,
    /// The HTTP status line is not `HTTP/1.x 200`.
    #[error("HTTP status {0:?}")]
    Status(String),
    /// An element was expected and is not there.
    #[error("expected <{0}>")]
    Open(String),
    /// An element does not end where it should.
    #[error("expected </{0}>")]
    Close(String),
    /// The answer ends before its elements do.
    #[error("unterminated answer")]
    Unterminated,
    /// Not well-formed XML (quick-xml's words).
    #[error("bad XML: {0}")]
    Xml(String),
    /// Values nest deeper than is read.
    #[error("values nested too deep")]
    TooDeep,
    /// An `<int>` that is not a 64-bit integer.
    #[error("bad int {0:?}")]
    BadInt(String),
    /// An entity that XML does not define.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
}

/// At most 80 characters of observed text, for an error.
fn bounded(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The answer in an HTTP response carrying an XML-RPC response. `Err` says what is wrong.
pub fn parse_response(raw: &[u8]) -> Result<Answer, XmlRpcError> {
    let text = std::str::from_utf8(raw).map_err(|_| XmlRpcError::NotUtf8)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(XmlRpcError::NoHeadEnd)?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(XmlRpcError::Status(bounded(status)));
    }
    let mut x = Xml {
        reader: Reader::from_str(body),
        back: None,
    };
    x.reader.config_mut().expand_empty_elements = true;
    x.open("methodResponse")?;
    let answer = match x.start()?.as_deref() {
        Some("fault") => {
            let v = x.value_element(0)?;
            x.close("fault")?;
            Answer::Fault {
                code: v
                    .member("faultCode")
                    .and_then(Value::as_int)
                    .unwrap_or_default(),
                message: v
                    .member("faultString")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }
        }
        Some("params") => {
            x.open("param")?;
            let v = x.value_element(0)?;
            x.close("param")?;
            x.close("params")?;
            Answer::Value(v)
        }
        _ => return Err(XmlRpcError::Open("params".into())),
    };
    x.close("methodResponse")?;
    Ok(answer)
}

/// An XML-RPC answer read with quick-xml: elements and their text (entities decoded), the
/// declaration, comments and processing instructions skipped.
struct Xml<'a> {
    reader: Reader<&'a [u8]>,
    /// An event read and given back.
    back: Option<Event<'a>>,
}

impl<'a> Xml<'a> {
    fn next(&mut self) -> Result<Event<'a>, XmlRpcError> {
        if let Some(event) = self.back.take() {
            return Ok(event);
        }
        loop {
            match self.reader.read_event() {
                Ok(Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_)) => {}
                Ok(Event::Eof) => return Err(XmlRpcError::Unterminated),
                Ok(event) => return Ok(event),
                Err(e) => return Err(XmlRpcError::Xml(bounded(&e.to_string()))),
            }
        }
    }

    /// The text up to the next tag, entities decoded (empty when there is none).
    fn text(&mut self) -> Result<String, XmlRpcError> {
        let mut out = String::new();
        loop {
            match self.next()? {
                Event::Text(t) => out.push_str(&t.xml10_content()),
                Event::CData(t) => out.push_str(&t.xml10_content()),
                Event::GeneralRef(r) => out.push_str(
                    &unescape(&format!("&{};", &*r))
                        .map_err(|_| XmlRpcError::UnknownEntity(bounded(&r)))?,
                ),
                tag => {
                    self.back = Some(tag);
                    return Ok(out);
                }
            }
        }
    }

    /// The name of the element that starts next, the text before it skipped; `None` when an
    /// element ends instead.
    fn start(&mut self) -> Result<Option<String>, XmlRpcError> {
        self.text()?;
        match self.next()? {
            Event::Start(e) => Ok(Some(e.name().as_ref().to_owned())),
            end => {
                self.back = Some(end);
                Ok(None)
            }
        }
    }

    fn open(&mut self, tag: &str) -> Result<(), XmlRpcError> {
        match self.start()? {
            Some(name) if name == tag => Ok(()),
            _ => Err(XmlRpcError::Open(tag.into())),
        }
    }

    fn close(&mut self, tag: &str) -> Result<(), XmlRpcError> {
        self.text()?;
        match self.next()? {
            Event::End(e) if e.name().as_ref() == tag => Ok(()),
            _ => Err(XmlRpcError::Close(tag.into())),
        }
    }

    /// A `<value>` element, nested `depth` deep.
    fn value_element(&mut self, depth: usize) -> Result<Value, XmlRpcError> {
        self.open("value")?;
        self.value(depth)
    }

    /// A value, after its `<value>`, through its `</value>`.
    fn value(&mut self, depth: usize) -> Result<Value, XmlRpcError> {
        if depth > MAX_DEPTH {
            return Err(XmlRpcError::TooDeep);
        }
        // Bare text is a string; whitespace before a typed value is not.
        let text = self.text()?;
        let Some(tag) = self.start()? else {
            self.close("value")?;
            return Ok(Value::Str(text));
        };
        let value = match tag.as_str() {
            "string" => Value::Str(self.text()?),
            "int" | "i4" => {
                let t = self.text()?;
                let int = t.trim().parse();
                Value::Int(int.map_err(|_| XmlRpcError::BadInt(bounded(&t)))?)
            }
            "boolean" => Value::Bool(self.text()?.trim() == "1"),
            "struct" => {
                let mut members = Vec::new();
                while let Some(member) = self.start()? {
                    if member != "member" {
                        return Err(XmlRpcError::Open("member".into()));
                    }
                    self.open("name")?;
                    let name = self.text()?;
                    self.close("name")?;
                    members.push((name, self.value_element(depth + 1)?));
                    self.close("member")?;
                }
                Value::Struct(members)
            }
            "array" => {
                self.open("data")?;
                let mut items = Vec::new();
                while let Some(item) = self.start()? {
                    if item != "value" {
                        return Err(XmlRpcError::Open("value".into()));
                    }
                    items.push(self.value(depth + 1)?);
                }
                self.close("data")?;
                Value::Array(items)
            }
            // A type we do not read (`<double>`, `<base64>`, ...): skipped to its end.
            _ => {
                let skipped = self.reader.read_to_end(QName(&tag));
                skipped.map_err(|e| XmlRpcError::Xml(bounded(&e.to_string())))?;
                self.close("value")?;
                return Ok(Value::Other);
            }
        };
        self.close(&tag)?;
        self.close("value")?;
        Ok(value)
    }
}

/// The listening unix sockets among `inodes` in the content of a `/proc/<pid>/net/unix`
/// (`Num RefCount Protocol Flags Type St Inode Path`; flag `00010000` is `__SO_ACCEPTCON`).
pub fn listening_sockets(net_unix: &str, inodes: &HashSet<u64>) -> Vec<PathBuf> {
    net_unix
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let inode: u64 = f.get(6)?.parse().ok()?;
            let path = f.get(7)?;
            (flags & 0x0001_0000 != 0 && inodes.contains(&inode) && path.starts_with('/'))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Whether a command line runs supervisord (`/usr/bin/python3 /usr/bin/supervisord -c ...`,
/// or `supervisord` itself).
pub fn is_supervisord(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .take(2)
        .any(|a| Path::new(a).file_name().is_some_and(|f| f == "supervisord"))
}

/// The supervisord among `pid`'s ancestors: its pid, the unix sockets it listens on (as bound)
/// and its owner.
fn supervisord_ancestor(pid: u32) -> Option<(u32, Vec<PathBuf>, u32)> {
    let root = Path::new(proc::ROOT);
    let sup = proc::read_ancestry(root, pid, MAX_ANCESTRY)
        .into_iter()
        .find(|p| is_supervisord(&p.cmdline))?;
    let inodes = proc::socket_inodes(sup.pid, MAX_FDS);
    // Its own network namespace's sockets.
    let raw = proc::read_file(root, sup.pid, "net/unix", MAX_NET_UNIX).ok()?;
    Some((
        sup.pid,
        listening_sockets(&String::from_utf8_lossy(&raw), &inodes),
        sup.uid,
    ))
}

/// Whether a listening socket bound at `bound` is the one now at `path`: the same path, or
/// supervisord's own temporary name for it (it binds `<path>.<its pid>`, then renames it to
/// `<path>`; `/proc/net/unix` keeps the bound name).
pub fn same_socket(bound: &Path, path: &Path) -> bool {
    bound == path
        || bound
            .to_str()
            .and_then(pid_suffixed)
            .is_some_and(|b| path.to_str() == Some(b))
}

/// `bound` without supervisord's temporary `.<pid>` suffix.
fn final_name(bound: &Path) -> PathBuf {
    bound
        .to_str()
        .and_then(pid_suffixed)
        .map_or_else(|| bound.to_owned(), PathBuf::from)
}

/// The name before a `.<digits>` suffix, when `name` has one.
fn pid_suffixed(name: &str) -> Option<&str> {
    let (stem, n) = name.rsplit_once('.')?;
    (!n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())).then_some(stem)
}

/// Why no supervisord socket can be talked to for a process ([`choose_socket`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSocket {
    /// No ancestor of the process is a supervisord.
    #[error("no supervisord among the process's ancestors")]
    NoAncestor,
    /// The ancestor does not listen on the socket the process's environment names.
    #[error("supervisord {pid} does not listen on {path}")]
    NotListening {
        /// The supervisord.
        pid: u32,
        /// The socket the environment names.
        path: PathBuf,
    },
    /// The ancestor listens on no unix socket.
    #[error("supervisord {pid} listens on no unix socket")]
    NoneListening {
        /// The supervisord.
        pid: u32,
    },
    /// The ancestor listens on several unix sockets and the environment names none.
    #[error("supervisord {pid} listens on several unix sockets and the process names none")]
    Several {
        /// The supervisord.
        pid: u32,
    },
}

/// Which socket to talk to: the environment's when the supervisord ancestor listens on it,
/// else that ancestor's only listening socket.
///
/// # Errors
/// [`NoSocket`] when neither is there.
pub fn choose_socket(
    env_url: Option<&str>,
    ancestor: Option<(u32, &[PathBuf])>,
) -> Result<(u32, PathBuf), NoSocket> {
    let Some((pid, listening)) = ancestor else {
        return Err(NoSocket::NoAncestor);
    };
    match env_url.and_then(unix_socket_of) {
        Some(path) if listening.iter().any(|b| same_socket(b, &path)) => Ok((pid, path)),
        Some(path) => Err(NoSocket::NotListening { pid, path }),
        None => match listening {
            [only] => Ok((pid, final_name(only))),
            [] => Err(NoSocket::NoneListening { pid }),
            _ => Err(NoSocket::Several { pid }),
        },
    }
}

/// `path` as seen from this process, for a path in `pid`'s mount namespace.
fn through_root(pid: u32, path: &Path) -> PathBuf {
    let same = |a: &str, b: &str| {
        let (a, b) = (std::fs::metadata(a), std::fs::metadata(b));
        matches!((a, b), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
    };
    if same(&format!("/proc/{pid}/root"), "/proc/self/root") {
        path.to_owned()
    } else {
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl Restarter for SupervisordRestarter {
    #[tracing::instrument(skip_all, fields(instance = %target.instance, pid = target.pid))]
    async fn restart(&self, target: &Target) -> Result<RestartOutcome, SuperviseError> {
        let Placement::Supervisord {
            program,
            group,
            url,
        } = &target.placement
        else {
            return Err(SuperviseError::WrongPlacement {
                instance: target.instance.clone(),
                supervisor: "supervisord",
            });
        };
        let name = process_name(program, group.as_deref());
        let refused = |reason: String| SuperviseError::Refused {
            instance: target.instance.clone(),
            reason,
        };
        let socket = match self.url.as_deref() {
            Some(configured) => unix_socket_of(configured)
                .ok_or_else(|| refused(format!("configured url {configured} is not unix://")))?,
            None => {
                let ancestor = supervisord_ancestor(target.pid);
                let (pid, path) = choose_socket(
                    url.as_deref(),
                    ancestor.as_ref().map(|(p, l, _)| (*p, l.as_slice())),
                )
                .map_err(|e| refused(e.to_string()))?;
                let socket = through_root(pid, &path);
                // The file there now must be a socket of supervisord's owner.
                let owner = ancestor.as_ref().map(|a| a.2);
                let ok = std::fs::metadata(&socket).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt as _;
                    m.file_type().is_socket() && Some(m.uid()) == owner
                });
                if !ok {
                    return Err(refused(format!(
                        "{} is not a socket of supervisord {pid}'s owner",
                        path.display()
                    )));
                }
                socket
            }
        };
        let supervisor = format!("supervisord at {}", socket.display());
        let not_run_by = |found: String| SuperviseError::NotRunBy {
            instance: target.instance.clone(),
            pid: target.pid,
            supervisor: supervisor.clone(),
            found,
        };
        let by_name = [Param::Str(&name)];
        let process_info = || call(self, &socket, "supervisor.getProcessInfo", &by_name);

        verify_start_time(target.pid, target.start_time)?;
        let info = match process_info().await {
            Err(SuperviseError::Fault { code: 10, .. }) => {
                return Err(not_run_by(format!("has no process {name}")));
            }
            other => other?,
        };
        let pid = info.member("pid").and_then(Value::as_int).unwrap_or(0);
        let state = info
            .member("statename")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The program itself, or a wrapper (`sh -c "claude ..."`) it runs around it.
        let main = u32::try_from(pid).unwrap_or(0);
        if !super::runs_under(main, target.pid) || state != "RUNNING" {
            return Err(not_run_by(format!("runs {name} as pid {pid} ({state})")));
        }

        for method in ["supervisor.stopProcess", "supervisor.startProcess"] {
            let done = call(
                self,
                &socket,
                method,
                &[Param::Str(&name), Param::Bool(true)],
            )
            .await?;
            if done != Value::Bool(true) {
                return Err(SuperviseError::RestartFailed {
                    unit: name.clone(),
                    source: RestartFailure::Supervisord {
                        method,
                        answer: format!("{done:?}"),
                    },
                });
            }
        }
        let new_pid = process_info()
            .await?
            .member("pid")
            .and_then(Value::as_int)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0 && *p != main);
        tracing::info!(process = %name, ?new_pid, "supervisord restarted the program");
        Ok(RestartOutcome::acted(
            None,
            new_pid,
            format!("supervisord stopped and started {name} ({supervisor})"),
        ))
    }
}

async fn call(
    r: &SupervisordRestarter,
    socket: &Path,
    method: &'static str,
    params: &[Param<'_>],
) -> Result<Value, SuperviseError> {
    let io = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(&request(method, params)).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(r.timeout, io).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(source)) => {
            return Err(SuperviseError::Socket {
                path: socket.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(SuperviseError::Timeout {
                what: format!("supervisord {method}"),
                timeout: r.timeout,
            });
        }
    };
    match parse_response(&raw) {
        Ok(Answer::Value(v)) => Ok(v),
        Ok(Answer::Fault { code, message }) => Err(SuperviseError::Fault {
            method,
            code,
            message,
        }),
        Err(source) => Err(SuperviseError::BadAnswer {
            supervisor: format!("supervisord {method}"),
            source: source.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_group_qualified_only_in_a_group() {
        assert_eq!(process_name("agent", Some("agent")), "agent");
        assert_eq!(process_name("agent", None), "agent");
        assert_eq!(process_name("agent_01", Some("fleet")), "fleet:agent_01");
    }

    #[test]
    fn unix_urls() {
        assert_eq!(
            unix_socket_of("unix:///run/supervisor.sock"),
            Some(PathBuf::from("/run/supervisor.sock"))
        );
        assert_eq!(unix_socket_of("http://127.0.0.1:9001"), None);
        assert_eq!(unix_socket_of("unix://relative"), None);
    }

    #[test]
    fn requests_escape_their_strings() {
        let r = request(
            "supervisor.stopProcess",
            &[Param::Str("a</string>&"), Param::Bool(true)],
        );
        let r = String::from_utf8(r).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /RPC2 HTTP/1.0\r\n"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        assert!(body.contains(
            "<methodName>supervisor.stopProcess</methodName><params><param><value><string>a&lt;/string&gt;&amp;</string></value></param><param><value><boolean>1</boolean></value></param>"
        ));
    }

    /// As supervisord 4.2 sends them (Python's xmlrpc.client).
    const INFO: &str = "HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 0\r\n\r\n<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n<member>\n<name>name</name>\n<value><string>agent</string></value>\n</member>\n<member>\n<name>group</name>\n<value><string>agent</string></value>\n</member>\n<member>\n<name>start</name>\n<value><int>1764500000</int></value>\n</member>\n<member>\n<name>description</name>\n<value><string>pid 4242, uptime 0:00:05 &amp; more</string></value>\n</member>\n<member>\n<name>pid</name>\n<value><int>4242</int></value>\n</member>\n<member>\n<name>statename</name>\n<value><string>RUNNING</string></value>\n</member>\n<member>\n<name>spawnerr</name>\n<value><string></string></value>\n</member>\n</struct></value>\n</param>\n</params>\n</methodResponse>\n";

    #[test]
    fn process_info_is_parsed() {
        let Answer::Value(v) = parse_response(INFO.as_bytes()).unwrap() else {
            panic!("not a value")
        };
        assert_eq!(v.member("pid"), Some(&Value::Int(4242)));
        assert_eq!(v.member("statename"), Some(&Value::Str("RUNNING".into())));
        assert_eq!(
            v.member("description"),
            Some(&Value::Str("pid 4242, uptime 0:00:05 & more".into()))
        );
        assert_eq!(v.member("spawnerr"), Some(&Value::Str(String::new())));
    }

    #[test]
    fn faults_booleans_and_bare_strings() {
        let fault = "HTTP/1.0 200 OK\r\n\r\n<?xml version='1.0'?>\n<methodResponse>\n<fault>\n<value><struct>\n<member>\n<name>faultCode</name>\n<value><int>10</int></value>\n</member>\n<member>\n<name>faultString</name>\n<value><string>BAD_NAME: nosuch</string></value>\n</member>\n</struct></value>\n</fault>\n</methodResponse>\n";
        assert_eq!(
            parse_response(fault.as_bytes()).unwrap(),
            Answer::Fault {
                code: 10,
                message: "BAD_NAME: nosuch".into()
            }
        );
        let yes = "HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param><value><boolean>1</boolean></value></param></params></methodResponse>";
        assert_eq!(
            parse_response(yes.as_bytes()).unwrap(),
            Answer::Value(Value::Bool(true))
        );
        let bare = "HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param><value> a &#60;b&#x3e; </value></param></params></methodResponse>";
        assert_eq!(
            parse_response(bare.as_bytes()).unwrap(),
            Answer::Value(Value::Str(" a <b> ".into()))
        );
        let array = "HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param><value><array><data><value><int>1</int></value><value><double>2.5</double></value></data></array></value></param></params></methodResponse>";
        assert_eq!(
            parse_response(array.as_bytes()).unwrap(),
            Answer::Value(Value::Array(vec![Value::Int(1), Value::Other]))
        );
    }

    #[test]
    fn comments_cdata_and_empty_elements_are_xml_too_and_errors_say_which() {
        let answer = |xml: &str| parse_response(format!("HTTP/1.0 200 OK\r\n\r\n{xml}").as_bytes());
        let ok = "<?xml version='1.0'?><!-- c --><methodResponse><params><param><value><struct>\
                  <member><name>a</name><value><string><![CDATA[<x>]]></string></value></member>\
                  <member><name>b</name><value><string/></value></member>\
                  </struct></value></param></params></methodResponse>";
        let Ok(Answer::Value(v)) = answer(ok) else {
            panic!("{:?}", answer(ok))
        };
        assert_eq!(v.member("a"), Some(&Value::Str("<x>".into())));
        assert_eq!(v.member("b"), Some(&Value::Str(String::new())));
        let value = |v: &str| {
            answer(&format!(
                "<methodResponse><params><param>{v}</param></params></methodResponse>"
            ))
        };
        assert_eq!(
            value("<value>&bogus;</value>"),
            Err(XmlRpcError::UnknownEntity("bogus".into()))
        );
        assert!(matches!(
            value("<value><string>x</int></value>"),
            Err(XmlRpcError::Xml(_))
        ));
        let deep = format!(
            "{}{}",
            "<value><array><data>".repeat(9),
            "</data></array></value>".repeat(9)
        );
        assert!(value(&deep).is_ok(), "{:?}", value(&deep));
        let deeper = format!(
            "{}{}",
            "<value><array><data>".repeat(10),
            "</data></array></value>".repeat(10)
        );
        assert_eq!(value(&deeper), Err(XmlRpcError::TooDeep));
        assert_eq!(
            answer("<methodResponse><params>"),
            Err(XmlRpcError::Unterminated)
        );
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        for bad in [
            &b"HTTP/1.0 401 Unauthorized\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\n\r\n<methodResponse><params>",
            b"HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param><value><int>x</int></value></param></params></methodResponse>",
            b"HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param><value><string>&bogus;</string></value></param></params></methodResponse>",
            b"\xff\xfe",
            b"",
            b"HTTP/1.0 200 OK\r\n\r\n<",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
        let deep = format!(
            "HTTP/1.0 200 OK\r\n\r\n<methodResponse><params><param>{}{}</param></params></methodResponse>",
            "<value><array><data>".repeat(50),
            "</data></array></value>".repeat(50)
        );
        assert!(parse_response(deep.as_bytes()).is_err());
    }

    #[test]
    fn listening_sockets_are_read_from_net_unix() {
        let net = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 365005 /tmp/sup/supervisor.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 365006\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 999999 /run/other.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 365007 @abstract\n";
        let inodes: HashSet<u64> = [365_005, 365_006, 365_007].into();
        assert_eq!(
            listening_sockets(net, &inodes),
            [PathBuf::from("/tmp/sup/supervisor.sock")]
        );
    }

    #[test]
    fn the_socket_must_be_the_ancestors() {
        let listening = [PathBuf::from("/run/supervisor.sock")];
        assert_eq!(
            choose_socket(
                Some("unix:///run/supervisor.sock"),
                Some((7, listening.as_slice()))
            )
            .unwrap(),
            (7, PathBuf::from("/run/supervisor.sock"))
        );
        let elsewhere = choose_socket(
            Some("unix:///var/run/docker.sock"),
            Some((7, listening.as_slice())),
        )
        .unwrap_err();
        assert_eq!(
            elsewhere,
            NoSocket::NotListening {
                pid: 7,
                path: "/var/run/docker.sock".into()
            }
        );
        assert_eq!(
            elsewhere.to_string(),
            "supervisord 7 does not listen on /var/run/docker.sock"
        );
        assert_eq!(
            choose_socket(Some("unix:///run/supervisor.sock"), None),
            Err(NoSocket::NoAncestor)
        );
        // No usable URL: the only socket it listens on.
        assert_eq!(
            choose_socket(
                Some("http://127.0.0.1:9001"),
                Some((7, listening.as_slice()))
            )
            .unwrap()
            .1,
            PathBuf::from("/run/supervisor.sock")
        );
        assert_eq!(
            choose_socket(None, Some((7, &[]))),
            Err(NoSocket::NoneListening { pid: 7 })
        );
        let two = [listening[0].clone(), PathBuf::from("/run/other.sock")];
        assert_eq!(
            choose_socket(None, Some((7, two.as_slice()))),
            Err(NoSocket::Several { pid: 7 })
        );
        // supervisord's bind-then-rename name.
        let bound = [PathBuf::from("/run/supervisor.sock.812")];
        assert_eq!(
            choose_socket(
                Some("unix:///run/supervisor.sock"),
                Some((7, bound.as_slice()))
            )
            .unwrap()
            .1,
            PathBuf::from("/run/supervisor.sock")
        );
        assert_eq!(
            choose_socket(None, Some((7, bound.as_slice()))).unwrap().1,
            PathBuf::from("/run/supervisor.sock")
        );
        assert!(
            choose_socket(Some("unix:///run/supervisor"), Some((7, bound.as_slice()))).is_err()
        );
        assert!(!same_socket(
            Path::new("/run/supervisor.sock.x1"),
            Path::new("/run/supervisor.sock")
        ));
        assert!(!same_socket(
            Path::new("/run/supervisor.sock."),
            Path::new("/run/supervisor.sock")
        ));
    }

    #[test]
    fn supervisord_is_recognised_by_its_script() {
        let c = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(is_supervisord(&c(&[
            "/usr/bin/python3",
            "/usr/bin/supervisord",
            "-n"
        ])));
        assert!(is_supervisord(&c(&["supervisord", "-c", "x"])));
        assert!(!is_supervisord(&c(&[
            "/usr/bin/python3",
            "-c",
            "supervisord"
        ])));
        assert!(!is_supervisord(&c(&["/usr/bin/supervisorctl"])));
    }
}
