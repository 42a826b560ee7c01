//! `hookbridge health`: the client side of `/readyz` and `/healthz`, for container healthchecks
//! and exec probes. One HTTP/1.1 GET over a plain blocking socket, under one deadline for the
//! whole exchange, so an image needs no curl, no shell and no `/dev/tcp` (which dash, Debian's
//! `/bin/sh`, does not have).
//!
//! Only the status line is read: the answer is "200 or not". The probe speaks plain HTTP, which
//! is what `admin_listen` serves; a TLS main listener is probed through `admin_listen`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant};

/// Most bytes read while looking for the end of the status line: a status line is short, and a
/// peer that sends more without a line break is not an HTTP server.
const MAX_STATUS_LINE: usize = 1024;

/// Where to probe: `host:port` and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, as written (also the `Host` header).
    pub authority: String,
    pub path: String,
}

impl Target {
    /// Parses `http://host[:port][/path]` (port 80 and `default_path` when absent).
    ///
    /// # Errors
    /// A scheme other than `http`, user info, an empty host, or a path with spaces or control
    /// characters (it goes into the request line as written).
    pub fn from_url(url: &str, default_path: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("--url must start with http:// (the admin listener is plain HTTP)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, default_path),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("--url needs a host and no user info".into());
        }
        let authority = if has_port(authority) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Self::new(&authority, path)
    }

    /// A target from `host:port` and a path.
    ///
    /// # Errors
    /// No port, or a path that is not `/…` without spaces and control characters.
    pub fn new(authority: &str, path: &str) -> Result<Self, String> {
        if !has_port(authority) {
            return Err(format!("{authority}: expected host:port"));
        }
        let clean = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
        if !clean {
            return Err(
                "the path must start with / and hold no spaces or control characters".into(),
            );
        }
        Ok(Self {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// `host:port` or `[v6]:port`: a bare IPv6 address has colons but no port.
fn has_port(authority: &str) -> bool {
    let port = match authority.rsplit_once(']') {
        Some((_, tail)) => tail.strip_prefix(':'),
        None if authority.matches(':').count() == 1 => authority.rsplit_once(':').map(|(_, p)| p),
        None => None,
    };
    port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200.
    Ready,
    /// Answered with another status (`/readyz`: a sink or decision service is not ready).
    NotReady(u16),
    /// Nothing answered in time, the connection failed, or the answer was not HTTP.
    Unreachable(String),
}

impl Outcome {
    /// The one line the command prints.
    pub fn line(&self, target: &Target) -> String {
        let at = format!("http://{}{}", target.authority, target.path);
        match self {
            Self::Ready => format!("ready: {at} answered 200"),
            Self::NotReady(status) => format!("not ready: {at} answered {status}"),
            Self::Unreachable(why) => format!("unreachable: {at}: {why}"),
        }
    }
}

/// GETs `target` and reads its status, all within `timeout`.
pub fn probe(target: &Target, timeout: Duration) -> Outcome {
    match exchange(target, timeout) {
        Ok(200) => Outcome::Ready,
        Ok(status) => Outcome::NotReady(status),
        Err(why) => Outcome::Unreachable(why),
    }
}

fn exchange(target: &Target, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut stream = None;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hookbridge-health\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() > MAX_STATUS_LINE {
            return Err("the answer is not HTTP (no status line)".into());
        }
        stream
            .set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("connection closed before a status line".into()),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(e) => return Err(format!("reading the answer: {e}")),
        };
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head).ok_or_else(|| "the answer is not HTTP (no status line)".into())
}

/// Time left before `deadline`; an error once it has passed (a zero timeout would mean
/// "block forever" to the socket calls).
fn left(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(timed_out())
    } else {
        Ok(left)
    }
}

fn timed_out() -> String {
    "no answer within the timeout".into()
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The status code of `HTTP/1.x NNN …\r\n`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_addresses() {
        let t = Target::from_url("http://127.0.0.1:9090/healthz", "/readyz").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:9090", "/healthz")
        );
        let t = Target::from_url("http://localhost", "/readyz").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("localhost:80", "/readyz")
        );
        let t = Target::from_url("http://[::1]:8080", "/readyz").unwrap();
        assert_eq!(t.authority, "[::1]:8080");
        assert!(Target::from_url("https://x:1/", "/readyz").is_err());
        assert!(Target::from_url("http://u:p@x:1/", "/readyz").is_err());
        assert!(Target::from_url("http:///readyz", "/readyz").is_err());
        assert!(Target::new("127.0.0.1", "/readyz").is_err());
        assert!(Target::new("::1", "/readyz").is_err());
        assert!(Target::new("x:1", "/a b").is_err());
        assert!(Target::new("x:1", "/a\r\nX: y").is_err());
        assert!(Target::new("x:1", "readyz").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 20\r\n"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK\r\n"), None);
    }
}
