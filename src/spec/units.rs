//! Parsers for the quantities written in specs: durations, CPU and memory,
//! port pools, image references, Docker endpoints and volume mounts.
//!
//! Each returns the parsed value or a [`Invalid`] that says what is wrong and how
//! to write it; the semantic checks attach the position. Pure.

use std::time::Duration;

/// A value that does not parse: the problem and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub hint: String,
}

fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Invalid {
    Invalid { message: message.into(), hint: hint.into() }
}

/// `500ms`, `2s`, `1m30s`, `1.5h`.
pub fn duration(s: &str) -> Result<Duration, Invalid> {
    let hint = "write a duration such as 500ms, 2s, 1m30s or 1h";
    let bad = || invalid(format!("invalid duration {s:?}"), hint);
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 365.0 * 86400.0 {
        return Err(invalid(format!("duration {s:?} is too long"), "durations are limited to one year"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// CPU limit in nano-CPUs (Docker's unit): `0.5`, `2`, `"500m"`.
pub fn cpus(v: &serde_json::Value) -> Result<u64, Invalid> {
    let hint = "write cores as a number (0.5, 2) or millicores as a string (\"500m\")";
    let cores = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.strip_suffix('m') {
            Some(m) => m.parse::<u64>().ok().map(|m| m as f64 / 1000.0),
            None => s.parse::<f64>().ok(),
        },
        _ => None,
    }
    .ok_or_else(|| invalid(format!("invalid CPU quantity {v}"), hint))?;
    if !(cores > 0.0 && cores <= 1024.0) {
        return Err(invalid(
            format!("CPU limit {v} is out of range"),
            "a CPU limit is more than 0 and at most 1024 cores",
        ));
    }
    Ok((cores * 1e9).round() as u64)
}

/// Memory limit in bytes: `268435456`, `256Mi`, `1Gi`, `512M`, `64k`.
pub fn memory(v: &serde_json::Value) -> Result<u64, Invalid> {
    let hint = "write bytes (268435456) or a number with a unit: k, Ki, M, Mi, G, Gi, T, Ti (e.g. 256Mi)";
    let bytes = match v {
        serde_json::Value::Number(n) => n.as_u64().map(|b| b as f64),
        serde_json::Value::String(s) => {
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let factor = match unit {
                "" => Some(1.0),
                "k" | "K" => Some(1e3),
                "Ki" => Some(1024.0),
                "M" => Some(1e6),
                "Mi" => Some(1024.0 * 1024.0),
                "G" => Some(1e9),
                "Gi" => Some(1024.0 * 1024.0 * 1024.0),
                "T" => Some(1e12),
                "Ti" => Some(1024f64.powi(4)),
                _ => None,
            };
            match (num.parse::<f64>(), factor) {
                (Ok(n), Some(f)) if !num.is_empty() => Some(n * f),
                _ => None,
            }
        }
        _ => None,
    }
    .ok_or_else(|| invalid(format!("invalid memory quantity {v}"), hint))?;
    // Docker refuses limits under 6 MiB.
    if bytes < 6.0 * 1024.0 * 1024.0 {
        return Err(invalid(
            format!("memory limit {v} is below Docker's minimum of 6Mi"),
            "give the container at least 6Mi",
        ));
    }
    if bytes > 1e15 {
        return Err(invalid(format!("memory limit {v} is out of range"), hint));
    }
    Ok(bytes as u64)
}

/// An inclusive port range `START-END`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

pub fn port_range(s: &str) -> Result<PortRange, Invalid> {
    let hint = "write the pool as START-END with 1024 <= START <= END <= 65535, e.g. 20000-20999";
    let (a, b) = s.split_once('-').ok_or_else(|| invalid(format!("invalid port pool {s:?}"), hint))?;
    let parse = |x: &str| x.parse::<u32>().ok().filter(|p| (1..=65535).contains(p));
    let (Some(start), Some(end)) = (parse(a), parse(b)) else {
        return Err(invalid(format!("port pool {s:?} is outside 1-65535"), hint));
    };
    if start > end {
        return Err(invalid(
            format!("port pool {s:?} is inverted: {start} > {end}"),
            format!("write it as {end}-{start}"),
        ));
    }
    if start < 1024 {
        return Err(invalid(format!("port pool {s:?} includes privileged ports below 1024"), hint));
    }
    // Both fit in u16: checked against 65535 above.
    Ok(PortRange { start: start as u16, end: end as u16 })
}

/// A Docker image reference, checked against the distribution reference grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub fn image(s: &str) -> Result<ImageRef, Invalid> {
    let hint = "write [registry[:port]/]name[:tag][@sha256:digest] in lowercase, e.g. registry.example/api:1.4.2";
    let bad = |why: &str| invalid(format!("invalid image reference {s:?}: {why}"), hint);
    if s.len() > 255 * 2 {
        return Err(bad("too long"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            let (alg, hex) = d.split_once(':').ok_or_else(|| bad("digest must be ALGORITHM:HEX"))?;
            if alg != "sha256"
                || hex.len() != 64
                || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(bad("digest must be sha256: followed by 64 lowercase hex digits"));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !ok {
            return Err(bad("the tag may use letters, digits, '_', '.' and '-' (at most 128)"));
        }
    }
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // First part is a registry host if it has '.', ':' or is localhost.
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !h.is_empty()
            && h.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !host_ok || port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return Err(bad("the registry host is not a valid host[:port]"));
        }
    }
    for p in &parts {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(bad(
                "path components are lowercase letters, digits and separators (. _ -), starting and ending alphanumeric",
            ));
        }
    }
    Ok(ImageRef { name: name.to_string(), tag: tag.map(str::to_string), digest })
}

/// How reconcile reaches a Docker daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    Tcp { host: String, port: u16 },
    Ssh { user: Option<String>, host: String, port: Option<u16> },
}

