//! Operator authority on this machine: the local control socket and the run's
//! terminal keys. Both raise [`OperatorRequests`] for the tick.
//!
//! Stop is open to everyone (fail safe). Re-arm and resume come from this machine
//! by default: a key on the run's terminal, or `reflex rearm` / `reflex resume`
//! over a Unix socket in a directory only this user can open (mode 0700), with the
//! peer's uid checked (SO_PEERCRED) against the run's.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::{OperatorRequests, Request};

/// The longest request line: `prompt ` and an instruction of MAX_PROMPT_BYTES.
const MAX_REQUEST_BYTES: u64 = crate::prompt::MAX_PROMPT_BYTES as u64 + 16;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("control socket directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "control socket directory {dir} is not private (owner uid {owner}, mode {mode:o}); \
         it must belong to uid {uid} with mode 700"
    )]
    NotPrivate {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        uid: u32,
    },
    #[error(
        "another reflex run for robot `{robot}` is listening on {path}; stop it or name \
         another robot"
    )]
    InUse { robot: String, path: PathBuf },
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no reflex run for robot `{robot}` on this machine for this user (no socket at {path})"
    )]
    NoRun { robot: String, path: PathBuf },
}

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The directory holding control sockets: `$XDG_RUNTIME_DIR/reflex`, else
/// `/tmp/reflex-<uid>`.
pub fn socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("reflex"),
        _ => PathBuf::from(format!("/tmp/reflex-{}", uid())),
    }
}

/// The control socket of `robot`'s run.
pub fn socket_path(robot: &str) -> PathBuf {
    socket_dir().join(format!("{robot}.sock"))
}

