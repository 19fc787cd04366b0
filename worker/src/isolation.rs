//! A memory bound per parse. Threads share one address space, so the only way to stop a file
//! that makes a parser allocate without end, without losing the whole worker, is a process:
//! document formats with complex readers (PDF, Office, HTML, images) are parsed by a child,
//! `docfleet-worker engine`, under `RLIMIT_DATA` (and `RLIMIT_CPU` as a backstop for the item
//! deadline). `RLIMIT_DATA` rather than `RLIMIT_AS`: the allocator reserves large address
//! ranges it never touches, which `RLIMIT_AS` would count. Past the bound an allocation fails, the child aborts, and only that item fails,
//! with a message that says why. Plain text, Markdown and CSV up to 1 MiB stay in-process:
//! their readers are linear and a child would cost more than the parse.
//!
//! The child also runs without the worker's environment and, where the system allows, in
//! network and user namespaces of its own (`unshare`): no credentials and no network reach
//! code that reads hostile files.
//!
//! A child serves one document after another, so a document pays for a request rather than
//! a process (two `exec`s, a namespace, the sandbox, the allocator's start). What one
//! document leaves behind must not reach another's, so a child is kept only while nothing
//! went wrong: any failure (an error answer, a crash, a deadline, a bound) ends it, and the
//! next document gets a fresh one. A child serves one project only (a parser a hostile file
//! took over cannot read the next project's documents), at most [`DOCS_PER_CHILD`]
//! documents, and is retired once its data segment has grown past half the memory bound (the
//! allocator keeps what it freed for the next document, and `RLIMIT_DATA` counts it; a child
//! starts at about 75 MB).
//!
//! Protocol: per document, the parent writes one JSON line (`name`, `request`, `size`) and
//! then the file's `size` bytes to the child's stdin (copied by the kernel from the stored
//! file: the worker does not hold them); the child answers one JSON line on stdout,
//! `{"ok": [Parsed, image names]}` or `{"error": message}`. At the end of its stdin the child
//! exits.

use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::children::{Serving, Unanswered};
use crate::input::Input;
use crate::parse::{self, ParseError, ParseRequest, Parsed};

/// Documents one child parses before a fresh one takes its place.
pub const DOCS_PER_CHILD: u32 = 100;

/// An idle child this long is ended rather than kept.
const IDLE: Duration = Duration::from_secs(60);

/// How parses are bounded; one per worker process, shared by its engine threads.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// The worker binary (it serves `engine`).
    binary: PathBuf,
    /// Address-space bound of one parse.
    memory_mb: u64,
    /// CPU-time bound of one parse.
    cpu_secs: u64,
    /// Children waiting for their project's next document, oldest first.
    idle: Arc<Mutex<VecDeque<Idle>>>,
    /// At most this many children wait.
    keep: usize,
}

#[derive(Debug)]
struct Idle {
    project: String,
    since: Instant,
    child: ParserChild,
}

/// A running parser child and how many documents it parsed.
struct ParserChild {
    serving: Serving,
    served: u32,
}

impl std::fmt::Debug for ParserChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ParserChild({}, {} served)",
            self.serving.id(),
            self.served
        )
    }
}

impl Drop for ParserChild {
    /// Ends the child with its tools and removes what it left in its scratch folders,
    /// however its work ended.
    fn drop(&mut self) {
        let pid = self.serving.id();
        self.serving.kill();
        crate::ocr::remove_scratch_of(pid);
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    name: String,
    request: ParseRequest,
    /// Bytes of the file that follow the header line.
    size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    /// The parse, and the names of the images left in the child's `images` folder.
    Ok(Parsed, Vec<String>),
    Error(String),
}

/// Where in its private folder the child leaves the images it made.
fn images_folder(child_pid: u32) -> PathBuf {
    crate::sandbox::private_folder(child_pid).join("images")
}

/// The worker runs as root: its parser child then gets a network namespace without a user
/// namespace (root may) and drops to `nobody` itself, so that no parse runs as root, whose
/// processes no `RLIMIT_NPROC` binds.
fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `unshare`'s arguments for a parser child of this worker: a network namespace, and a user
/// namespace of its own unless the worker is root.
fn unshare_args() -> &'static [&'static str] {
    if as_root() {
        &["--net", "--"]
    } else {
        &["--user", "--map-root-user", "--net", "--"]
    }
}

/// Whether `unshare` can give a child a network namespace of its own (util-linux; root, or
/// unprivileged user namespaces): probed once. Where it cannot, the parser runs with the
/// worker's network (Landlock still refuses it TCP), and the worker says so once at start.
pub fn network_namespaces() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        use std::process::Stdio;
        let ok = Command::new("unshare")
            .args(unshare_args())
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(
                "The parser child cannot get a network namespace (unshare --net failed): \
                 it runs with the worker's network, without TCP."
            );
        }
        ok
    })
}