pub fn docker_endpoint(s: &str) -> Result<Endpoint, Invalid> {
    let hint = "write unix:///var/run/docker.sock, tcp://HOST:PORT (with tls files) or ssh://[USER@]HOST[:PORT]";
    if let Some(path) = s.strip_prefix("unix://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(invalid(format!("invalid Docker endpoint {s:?}: the socket path must be absolute"), hint));
        }
        return Ok(Endpoint::Unix(path.to_string()));
    }
    let host_port = |rest: &str| -> Option<(String, Option<u16>)> {
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => p.parse::<u16>().ok().filter(|p| *p > 0).map(|p| (h.to_string(), Some(p))),
            Some(_) => None,
            None => Some((rest.to_string(), None)),
        }
    };
    if let Some(rest) = s.strip_prefix("tcp://") {
        return match host_port(rest) {
            Some((host, Some(port))) => Ok(Endpoint::Tcp { host, port }),
            _ => Err(invalid(format!("invalid Docker endpoint {s:?}: tcp needs HOST:PORT"), hint)),
        };
    }
    if let Some(rest) = s.strip_prefix("ssh://") {
        let (user, hp) = match rest.split_once('@') {
            Some((u, hp)) if !u.is_empty() => (Some(u.to_string()), hp),
            Some(_) => return Err(invalid(format!("invalid Docker endpoint {s:?}: empty user"), hint)),
            None => (None, rest),
        };
        return match host_port(hp) {
            Some((host, port)) => Ok(Endpoint::Ssh { user, host, port }),
            None => Err(invalid(format!("invalid Docker endpoint {s:?}"), hint)),
        };
    }
    Err(invalid(format!("invalid Docker endpoint {s:?}: unknown scheme"), hint))
}

/// `HOST_PATH:CONTAINER_PATH[:ro|rw]`, or a named volume `NAME:CONTAINER_PATH[:ro|rw]`.
pub fn volume(s: &str) -> Result<(String, String, bool), Invalid> {
    let hint = "write HOST_PATH:CONTAINER_PATH[:ro|rw] with absolute paths, e.g. /var/log/api:/logs:ro";
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, true),
        [src, dst, "rw"] => (*src, *dst, false),
        _ => return Err(invalid(format!("invalid volume {s:?}"), hint)),
    };
    let named =
        !src.is_empty() && src.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !(src.starts_with('/') || named) || !dst.starts_with('/') {
        return Err(invalid(format!("invalid volume {s:?}: paths must be absolute"), hint));
    }
    Ok((src.to_string(), dst.to_string(), ro))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5", "s", "5x", "1s5", "-1s", "1..2s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(cpus(&json!(0.5)).unwrap(), 500_000_000);
        assert_eq!(cpus(&json!("250m")).unwrap(), 250_000_000);
        assert!(cpus(&json!(0)).is_err());
        assert!(cpus(&json!("lots")).is_err());
        assert_eq!(memory(&json!("256Mi")).unwrap(), 256 << 20);
        assert_eq!(memory(&json!("1G")).unwrap(), 1_000_000_000);
        assert!(memory(&json!("256MB")).is_err());
        assert!(memory(&json!("1k")).is_err());
        assert!(memory(&json!("Mi")).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(port_range("20000-20999").unwrap().len(), 1000);
        assert!(port_range("20999-20000").unwrap_err().message.contains("inverted"));
        assert!(port_range("1-100").is_err());
        assert!(port_range("60000-70000").is_err());
        assert!(port_range("20000-20009").unwrap().overlaps(&port_range("20009-20100").unwrap()));
    }

    #[test]
    fn images() {
        for ok in [
            "busybox:1",
            "reconcile-test/busybox:1",
            "localhost:5000/a/b:v1.2-rc_1",
            "registry.example/api:1.4.2",
            "api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nginx",
        ] {
            assert!(image(ok).is_ok(), "{ok}");
        }
        assert_eq!(image("localhost:5000/a").unwrap().tag, None);
        for bad in ["", "Api:1", "api:", "api:-x", "a//b:1", "api@sha256:xyz", "exa mple:1", "-a:1"] {
            assert!(image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_and_volumes() {
        assert_eq!(
            docker_endpoint("unix:///var/run/docker.sock").unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert!(matches!(docker_endpoint("tcp://10.0.0.1:2376").unwrap(), Endpoint::Tcp { port: 2376, .. }));
        assert!(matches!(docker_endpoint("ssh://deploy@node-1").unwrap(), Endpoint::Ssh { .. }));
        for bad in ["unix://relative.sock", "tcp://host", "http://x:1", "ssh://", "tcp://:22"] {
            assert!(docker_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(volume("/a:/b:ro").unwrap(), ("/a".into(), "/b".into(), true));
        assert!(volume("data:/var/lib/x").is_ok());
        assert!(volume("a:b").is_err());
        assert!(volume("/a:/b:rx").is_err());
    }
}
