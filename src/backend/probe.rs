//! Health checks of instances, as the contract's `health: {http | tcp | cmd, interval,
//! timeout, retries, start_period}`: one attempt ([`probe_once`]) and the wait for a
//! started instance to become healthy ([`wait_healthy`]).
//!
//! **Decisions.**
//! - *No Docker here.* `http` and `tcp` probes are plain tokio sockets from the machine
//!   running reconcile to the instance's host address and pool port (host networking:
//!   the app listens there; bridge: the pool port is published there). A `cmd` probe
//!   runs inside the container, so it carries a [`CmdRunner`]: a boxed async closure
//!   built by `backend::docker::cmd_probe` (docker exec). This module therefore does
//!   not import bollard, and tests can fake a command.
//! - *No HTTP client crate.* The `http` probe writes one `GET <path> HTTP/1.1` with
//!   `Connection: close` and reads only the status line; 2xx and 3xx are healthy
//!   (redirects are not followed).
//! - *Schedule.* [`wait_healthy`] probes at once and then every `interval`; failures
//!   before `start_period` has elapsed (from the start of the wait) do not count, a
//!   success at any time ends the wait (Docker's semantics). After `start_period`,
//!   `retries` failures in a row give up with the last reason. Defaults follow the
//!   schema: interval 2s, timeout 2s, retries 10, start_period 0s.
//! - *Dead containers fail fast.* After each failed attempt the caller's
//!   `still_running` check runs (for Docker: `backend::docker::check_running`, one
//!   inspect); its error ends the wait at once instead of after all retries.
//!
//! Failures are typed: one attempt fails with a [`ProbeFailure`] (what was tried, where,
//! and why), the wait with a [`HealthError`] (given up after retries, or the container
//! died) carrying the last attempt's failure. Their messages are for people: they name
//! the request and the address, never a secret (health specs are not templated, so they
//! hold none).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout as within};

use crate::spec::types::HealthSpec;
use crate::spec::units;

/// What a command probe's runner returns: `Ok` when the command exited 0, else why not.
pub type CmdFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs the probe's command once within the given timeout (the container and argv are
/// captured by the closure).
pub type CmdRunner = Arc<dyn Fn(Duration) -> CmdFuture + Send + Sync>;

/// A health spec that cannot be turned into a probe (validate reports these earlier).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// `http` or `tcp` on an app without a port.
    #[error("a {kind} health check needs a port")]
    NeedsPort { kind: &'static str },
    #[error("the health check sets none of http, tcp or cmd")]
    NoCheck,
    /// `health.<field>` is not a duration.
    #[error("health.{field}: {message}")]
    BadDuration { field: &'static str, message: String },
}

/// Why one probe attempt failed. Each names what was tried and where (`at` is
/// `address:port`, bracketed for IPv6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// The TCP connection failed (refused, unreachable, …): `reason` without the OS
    /// error number.
    #[error("connect {at}: {reason}")]
    Connect { at: String, reason: String },
    /// A `tcp` probe's connection was not accepted within the timeout.
    #[error("connect {at}: no answer within {}", ms(*after))]
    ConnectTimeout { at: String, after: Duration },
    /// An `http` probe got no complete status line within the timeout.
    #[error("GET {path} on {at}: no answer within {}", ms(*after))]
    HttpTimeout { path: String, at: String, after: Duration },
    /// The HTTP exchange failed after connecting: a write or read error, the server
    /// closed without answering, or the answer is not HTTP.
    #[error("GET {path} on {at}: {reason}")]
    Http { path: String, at: String, reason: String },
    /// The server answered with a status outside 2xx/3xx (`phrase`: its reason phrase,
    /// at most 60 characters, possibly empty).
    #[error("GET {path} on {at}: {status}{}", if phrase.is_empty() { String::new() } else { format!(" {phrase}") })]
    Status { path: String, at: String, status: u16, phrase: String },
    /// A `cmd` probe's command did not exit 0; `reason` is its runner's (for Docker:
    /// ``cmd `…`: exit code 1`` or the exec error).
    #[error("{reason}")]
    Cmd { argv: Vec<String>, reason: String },
    /// A `cmd` probe's runner did not finish within the timeout.
    #[error("cmd `{}`: did not finish within {}", argv.join(" "), ms(*after))]
    CmdTimeout { argv: Vec<String>, after: Duration },
}

