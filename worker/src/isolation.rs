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
//! Protocol: the parent writes one JSON line (`name`, `request`) and then the file's bytes to
//! the child's stdin (copied by the kernel from the stored file: the worker does not hold
//! them); the child answers one JSON object on stdout, `{"ok": Parsed}` or
//! `{"error": message}`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use serde::{Deserialize, Serialize};

use crate::input::Input;
use crate::parse::{self, ParseError, ParseRequest, Parsed};

/// How parses are bounded; one per worker process.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// The worker binary (it serves `engine`).
    pub binary: PathBuf,
    /// Address-space bound of one parse.
    pub memory_mb: u64,
    /// CPU-time bound of one parse.
    pub cpu_secs: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    name: String,
    request: ParseRequest,
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

impl Isolation {
    /// Parses `input` within `timeout`, in a bounded child unless the format is small plain
    /// text: past the timeout, the child and everything it started are killed.
    pub fn parse(
        &self,
        input: &Input,
        name: &str,
        req: &ParseRequest,
        timeout: std::time::Duration,
    ) -> Result<(Parsed, Vec<crate::images::Image>), ParseError> {
        let failed = |why: String| ParseError::Isolated(why);
        let size = usize::try_from(input.size()).unwrap_or(usize::MAX);
        if in_process(parse::detect(input.head(), name), size) {
            let bytes = input
                .bytes()
                .map_err(|e| failed(format!("reading the file: {e}")))?;
            return parse::parse_with_images(&bytes, name, req);
        }
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
        cmd
            // mimalloc reserves a 1 GiB arena up front, which RLIMIT_DATA counts: reserve less.
            .env("MIMALLOC_ARENA_RESERVE", "16MiB")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut watched = crate::children::spawn(&mut cmd, timeout).map_err(|e| {
            failed(format!(
                "could not start the parser process {}: {e}",
                self.binary.display()
            ))
        })?;
        let child_pid = watched.child.id();
        let header = serde_json::to_vec(&Header {
            name: name.to_owned(),
            request: req.clone(),
        })
        .map_err(|e| failed(e.to_string()))?;
        if let Some(mut stdin) = watched.child.stdin.take() {
            // A child that dies while reading closes the pipe; its exit status says why.
            let _ = stdin
                .write_all(&header)
                .and_then(|()| stdin.write_all(b"\n"))
                .and_then(|()| input.copy_into(&mut stdin).map(drop));
        }
        // An answer is at most as large as the memory it was built in.
        let out = watched.wait_bounded(self.memory_mb.saturating_mul(1 << 20));
        // What the child left in its scratch folders goes with it, however it ended.
        let _scratch = ChildFolders(child_pid);
        let out = out.map_err(|e| match e {
            None => failed(format!(
                "the parser exceeded the {}s per-item deadline and was killed with its children",
                timeout.as_secs()
            )),
            Some(e) => failed(format!("parser process: {e}")),
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(failed(if stderr.contains("memory allocation") {
                format!(
                    "the parser exceeded the memory bound of {} MB on this file",
                    self.memory_mb
                )
            } else if out.status.to_string().contains("SIGXCPU") || stderr.contains("CPU time") {
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
                format!("the parser process died ({}): {tail}", out.status)
            }));
        }
        match serde_json::from_slice::<Answer>(&out.stdout) {
            Ok(Answer::Ok(parsed, names)) => Ok((
                parsed,
                crate::images::take(&images_folder(child_pid), &names)?,
            )),
            Ok(Answer::Error(message)) => Err(failed(message)),
            Err(e) => Err(failed(format!(
                "unreadable answer from the parser process: {e}"
            ))),
        }
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

/// Removes a parser child's scratch and private folders when dropped, however the parse
/// ended.
struct ChildFolders(u32);

impl Drop for ChildFolders {
    fn drop(&mut self) {
        crate::ocr::remove_scratch_of(self.0);
    }
}

/// The child's side: `docfleet-worker engine`. Bounds itself, reads the request and the file
/// from stdin, parses, answers on stdout.
pub fn serve_child(
    memory_mb: u64,
    cpu_secs: u64,
    confinement: crate::sandbox::Confinement,
) -> ExitCode {
    let bytes = memory_mb.saturating_mul(1024 * 1024);
    // No file the parser or its tools write (scratch renders) may pass 1 GiB.
    const MAX_FILE: u64 = 1 << 30;
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::DATA, bytes, bytes)
        .and_then(|()| rlimit::setrlimit(rlimit::Resource::CPU, cpu_secs, cpu_secs + 1))
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
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("engine: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let split = input
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(input.len());
    let Ok(header) = serde_json::from_slice::<Header>(&input[..split]) else {
        eprintln!("engine: no request header on stdin");
        return ExitCode::FAILURE;
    };
    let file = input.get(split + 1..).unwrap_or_default();
    #[cfg(feature = "fault-injection")]
    {
        // Test-only: a file whose head carries this marker allocates without end.
        let head = &file[..file.len().min(64)];
        // Test-only: a parse that waits on a tool that never finishes, as a hostile scan
        // can make `tesseract` do; the tool's pid goes to stderr for the test to find.
        if head.windows(23).any(|w| w == b"DOCFLEET-FAULT:GRANDKID") {
            if let Ok(mut tool) = std::process::Command::new("sleep").arg("3600").spawn() {
                eprintln!("engine: tool pid {}", tool.id());
                let _ = tool.wait();
            }
        }
        // Test-only: whether the parser can reach anything on the network, as its error.
        if head.windows(22).any(|w| w == b"DOCFLEET-FAULT:NETWORK") {
            let reach = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], 6379)),
                std::time::Duration::from_secs(2),
            );
            let answer = Answer::Error(format!(
                "network: {}",
                match reach {
                    Ok(_) => "reachable".to_owned(),
                    Err(e) => format!("unreachable ({e})"),
                }
            ));
            let _ = serde_json::to_writer(std::io::stdout().lock(), &answer);
            return ExitCode::SUCCESS;
        }
        // Test-only: whether the parser can read, and write beside, the path that follows
        // the marker, as its error.
        if let Some(path) = marked(file, "DOCFLEET-FAULT:TOUCH ") {
            let read = std::fs::read(&path).map(|_| ()).map_err(|e| e.kind());
            let write = std::fs::write(format!("{path}.touched"), b"x").map_err(|e| e.kind());
            let answer = Answer::Error(format!("touch: read {read:?}, write {write:?}"));
            let _ = serde_json::to_writer(std::io::stdout().lock(), &answer);
            return ExitCode::SUCCESS;
        }
        // Test-only: how many processes the parser could start (of 1,000 asked).
        if head.windows(20).any(|w| w == b"DOCFLEET-FAULT:FORKS") {
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
            let _ = serde_json::to_writer(std::io::stdout().lock(), &answer);
            return ExitCode::SUCCESS;
        }
        // Test-only: what the parser's environment holds, as its error.
        if head.windows(22).any(|w| w == b"DOCFLEET-FAULT:ENVIRON") {
            let names: Vec<String> = std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            let answer = Answer::Error(format!("environment: {}", names.join(" ")));
            let _ = serde_json::to_writer(std::io::stdout().lock(), &answer);
            return ExitCode::SUCCESS;
        }
        if head.windows(21).any(|w| w == b"DOCFLEET-FAULT:MEMORY") {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 64 << 20]);
            }
        }
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
    let answer = match parsed {
        Ok((parsed, images)) => match crate::images::leave(&images_dir, images) {
            Ok(names) => Answer::Ok(parsed, names),
            Err(e) => Answer::Error(format!("could not keep the images: {e}")),
        },
        Err(e) => Answer::Error(e.to_string()),
    };
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &answer)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: writing the answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Test-only: the rest of the line after `marker` in the file's head, if it has the marker.
#[cfg(feature = "fault-injection")]
fn marked(file: &[u8], marker: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&file[..file.len().min(512)]);
    let rest = head.split_once(marker)?.1;
    Some(rest.lines().next().unwrap_or_default().trim().to_owned())
}