/// Creates the socket directory (mode 0700) or checks an existing one is ours and private.
fn private_dir(dir: &Path) -> Result<(), OperatorError> {
    let err = |source| OperatorError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || meta.uid() != uid() || mode != 0o700 {
        return Err(OperatorError::NotPrivate {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
            uid: uid(),
        });
    }
    Ok(())
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The control socket server of one run.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens on `robot`'s socket; requests go to `requests`.
    pub fn bind(robot: &str, requests: OperatorRequests) -> Result<Self, OperatorError> {
        let path = socket_path(robot);
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(OperatorError::InUse {
                    robot: robot.to_string(),
                    path,
                });
            }
            // Left behind by a run that did not end cleanly.
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|source| {
            // Another run bound it between our check and our bind.
            if source.kind() == io::ErrorKind::AddrInUse {
                OperatorError::InUse {
                    robot: robot.to_string(),
                    path: path.clone(),
                }
            } else {
                OperatorError::Socket {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| OperatorError::Socket {
                path: path.clone(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("reflex-operator".into())
                .spawn(move || serve(&listener, &requests, &stop))
                .map_err(|source| OperatorError::Socket {
                    path: path.clone(),
                    source,
                })?
        };
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, requests: &OperatorRequests, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle(stream, requests) {
                    tracing::warn!("control socket: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(stream: UnixStream, requests: &OperatorRequests) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = stream.try_clone()?;
    let peer = peer_uid(&stream)?;
    if peer != uid() {
        tracing::warn!("control socket: refused a request from uid {peer}");
        return writeln!(out, "refused: uid {peer} is not the run's user");
    }
    let mut line = String::new();
    // One line; the longest request is an instruction of MAX_PROMPT_BYTES.
    BufReader::new(stream.take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
    if let Some(text) = line.strip_prefix("prompt ") {
        let text = text.strip_suffix('\n').unwrap_or(text);
        return match requests.prompt.set(text) {
            Ok(()) => {
                tracing::info!("instruction changed: {text:?}");
                writeln!(out, "ok")
            }
            Err(e) => writeln!(out, "refused: {e}"),
        };
    }
    if let Some(rest) = line.trim().strip_prefix("episode") {
        let word = rest.trim();
        let Some(request) = crate::recording::EpisodeRequest::parse(word) else {
            let shown: String = word.chars().take(32).collect();
            return writeln!(
                out,
                "error: unknown episode request {shown:?} (success, failure, rerecord, stop, start)"
            );
        };
        requests.episodes.raise(request);
        // Taken by the tick at its next period (a run without episodes never takes it).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !requests.episodes.pending() {
                return writeln!(out, "ok");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        return writeln!(
            out,
            "error: the control loop did not take it (is the run recording episodes: `reflex run --record DIR`?)"
        );
    }
    if line.trim().starts_with("steer") {
        let Some((which, on)) = crate::stage::Steering::parse_request(&line) else {
            return writeln!(out, "error: expected `steer <vgps|dsrl> <on|off>`");
        };
        requests.steering.set(which, on);
        let state = if on { "on" } else { "off" };
        tracing::info!("steering: {} {state}", which.name());
        return writeln!(out, "ok: {} {state} from the next inference", which.name());
    }
    if let Some(rest) = line.trim().strip_prefix("tare") {
        let stream = Some(rest.trim()).filter(|s| !s.is_empty());
        return match requests.tare.request(stream) {
            Ok(streams) => {
                tracing::info!("tare requested: {}", streams.join(", "));
                writeln!(out, "ok: taring {}", streams.join(", "))
            }
            Err(e) => writeln!(out, "refused: {e}"),
        };
    }
    let request = match line.trim() {
        "estop" | "stop" => Request::Estop,
        "rearm" => Request::Rearm,
        "resume" => Request::Resume,
        "heartbeat" => {
            requests.heartbeat();
            return writeln!(out, "ok");
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return writeln!(
                out,
                "error: unknown request {shown:?} (estop, rearm, resume, heartbeat, prompt <text>, tare [stream], episode <success|failure|rerecord|stop|start>, steer <vgps|dsrl> <on|off>)"
            );
        }
    };
    // Answers for earlier requests nobody waited for are stale now.
    while requests.outcomes.pop().is_some() {}
    requests.raise(request);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(outcome) = requests.outcomes.pop()
            && outcome.request == request
        {
            return match outcome.result {
                Ok(()) => writeln!(out, "ok"),
                Err(refusal) => writeln!(out, "refused: {refusal}"),
            };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    writeln!(
        out,
        "error: the control loop did not answer (still starting?)"
    )
}

/// Sends `request` to `robot`'s run on this machine; returns its answer line.
pub fn send(robot: &str, request: &str) -> Result<String, OperatorError> {
    let path = socket_path(robot);
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => OperatorError::NoRun {
            robot: robot.to_string(),
            path: path.clone(),
        },
        _ => OperatorError::Socket {
            path: path.clone(),
            source: e,
        },
    })?;
    let io_err = |source| OperatorError::Socket {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err)?;
    writeln!(stream, "{request}").map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(stream.take(4096))
        .read_line(&mut answer)
        .map_err(io_err)?;
    Ok(answer.trim().to_string())
}

/// Reads single keys from the terminal the run was started from: `s` or space
/// stops, `r` re-arms, `g` resumes; while recording episodes → ends the episode
/// as a success (or starts the next one), ↓ as a failure, ← re-records it, Esc
/// saves it and stops recording. Ctrl-C keeps working (signals stay on).
pub struct TerminalKeys {
    saved: Option<libc::termios>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TerminalKeys {
    /// Starts reading when stdin is a terminal; otherwise does nothing.
    pub fn start(requests: OperatorRequests) -> Self {
        use std::io::IsTerminal;
        let mut keys = Self {
            saved: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        if !io::stdin().is_terminal() {
            return keys;
        }
        // SAFETY: termios is plain data; tcgetattr/tcsetattr get valid pointers.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return keys;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 0;
            raw.c_cc[libc::VTIME] = 1; // reads return after 0.1 s, so the thread can stop
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return keys;
            }
            keys.saved = Some(saved);
        }
        let stop = keys.stop.clone();
        keys.thread = std::thread::Builder::new()
            .name("reflex-keys".into())
            .spawn(move || {
                use crate::recording::EpisodeRequest;
                let mut stdin = io::stdin();
                let mut byte = [0u8; 1];
                // Arrow keys arrive as ESC [ A..D; a lone ESC is the Esc key.
                let mut escape: u8 = 0;
                while !stop.load(Ordering::Acquire) {
                    match stdin.read(&mut byte) {
                        Ok(1) => match (escape, byte[0]) {
                            (0, 0x1b) => escape = 1,
                            (1, b'[') => escape = 2,
                            (2, key) => {
                                escape = 0;
                                match key {
                                    b'C' => requests.episodes.raise(EpisodeRequest::Success),
                                    b'B' => requests.episodes.raise(EpisodeRequest::Failure),
                                    b'D' => requests.episodes.raise(EpisodeRequest::Rerecord),
                                    _ => {}
                                }
                            }
                            (_, key) => {
                                if escape == 1 {
                                    requests.episodes.raise(EpisodeRequest::Stop);
                                }
                                escape = 0;
                                match key {
                                    b's' | b' ' => requests.raise(Request::Estop),
                                    b'r' => requests.raise(Request::Rearm),
                                    b'g' => requests.raise(Request::Resume),
                                    0x1b => escape = 1,
                                    _ => {}
                                }
                            }
                        },
                        // A read that timed out right after ESC: the Esc key alone.
                        Ok(_) => {
                            if escape == 1 {
                                requests.episodes.raise(EpisodeRequest::Stop);
                            }
                            escape = 0;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .ok();
        keys
    }
}

impl Drop for TerminalKeys {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(saved) = self.saved {
            // SAFETY: restores the settings read in `start`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_carries_requests_and_answers_with_the_ticks_outcome() {
        let dir = std::env::temp_dir().join(format!("reflex-op-test-{}", std::process::id()));
        // SAFETY: tests in this module are the only users of XDG_RUNTIME_DIR here.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        std::fs::create_dir_all(&dir).unwrap();
        let requests = OperatorRequests::default();
        let socket = ControlSocket::bind("op_test", requests.clone()).unwrap();
        let mode = std::fs::metadata(socket_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        // A stand-in for the tick: answers re-arm with a refusal.
        let tick = {
            let requests = requests.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if requests.rearm.swap(false, Ordering::AcqRel) {
                        requests
                            .outcomes
                            .force_push(crate::control::OperatorOutcome {
                                tick: 1,
                                request: Request::Rearm,
                                result: Err(crate::safety::Refusal::NotLatched),
                            });
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let answer = send("op_test", "rearm").unwrap();
        assert!(answer.starts_with("refused: nothing to re-arm"), "{answer}");
        tick.join().unwrap();
        assert!(
            send("op_test", "launch missiles")
                .unwrap()
                .starts_with("error")
        );
        assert_eq!(send("op_test", "heartbeat").unwrap(), "ok");
        assert!(requests.heartbeat_ns.load(Ordering::Acquire) > 0);
        assert_eq!(send("op_test", "prompt stack the cups").unwrap(), "ok");
        assert_eq!(requests.prompt.get(), "stack the cups");
        let refused = send("op_test", "prompt a\u{1b}[2J").unwrap();
        assert!(refused.starts_with("refused: "), "{refused}");
        assert_eq!(requests.prompt.get(), "stack the cups");
        drop(socket);
        assert!(matches!(
            send("op_test", "rearm"),
            Err(OperatorError::NoRun { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