/// Plain text up to this size is read in-process; anything larger goes to the bounded child
/// like every other format, since its rows and pages are copied into several forms.
const IN_PROCESS_BYTES: usize = 1 << 20;

/// Files read in-process: small plain text, whose readers are linear.
fn in_process(format: &str, size: usize) -> bool {
    matches!(format, "text" | "markdown" | "csv") && size <= IN_PROCESS_BYTES
}

/// The data segment of process `pid` in bytes (`VmData`), as `RLIMIT_DATA` counts it.
fn data_segment(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmData:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Isolation {
    /// Parses with the worker binary at `binary` as the child, each document under
    /// `memory_mb` and `cpu_secs`, keeping up to `keep` idle children.
    pub fn new(binary: PathBuf, memory_mb: u64, cpu_secs: u64, keep: usize) -> Self {
        let idle: Arc<Mutex<VecDeque<Idle>>> = Arc::default();
        // Children idle past `IDLE` end even when no document comes to find them: a worker
        // between batches holds no parsers. The thread ends with the last handle.
        let watched = Arc::downgrade(&idle);
        let reaper = std::thread::Builder::new()
            .name("docfleet-idle-children".into())
            .spawn(move || loop {
                std::thread::sleep(IDLE / 6);
                let Some(idle) = watched.upgrade() else {
                    return;
                };
                let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|i| i.since.elapsed() < IDLE);
            });
        if let Err(error) = reaper {
            tracing::warn!(%error, "idle parser children are ended only when a document comes");
        }
        Self {
            binary,
            memory_mb,
            cpu_secs,
            idle,
            keep,
        }
    }

    /// Parses `input` of `project` within `timeout`, in a bounded child unless the format is
    /// small plain text: past the timeout, the child and everything it started are killed.
    pub fn parse(
        &self,
        project: &str,
        input: &Input,
        name: &str,
        req: &ParseRequest,
        timeout: Duration,
    ) -> Result<(Parsed, Vec<crate::images::Image>), ParseError> {
        let failed = |why: String| ParseError::Isolated(why);
        let size = usize::try_from(input.size()).unwrap_or(usize::MAX);
        if in_process(parse::detect(input.head(), name), size) {
            let bytes = input
                .bytes()
                .map_err(|e| failed(format!("reading the file: {e}")))?;
            return parse::parse_with_images(&bytes, name, req);
        }
        let mut child = match self.take(project) {
            Some(child) => child,
            None => self.start()?,
        };
        let header = serde_json::to_vec(&Header {
            name: name.to_owned(),
            request: req.clone(),
            size: input.size(),
        })
        .map_err(|e| failed(e.to_string()))?;
        // An answer is at most as large as the memory it was built in.
        let asked = child
            .serving
            .ask(timeout, self.memory_mb.saturating_mul(1 << 20), |stdin| {
                stdin.write_all(&header)?;
                stdin.write_all(b"\n")?;
                let sent = input.copy_into(stdin)?;
                if sent == input.size() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("the stored file changed size"))
                }
            });
        child.served += 1;
        let answer = match asked {
            Ok(line) => line,
            Err(Unanswered::Deadline) => {
                return Err(failed(format!(
                "the parser exceeded the {}s per-item deadline and was killed with its children",
                timeout.as_secs()
            )))
            }
            Err(Unanswered::TooLong) => {
                return Err(failed(format!(
                    "the parser's answer passed the memory bound of {} MB",
                    self.memory_mb
                )))
            }
            Err(Unanswered::Ended(e)) => {
                let (status, stderr) = child.serving.end();
                return Err(failed(self.died(status, &stderr, &e)));
            }
        };
        let pid = child.serving.id();
        match serde_json::from_slice::<Answer>(&answer) {
            Ok(Answer::Ok(parsed, names)) => {
                let folder = images_folder(pid);
                let images = crate::images::take(&folder, &names)?;
                let _ = std::fs::remove_dir_all(&folder);
                self.give_back(project, child);
                Ok((parsed, images))
            }
            Ok(Answer::Error(message)) => Err(failed(message)),
            Err(e) => Err(failed(format!(
                "unreadable answer from the parser process: {e}"
            ))),
        }
    }

    /// Why a child died, for the item's error.
    fn died(
        &self,
        status: Option<std::process::ExitStatus>,
        stderr: &str,
        pipe: &std::io::Error,
    ) -> String {
        let status = status.map_or_else(|| format!("pipe: {pipe}"), |s| s.to_string());
        if stderr.contains("memory allocation") {
            format!(
                "the parser exceeded the memory bound of {} MB on this file",
                self.memory_mb
            )
        } else if status.contains("SIGXCPU") || stderr.contains("CPU time") {
            format!(
                "the parser exceeded the CPU bound of {} s on this file",
                self.cpu_secs
            )
        } else {
            let tail: String = stderr
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            format!("the parser process died ({status}): {tail}")
        }
    }

    /// An idle child of `project`, if one waits.
    fn take(&self, project: &str) -> Option<ParserChild> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| i.since.elapsed() < IDLE);
        let at = idle.iter().position(|i| i.project == project)?;
        idle.remove(at).map(|i| i.child)
    }

    /// Keeps a child that answered well for its project's next document, unless it has
    /// served its share or grown.
    fn give_back(&self, project: &str, child: ParserChild) {
        let grown = data_segment(child.serving.id())
            .is_none_or(|bytes| bytes > self.memory_mb.saturating_mul(1 << 20) / 2);
        if child.served >= DOCS_PER_CHILD || grown || self.keep == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.keep {
            idle.pop_front();
        }
        idle.push_back(Idle {
            project: project.to_owned(),
            since: Instant::now(),
            child,
        });
    }

    /// Starts a parser child.
    fn start(&self) -> Result<ParserChild, ParseError> {
        // No network for code that reads hostile files: a namespace of its own, with only a
        // loopback that is down, where the system allows one.
        let mut cmd = if network_namespaces() {
            let mut c = Command::new("unshare");
            c.args(unshare_args()).arg(&self.binary);
            c
        } else {
            Command::new(&self.binary)
        };
        // The parser gets no credentials: only what it and its tools need to run.
        cmd.env_clear();
        for keep in [
            "PATH",
            "LANG",
            "LC_ALL",
            "TMPDIR",
            "TESSDATA_PREFIX",
            "HOME",
        ] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.arg("engine")
            .arg("--memory-mb")
            .arg(self.memory_mb.to_string())
            .arg("--cpu-secs")
            .arg(self.cpu_secs.to_string());
        // The process limit binds a child that is `nobody` or in a user namespace of its own
        // (where it counts that namespace's processes alone); a child of the worker's own
        // user would share it with every process of that user.
        if as_root() {
            cmd.arg("--as-nobody");
        }
        if as_root() || network_namespaces() {
            cmd.arg("--max-processes")
                .arg(crate::sandbox::MAX_PROCESSES.to_string());
        }
        // mimalloc reserves a 1 GiB arena up front, which RLIMIT_DATA counts: reserve less.
        cmd.env("MIMALLOC_ARENA_RESERVE", "16MiB");
        let serving = Serving::spawn(&mut cmd).map_err(|e| {
            ParseError::Isolated(format!(
                "could not start the parser process {}: {e}",
                self.binary.display()
            ))
        })?;
        Ok(ParserChild { serving, served: 0 })
    }
}