/// Why [`wait_healthy`] gave up. Both carry the last attempt's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// `retries` counted failures in a row (`failures`) after `attempts` probes in all.
    #[error("unhealthy after {attempts} probes ({failures} failed in a row): {last}")]
    GaveUp { attempts: u32, failures: u32, last: ProbeFailure },
    /// The `still_running` check failed after an attempt: the container died (its
    /// reason, e.g. `container … is not running: exited with code 1`).
    #[error("{reason} (last probe: {last})")]
    NotRunning { reason: String, last: ProbeFailure },
}

/// One way to tell whether an instance is healthy.
#[derive(Clone)]
pub enum Probe {
    /// `GET path` on `address:port`; 2xx/3xx is healthy.
    Http { address: String, port: u16, path: String },
    /// A TCP connection to `address:port` is accepted.
    Tcp { address: String, port: u16 },
    /// `argv` run inside the container exits 0. `argv` is for messages; `run` does it.
    Cmd { argv: Vec<String>, run: CmdRunner },
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { address, port, path } => write!(f, "Http({}{path})", host_port(address, *port)),
            Self::Tcp { address, port } => write!(f, "Tcp({})", host_port(address, *port)),
            Self::Cmd { argv, .. } => write!(f, "Cmd({argv:?})"),
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { address, port, path } => write!(f, "GET http://{}{path}", host_port(address, *port)),
            Self::Tcp { address, port } => write!(f, "tcp {}", host_port(address, *port)),
            Self::Cmd { argv, .. } => write!(f, "cmd {}", argv.join(" ")),
        }
    }
}

impl Probe {
    /// The probe a health spec describes for an instance reachable at `address:port`
    /// (the host's address and the pool port, in both network modes). `cmd` turns the
    /// argv into a runner (for Docker: `|argv| backend::docker::cmd_runner(...)`); it
    /// is only called for a `cmd` check. When the spec sets more than one kind (the
    /// schema forbids it), http wins over tcp over cmd.
    ///
    /// # Errors
    /// `http`/`tcp` without a port, or none of http/tcp/cmd set.
    pub fn from_spec(
        health: &HealthSpec,
        address: &str,
        port: Option<u16>,
        cmd: impl FnOnce(Vec<String>) -> CmdRunner,
    ) -> Result<Self, ProbeError> {
        let need_port = |kind: &'static str| port.ok_or(ProbeError::NeedsPort { kind });
        if let Some(path) = &health.http {
            let path = if path.starts_with('/') { path.clone() } else { format!("/{path}") };
            return Ok(Self::Http { address: address.to_string(), port: need_port("http")?, path });
        }
        if health.tcp == Some(true) {
            return Ok(Self::Tcp { address: address.to_string(), port: need_port("tcp")? });
        }
        match &health.cmd {
            Some(argv) if !argv.is_empty() => Ok(Self::Cmd { argv: argv.clone(), run: cmd(argv.clone()) }),
            _ => Err(ProbeError::NoCheck),
        }
    }
}

/// When and how often to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            retries: 10,
            start_period: Duration::ZERO,
        }
    }
}

