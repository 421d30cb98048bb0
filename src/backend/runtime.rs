//! Per-container runtime facts that only `inspect` gives: restart count, start
//! time and health. Used by `status` only; `plan` never inspects (its one list
//! call per host carries everything it needs in labels).

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use futures::StreamExt as _;

use super::docker::{self, DockerError};
use crate::spec::model::HostSpec;

/// What `status` shows beyond the list call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub restart_count: i64,
    /// Seconds since the epoch of the last start.
    pub started_at: Option<i64>,
    /// Docker's health status, when the image or container defines a health check.
    pub health: Option<String>,
}

/// Inspect the given containers (by host), at most 8 at a time per host.
///
/// # Errors
/// A host cannot be reached. A container that vanished meanwhile is skipped.
pub async fn runtime_info(
    hosts: &[HostSpec],
    ids: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> Result<BTreeMap<String, RuntimeInfo>, DockerError> {
    let mut out = BTreeMap::new();
    for h in hosts {
        let Some(list) = ids.get(&h.name).filter(|l| !l.is_empty()) else { continue };
        let client = docker::connect(h, timeout).await?;
        let results: Vec<(String, Option<RuntimeInfo>)> = futures::stream::iter(list.iter().cloned())
            .map(|id| {
                let c = client.clone();
                async move {
                    let info = tokio::time::timeout(timeout, c.inspect_container(&id, None::<InspectContainerOptions>))
                        .await
                        .ok()
                        .and_then(Result::ok);
                    let info = info.map(|i| {
                        let state = i.state.unwrap_or_default();
                        RuntimeInfo {
                            restart_count: i.restart_count.unwrap_or(0),
                            started_at: state.started_at.as_deref().and_then(parse_rfc3339),
                            health: state.health.and_then(|h| h.status).map(|s| s.to_string()),
                        }
                    });
                    (id, info)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (id, info) in results {
            if let Some(i) = info {
                out.insert(id, i);
            }
        }
    }
    Ok(out)
}

/// `2026-11-25T12:00:00.123456789Z` → seconds since the epoch (UTC only, as Docker writes it).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let date = s.get(0..10)?;
    let time = s.get(11..19)?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1971 {
        return None; // Docker's zero time "0001-01-01T00:00:00Z": never started
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::parse_rfc3339("1970-01-02T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("2026-11-25T12:00:00.5Z"), Some(1_795_608_000));
        assert_eq!(super::parse_rfc3339("0001-01-01T00:00:00Z"), None);
    }
}
