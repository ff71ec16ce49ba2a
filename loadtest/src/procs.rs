//! Process helpers shared by the cross-service tests (`tests/`, crate `e2e`) and the chaos run
//! (`chaos`): free loopback ports, polling with a deadline, child processes whose output goes to
//! a log file and that die with their owner, a private redis-server, and minimal blocking HTTP and
//! RESP clients (std only: they work without an async runtime, e.g. while a runtime is busy with
//! load). The panicking forms (`wait_until`, `Proc::spawn`, `Redis::start`) are for tests; the
//! `Result` forms (`poll_until`, `Proc::start`, `Redis::launch`) are for tools that must explain a
//! failure instead of aborting.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A helper that could not do its job; the message says what and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcError(pub String);

impl std::fmt::Display for ProcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProcError {}

/// A loopback port that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ok` every 50 ms until it holds; panics after `timeout` (tests).
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    if let Err(e) = poll_until(what, timeout, || Ok(ok())) {
        panic!("{e}");
    }
}

/// Polls `check` every 50 ms until it returns `Ok(true)`; an `Err` from it (e.g. "the process
/// died") ends the wait at once. Fails after `timeout`.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, ProcError>,
) -> Result<(), ProcError> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProcError(format!(
                "timed out waiting for {what} ({:.1} s)",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped; its stdout and stderr go to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output in `<log_dir>/<name>.log` (truncated); panics when it cannot.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        if let Err(e) = std::fs::File::create(&log) {
            panic!("create {}: {e}", log.display());
        }
        Self::start(name, cmd, &log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `cmd` with its output appended to `log` (so a restarted process continues the log
    /// of the one before it).
    pub fn start(name: &str, cmd: &mut Command, log: &Path) -> Result<Self, ProcError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| ProcError(format!("open log {}: {e}", log.display())))
        };
        let (out, err) = (open()?, open()?);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                ProcError(format!(
                    "cannot start {name} ({}): {e}",
                    cmd.get_program().to_string_lossy()
                ))
            })?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// How it ended, when it has (None while it runs or after `kill`).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end by itself (e.g. after a SIGTERM sent by the
    /// caller); its exit status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines in a file (0 when it does not exist): how much a process has logged so far.
pub fn count_lines(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| bytecount_newlines(&b))
        .unwrap_or(0)
}

fn bytecount_newlines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// The last `n` lines of a file.
pub fn tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Minimal blocking HTTP GET status (for readiness polling without a runtime).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// GET a whole response (head and body) as text; panics when the server is not there (tests).
pub fn http_get_text(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A complete HTTP/1.1 answer read by `http_request`.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One blocking HTTP/1.1 request to `127.0.0.1:port` (`Connection: close`), `body` sent as JSON
/// when given. Fails with the reason (refused, timed out, malformed answer).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpReply, ProcError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        ProcError(format!("{method} 127.0.0.1:{port}{path}: {what}: {e}"))
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| err("connect", &e))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| err("socket", &e))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| err("send", &e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| err("read", &e))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| err("answer", &"no complete response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("answer", &"no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(HttpReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

/// Sum of a Prometheus metric's samples whose labels contain every `filters` item.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A private redis-server on a free port (no persistence), killed when dropped.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    /// On a given port (e.g. to restart one that was killed); log `<dir>/redis.log`, truncated.
    pub fn start_on(dir: &Path, port: u16) -> Self {
        let proc = Proc::spawn("redis", &mut Self::command_for(dir, port), dir);
        Self::ready(proc, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On `port` with its output appended to `log`; waits until it answers PING.
    pub fn launch(dir: &Path, port: u16, log: &Path) -> Result<Self, ProcError> {
        let proc = Proc::start("redis", &mut Self::command_for(dir, port), log)?;
        Self::ready(proc, port)
    }

    fn command_for(dir: &Path, port: u16) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // DEBUG SLEEP simulates a stalled Redis.
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(dir);
        cmd
    }

    fn ready(proc: Proc, port: u16) -> Result<Self, ProcError> {
        let mut r = Self { proc, port };
        poll_until("redis PING", Duration::from_secs(10), || {
            if !r.proc.is_running() {
                return Err(ProcError(format!(
                    "redis-server on port {port} died:\n{}",
                    r.proc.log_text()
                )));
            }
            Ok(r.command(&["PING"]).is_some())
        })?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One RESP command; the reply as text lines (bulk strings and array items), None on error.
    pub fn command(&self, args: &[&str]) -> Option<Vec<String>> {
        redis_command(self.port, args)
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.command(&["KEYS", pattern]).unwrap_or_default()
    }
}

/// One RESP command to the Redis on `port` (see `Redis::command`).
pub fn redis_command(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = std::io::BufReader::new(s);
    let mut out = Vec::new();
    read_reply(&mut r, &mut out)?;
    Some(out)
}

fn read_reply(r: &mut impl BufRead, out: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    if line.is_empty() {
        return None;
    }
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => return None,
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n >= 0 {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).ok()?;
                out.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_counts() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(bytecount_newlines(b"a\nb\n"), 2);
        assert_eq!(
            metric_sum("m{a=\"1\"} 2\nm{a=\"2\"} 3\nmx 9\n", "m", &[]),
            5
        );
    }

    #[test]
    fn poll_until_stops_on_error_and_times_out() {
        let e = poll_until("x", Duration::from_secs(5), || {
            Err(ProcError("died".into()))
        });
        assert_eq!(e, Err(ProcError("died".into())));
        let e = poll_until("y", Duration::from_millis(60), || Ok(false)).unwrap_err();
        assert!(e.0.contains("timed out waiting for y"), "{e}");
    }
}