impl Schedule {
    /// The spec's values, defaults for what it leaves out (interval 2s, timeout 2s,
    /// retries 10, start_period 0s). `retries` is at least 1.
    ///
    /// # Errors
    /// A duration does not parse (validate reports this earlier).
    pub fn from_spec(health: &HealthSpec) -> Result<Self, ProbeError> {
        let d = Self::default();
        let parse = |field: &'static str, v: &Option<String>, default: Duration| match v {
            Some(s) => units::duration(s).map_err(|e| ProbeError::BadDuration { field, message: e.message }),
            None => Ok(default),
        };
        Ok(Self {
            interval: parse("interval", &health.interval, d.interval)?,
            timeout: parse("timeout", &health.timeout, d.timeout)?,
            retries: health.retries.unwrap_or(d.retries).max(1),
            start_period: parse("start_period", &health.start_period, d.start_period)?,
        })
    }
}

/// `host:port`, with brackets around an IPv6 literal.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// `Connection refused`, without the ` (os error 111)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

fn ms(d: Duration) -> String {
    format!("{d:?}")
}

async fn connect(address: &str, port: u16) -> Result<TcpStream, ProbeFailure> {
    let addr = address.trim_start_matches('[').trim_end_matches(']');
    TcpStream::connect((addr, port))
        .await
        .map_err(|e| ProbeFailure::Connect { at: host_port(address, port), reason: io_reason(&e) })
}

/// One probe attempt within `timeout`.
///
/// - `Http`: connect, `GET path HTTP/1.1` (`Host`, `Connection: close`), read the status
///   line; healthy on 2xx/3xx.
/// - `Tcp`: the connection is accepted.
/// - `Cmd`: the runner reports exit 0.
///
/// # Errors
/// Why the instance is not healthy ([`ProbeFailure`]), e.g. `GET /healthz on
/// 127.0.0.1:20001: 503 Service Unavailable`, `connect 127.0.0.1:20001: Connection
/// refused`, `… no answer within 2s`.
pub async fn probe_once(p: &Probe, timeout: Duration) -> Result<(), ProbeFailure> {
    match p {
        Probe::Tcp { address, port } => match within(timeout, connect(address, *port)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProbeFailure::ConnectTimeout { at: host_port(address, *port), after: timeout }),
        },
        Probe::Http { address, port, path } => match within(timeout, http_get(address, *port, path)).await {
            Ok(result) => result,
            Err(_) => {
                Err(ProbeFailure::HttpTimeout { path: path.clone(), at: host_port(address, *port), after: timeout })
            }
        },
        Probe::Cmd { argv, run } => match within(timeout, run(timeout)).await {
            Ok(result) => result.map_err(|reason| ProbeFailure::Cmd { argv: argv.clone(), reason }),
            Err(_) => Err(ProbeFailure::CmdTimeout { argv: argv.clone(), after: timeout }),
        },
    }
}

/// The longest status line read; anything longer is not HTTP.
const MAX_STATUS_LINE: usize = 8 * 1024;