/// What a panic said, for the item's error message.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// CPU seconds this process has used (user and system, all threads).
fn cpu_used() -> u64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    usage.map_or(0, |u| {
        (u.user_time().tv_sec() + u.system_time().tv_sec()).max(0) as u64
    })
}

/// The child's side: `docfleet-worker engine`. Bounds itself, then reads requests and files
/// from stdin, parses each, and answers each on stdout, until its stdin ends.
pub fn serve_child(
    memory_mb: u64,
    cpu_secs: u64,
    confinement: crate::sandbox::Confinement,
) -> ExitCode {
    let bytes = memory_mb.saturating_mul(1024 * 1024);
    // No file the parser or its tools write (scratch renders) may pass 1 GiB.
    const MAX_FILE: u64 = 1 << 30;
    // The CPU bound is per document: the soft limit moves with each one, under a hard limit
    // for the child's whole life.
    let lifetime = cpu_secs
        .saturating_mul(u64::from(DOCS_PER_CHILD))
        .saturating_add(1);
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::DATA, bytes, bytes)
        .and_then(|()| rlimit::setrlimit(rlimit::Resource::CPU, cpu_secs, lifetime))
        .and_then(|()| rlimit::setrlimit(rlimit::Resource::FSIZE, MAX_FILE, MAX_FILE))
    {
        eprintln!("engine: could not set resource limits: {e}");
        return ExitCode::FAILURE;
    }
    // Named before the sandbox makes the private folder the child's TMPDIR.
    let images_dir = images_folder(std::process::id());
    if let Err(e) = crate::sandbox::confine(confinement) {
        eprintln!("engine: sandbox: {e}");
        return ExitCode::FAILURE;
    }
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("engine: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
        let Ok(header) = serde_json::from_slice::<Header>(&line) else {
            eprintln!("engine: no request header on stdin");
            return ExitCode::FAILURE;
        };
        let soft = cpu_used().saturating_add(cpu_secs).min(lifetime);
        if let Err(e) = rlimit::setrlimit(rlimit::Resource::CPU, soft, lifetime) {
            eprintln!("engine: could not set the CPU limit: {e}");
            return ExitCode::FAILURE;
        }
        let mut file = Vec::new();
        match (&mut stdin).take(header.size).read_to_end(&mut file) {
            Ok(n) if n as u64 == header.size => {}
            Ok(_) => {
                eprintln!("engine: the file ended early");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("engine: reading the file: {e}");
                return ExitCode::FAILURE;
            }
        }
        let answer = answer(&file, &header, &images_dir);
        let mut stdout = std::io::stdout().lock();
        let written = serde_json::to_writer(&mut stdout, &answer)
            .map_err(std::io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        if let Err(e) = written {
            eprintln!("engine: writing the answer: {e}");
            return ExitCode::FAILURE;
        }
    }
}