async fn http_get(address: &str, port: u16, path: &str) -> Result<(), ProbeFailure> {
    let at = host_port(address, port);
    let mut stream = connect(address, port).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {at}\r\nUser-Agent: reconcile-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let fail = |reason: String| ProbeFailure::Http { path: path.to_string(), at: at.clone(), reason };
    stream.write_all(request.as_bytes()).await.map_err(|e| fail(io_reason(&e)))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(fail("no HTTP status line".into()));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| fail(io_reason(&e)))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(fail("connection closed without an answer".into()));
            }
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.splitn(3, ' ');
    let (version, code, phrase) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
    let status: u16 = match code.parse() {
        Ok(s) if version.starts_with("HTTP/") => s,
        _ => return Err(fail(format!("not an HTTP answer: {:?}", truncate(&line, 60)))),
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        let phrase = phrase.map(|p| truncate(p.trim(), 60).to_string()).unwrap_or_default();
        Err(ProbeFailure::Status { path: path.to_string(), at, status, phrase })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Wait until `probe` passes. Probes at once, then every `schedule.interval` (each
/// attempt bounded by `schedule.timeout`); a pass ends the wait. Failures while
/// `schedule.start_period` has not elapsed since the call do not count; after that,
/// `schedule.retries` failures in a row give up. After every failed attempt
/// `still_running` is awaited (pass `|| async { Ok::<_, String>(()) }` when there is
/// nothing to check); its `Err` ends the wait at once with that reason.
///
/// Worst case duration: about `start_period + retries × max(interval, timeout)`.
///
/// # Errors
/// [`HealthError::GaveUp`] with the number of attempts and the last failure, or
/// [`HealthError::NotRunning`] with `still_running`'s reason.
pub async fn wait_healthy<C, F, E>(probe: &Probe, schedule: &Schedule, mut still_running: C) -> Result<(), HealthError>
where
    C: FnMut() -> F,
    F: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let started = Instant::now();
    let counted_from = started + schedule.start_period;
    let retries = schedule.retries.max(1);
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut next = started;
    loop {
        sleep_until(next).await;
        next = Instant::now() + schedule.interval;
        attempts += 1;
        let reason = match probe_once(probe, schedule.timeout).await {
            Ok(()) => {
                tracing::debug!(%probe, attempts, elapsed = ?started.elapsed(), "healthy");
                return Ok(());
            }
            Err(reason) => reason,
        };
        if let Err(dead) = still_running().await {
            return Err(HealthError::NotRunning { reason: dead.to_string(), last: reason });
        }
        if Instant::now() >= counted_from {
            failures += 1;
        }
        tracing::debug!(%probe, attempts, failures, %reason, "not healthy yet");
        if failures >= retries {
            return Err(HealthError::GaveUp { attempts, failures, last: reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// Serve `answers` (raw responses) to successive connections on 127.0.0.1.
    async fn server(answers: Vec<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /h HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        port
    }

    fn http(port: u16) -> Probe {
        Probe::Http { address: "127.0.0.1".into(), port, path: "/h".into() }
    }

    #[tokio::test]
    async fn http_status_decides() {
        let port = server(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 302 Found\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            "garbage\r\n",
        ])
        .await;
        let t = Duration::from_secs(2);
        assert_eq!(probe_once(&http(port), t).await, Ok(()));
        assert_eq!(probe_once(&http(port), t).await, Ok(()));
        let at = format!("127.0.0.1:{port}");
        let e = probe_once(&http(port), t).await.unwrap_err();
        let phrase = "Service Unavailable".to_string();
        assert_eq!(e, ProbeFailure::Status { path: "/h".into(), at: at.clone(), status: 503, phrase });
        assert_eq!(e.to_string(), format!("GET /h on {at}: 503 Service Unavailable"));
        let e = probe_once(&http(port), t).await.unwrap_err();
        assert!(matches!(&e, ProbeFailure::Http { reason, .. } if reason.starts_with("not an HTTP answer")), "{e}");
        // The server is gone now: refused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = probe_once(&http(port), t).await.unwrap_err();
        assert_eq!(e, ProbeFailure::Connect { at: at.clone(), reason: "Connection refused".into() });
        assert_eq!(e.to_string(), format!("connect {at}: Connection refused"));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = probe_once(&http(port), Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, ProbeFailure::HttpTimeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("GET /h on 127.0.0.1:{port}: no answer within 200ms"));
        assert_eq!(probe_once(&Probe::Tcp { address: "127.0.0.1".into(), port }, Duration::from_secs(1)).await, Ok(()));
        drop(listener);
    }

    #[tokio::test]
    async fn a_slow_command_times_out() {
        let run: CmdRunner = Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
        });
        let argv = vec!["sleep".to_string(), "5".to_string()];
        let e = probe_once(&Probe::Cmd { argv: argv.clone(), run }, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e, ProbeFailure::CmdTimeout { argv, after: Duration::from_millis(50) });
        assert_eq!(e.to_string(), "cmd `sleep 5`: did not finish within 50ms");
    }

    fn counting_cmd(pass_from: u32) -> (Probe, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let run: CmdRunner = Arc::new(move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { if n >= pass_from { Ok(()) } else { Err(format!("exit 1 (call {n})")) } })
        });
        (Probe::Cmd { argv: vec!["true".into()], run }, calls)
    }

    fn fast(retries: u32) -> Schedule {
        Schedule {
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn waits_gives_up_and_fails_fast() {
        let alive = || async { Ok::<_, String>(()) };
        let (p, calls) = counting_cmd(3);
        assert_eq!(wait_healthy(&p, &fast(5), alive).await, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let (p, calls) = counting_cmd(100);
        let e = wait_healthy(&p, &fast(4), alive).await.unwrap_err();
        let last = ProbeFailure::Cmd { argv: vec!["true".into()], reason: "exit 1 (call 4)".into() };
        assert_eq!(e, HealthError::GaveUp { attempts: 4, failures: 4, last });
        assert_eq!(e.to_string(), "unhealthy after 4 probes (4 failed in a row): exit 1 (call 4)");
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let (p, calls) = counting_cmd(100);
        let e = wait_healthy(&p, &fast(50), || async { Err("container exited with code 3") }).await.unwrap_err();
        assert!(matches!(&e, HealthError::NotRunning { reason, .. } if reason == "container exited with code 3"));
        assert_eq!(e.to_string(), "container exited with code 3 (last probe: exit 1 (call 1))");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn start_period_failures_do_not_count() {
        let (p, calls) = counting_cmd(100);
        let s = Schedule { start_period: Duration::from_millis(200), ..fast(2) };
        let t = std::time::Instant::now();
        assert!(matches!(
            wait_healthy(&p, &s, || async { Ok::<_, String>(()) }).await,
            Err(HealthError::GaveUp { failures: 2, .. })
        ));
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(calls.load(Ordering::SeqCst) > 2, "{}", calls.load(Ordering::SeqCst));
    }

    #[test]
    fn from_spec() {
        let h = HealthSpec {
            http: Some("/healthz".into()),
            tcp: None,
            cmd: None,
            interval: Some("500ms".into()),
            timeout: None,
            retries: Some(3),
            start_period: Some("1s".into()),
        };
        let never = |_: Vec<String>| -> CmdRunner { unreachable!() };
        let p = Probe::from_spec(&h, "10.0.0.1", Some(20001), never).unwrap();
        assert_eq!(p.to_string(), "GET http://10.0.0.1:20001/healthz");
        assert_eq!(
            Schedule::from_spec(&h).unwrap(),
            Schedule {
                interval: Duration::from_millis(500),
                timeout: Duration::from_secs(2),
                retries: 3,
                start_period: Duration::from_secs(1)
            }
        );
        assert_eq!(Probe::from_spec(&h, "10.0.0.1", None, never).unwrap_err(), ProbeError::NeedsPort { kind: "http" });
        let none = HealthSpec { http: None, ..h.clone() };
        assert_eq!(Probe::from_spec(&none, "a", Some(1), never).unwrap_err(), ProbeError::NoCheck);
        let tcp = HealthSpec { http: None, tcp: Some(true), ..h.clone() };
        assert_eq!(Probe::from_spec(&tcp, "::1", Some(5), never).unwrap().to_string(), "tcp [::1]:5");
        let cmd = HealthSpec { http: None, cmd: Some(vec!["true".into()]), ..h.clone() };
        let (counting, _) = counting_cmd(1);
        let Probe::Cmd { run, .. } = counting else { unreachable!() };
        assert_eq!(Probe::from_spec(&cmd, "a", None, |_| run).unwrap().to_string(), "cmd true");
        let bad = HealthSpec { interval: Some("soon".into()), ..h };
        assert!(Schedule::from_spec(&bad).unwrap_err().to_string().starts_with("health.interval: invalid duration"));
    }
}