/// The child's answer to one document.
fn answer(file: &[u8], header: &Header, images_dir: &std::path::Path) -> Answer {
    #[cfg(feature = "fault-injection")]
    if let Some(answer) = fault(file) {
        return answer;
    }
    // A reader's panic (a malformed font map, say) is this file's failure, said as such.
    let parsed =
        std::panic::catch_unwind(|| parse::parse_with_images(file, &header.name, &header.request))
            .unwrap_or_else(|panic| {
                Err(ParseError::Isolated(format!(
                    "parser crashed: {}",
                    panic_message(panic.as_ref())
                )))
            });
    match parsed {
        Ok((parsed, images)) => match crate::images::leave(images_dir, images) {
            Ok(names) => Answer::Ok(parsed, names),
            Err(e) => Answer::Error(format!("could not keep the images: {e}")),
        },
        Err(e) => Answer::Error(e.to_string()),
    }
}

/// Test-only: what a file whose head carries a fault marker makes the child do.
#[cfg(feature = "fault-injection")]
fn fault(file: &[u8]) -> Option<Answer> {
    let head = &file[..file.len().min(64)];
    let has = |marker: &[u8]| head.windows(marker.len()).any(|w| w == marker);
    // A parse that waits on a tool that never finishes, as a hostile scan can make
    // `tesseract` do; the tool's pid goes to stderr for the test to find.
    if has(b"DOCFLEET-FAULT:GRANDKID") {
        if let Ok(mut tool) = std::process::Command::new("sleep").arg("3600").spawn() {
            eprintln!("engine: tool pid {}", tool.id());
            let _ = tool.wait();
        }
    }
    // Whether the parser can reach anything on the network, as its error.
    if has(b"DOCFLEET-FAULT:NETWORK") {
        let reach = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], 6379)),
            Duration::from_secs(2),
        );
        return Some(Answer::Error(format!(
            "network: {}",
            match reach {
                Ok(_) => "reachable".to_owned(),
                Err(e) => format!("unreachable ({e})"),
            }
        )));
    }
    // Whether the parser can read, and write beside, the path that follows the marker.
    if let Some(path) = marked(file, "DOCFLEET-FAULT:TOUCH ") {
        let read = std::fs::read(&path).map(|_| ()).map_err(|e| e.kind());
        let write = std::fs::write(format!("{path}.touched"), b"x").map_err(|e| e.kind());
        return Some(Answer::Error(format!(
            "touch: read {read:?}, write {write:?}"
        )));
    }
    // How many processes the parser could start (of 1,000 asked).
    if has(b"DOCFLEET-FAULT:FORKS") {
        let mut started = Vec::new();
        for _ in 0..1000 {
            match std::process::Command::new("sleep").arg("30").spawn() {
                Ok(c) => started.push(c),
                Err(_) => break,
            }
        }
        let answer = Answer::Error(format!("forks: {} started", started.len()));
        for c in &mut started {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Some(answer);
    }
    // What the parser's environment holds.
    if has(b"DOCFLEET-FAULT:ENVIRON") {
        let names: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        return Some(Answer::Error(format!("environment: {}", names.join(" "))));
    }
    // A file that allocates without end.
    if has(b"DOCFLEET-FAULT:MEMORY") {
        let mut hog: Vec<Vec<u8>> = Vec::new();
        loop {
            hog.push(vec![1u8; 64 << 20]);
        }
    }
    None
}

/// Test-only: the rest of the line after `marker` in the file's head, if it has the marker.
#[cfg(feature = "fault-injection")]
fn marked(file: &[u8], marker: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&file[..file.len().min(512)]);
    let rest = head.split_once(marker)?.1;
    Some(rest.lines().next().unwrap_or_default().trim().to_owned())
}
