//! Phase 7: the fingerprint of the observation a plan was made against (a saved
//! plan is refused when the world moved since).

use sha2::{Digest, Sha256};

use super::instance::hex;
use crate::model::{ContainerState, ObservedState};

/// A stable digest of what was observed (ids, states, hashes, ports, etcd values,
/// the LB file), ignoring what changes by itself (status text, uptime).
pub fn fingerprint(o: &ObservedState) -> String {
    let mut h = Sha256::new();
    h.update(o.env.as_bytes());
    // Each host's rows, sorted as text, are written into one reused buffer and sorted as
    // byte ranges of it: the digest of `format!`ed, sorted `String`s without a heap
    // string per container (the same bytes, so fingerprints of saved plans still match).
    let mut buf: Vec<u8> = Vec::new();
    let mut rows: Vec<(usize, usize)> = Vec::new();
    for (host, obs) in &o.hosts {
        h.update(b"\0host\0");
        h.update(host.as_bytes());
        buf.clear();
        rows.clear();
        for i in &obs.instances {
            let start = buf.len();
            row(&mut buf, i);
            rows.push((start, buf.len()));
        }
        rows.sort_unstable_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
        for &(start, end) in &rows {
            h.update(&buf[start..end]);
            h.update(b"\n");
        }
    }
    if let Some(e) = &o.etcd {
        h.update(b"\0etcd\0");
        for (k, v) in &e.keys {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
    }
    for (name, lb) in &o.lbs {
        // The default LB hashes as the single LB always did (saved plans stay valid).
        let tag = if name == crate::spec::types::DEFAULT_LB { String::new() } else { format!(":{name}") };
        match lb {
            Some(c) => {
                h.update(format!("\0lb{tag}\0").as_bytes());
                h.update(c.as_bytes());
            }
            None => h.update(format!("\0lb{tag}-missing\0").as_bytes()),
        }
    }
    hex(&h.finalize())
}

/// `id|app|instance|{state:?}|hash|{port:?}`, written byte by byte (no formatter per
/// container): `Running`, `Some(20000)`, `None` as `Debug` writes them.
fn row(buf: &mut Vec<u8>, i: &crate::model::ObservedInstance) {
    for field in [&i.container_id, &i.app, &i.instance] {
        buf.extend_from_slice(field.as_bytes());
        buf.push(b'|');
    }
    buf.extend_from_slice(state_name(i.state).as_bytes());
    buf.push(b'|');
    buf.extend_from_slice(i.spec_hash.as_bytes());
    buf.push(b'|');
    match i.port {
        None => buf.extend_from_slice(b"None"),
        Some(p) => {
            buf.extend_from_slice(b"Some(");
            let digits = p.checked_ilog10().unwrap_or(0) + 1;
            for d in (0..digits).rev() {
                // A digit: below 10, so the cast is exact.
                buf.push(b'0' + (p / 10u16.pow(d) % 10) as u8);
            }
            buf.push(b')');
        }
    }
}

/// The variant's name, as `Debug` writes it.
fn state_name(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "Created",
        ContainerState::Running => "Running",
        ContainerState::Paused => "Paused",
        ContainerState::Restarting => "Restarting",
        ContainerState::Removing => "Removing",
        ContainerState::Exited => "Exited",
        ContainerState::Dead => "Dead",
        ContainerState::Unknown => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerState, EtcdObservation, HostObservation, ObservedInstance};

    fn observed() -> ObservedState {
        let c = ObservedInstance {
            container_id: "c1".into(),
            name: "t-api-0-x".into(),
            host: "h1".into(),
            app: "api".into(),
            instance: "api-0".into(),
            ordinal: Some(0),
            spec_hash: "h".into(),
            commit: String::new(),
            image: "img".into(),
            state: ContainerState::Running,
            status: "Up 2 seconds".into(),
            created: 1,
            port: Some(20000),
            spec: None,
            image_id: String::new(),
            repo_digests: vec![],
        };
        ObservedState {
            env: "t".into(),
            hosts: [("h1".to_string(), HostObservation { instances: vec![c] })].into(),
            etcd: Some(EtcdObservation { keys: [("/k".to_string(), "v".to_string())].into() }),
            lbs: [("default".to_string(), Some("lb".to_string()))].into(),
        }
    }

    /// The fingerprint as first written (a `String` per row, sorted): saved plans carry
    /// it, so the buffered form must give the same digest.
    fn reference(o: &ObservedState) -> String {
        let mut h = Sha256::new();
        h.update(o.env.as_bytes());
        for (host, obs) in &o.hosts {
            h.update(b"\0host\0");
            h.update(host.as_bytes());
            let mut rows: Vec<String> = obs
                .instances
                .iter()
                .map(|i| {
                    format!("{}|{}|{}|{:?}|{}|{:?}", i.container_id, i.app, i.instance, i.state, i.spec_hash, i.port)
                })
                .collect();
            rows.sort();
            for r in rows {
                h.update(r.as_bytes());
                h.update(b"\n");
            }
        }
        if let Some(e) = &o.etcd {
            h.update(b"\0etcd\0");
            for (k, v) in &e.keys {
                h.update(k.as_bytes());
                h.update(b"=");
                h.update(v.as_bytes());
                h.update(b"\n");
            }
        }
        match o.lbs.get(crate::spec::types::DEFAULT_LB) {
            Some(Some(c)) => {
                h.update(b"\0lb\0");
                h.update(c.as_bytes());
            }
            Some(None) => h.update(b"\0lb-missing\0"),
            None => {}
        }
        hex(&h.finalize())
    }

    proptest::proptest! {
        /// Ids that are prefixes of each other, or contain the separator, sort the same.
        #[test]
        fn equals_the_row_string_reference(
            rows in proptest::collection::vec(("[ab|]{0,3}", 0u8..3, "[ab]{0,2}", 0u8..3, proptest::option::of(0u16..3)), 0..12),
            lb in proptest::option::of(proptest::option::of("[ab]{0,2}")),
        ) {
            let mut o = observed();
            o.lbs = lb.map(|c| (crate::spec::types::DEFAULT_LB.to_string(), c)).into_iter().collect();
            let states = [ContainerState::Running, ContainerState::Exited, ContainerState::Created];
            for (id, host, app, state, port) in rows {
                let mut c = o.hosts["h1"].instances[0].clone();
                c.container_id = id;
                c.app = app;
                c.state = states[usize::from(state)];
                c.port = port;
                o.hosts.entry(format!("h{host}")).or_default().instances.push(c);
            }
            proptest::prop_assert_eq!(fingerprint(&o), reference(&o));
        }
    }

    #[test]
    fn what_changes_by_itself_does_not_move_the_fingerprint() {
        let a = observed();
        let mut b = observed();
        b.hosts.get_mut("h1").unwrap().instances[0].status = "Up 3 hours".into();
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn states_hashes_etcd_values_and_the_lb_file_move_it() {
        let base = fingerprint(&observed());
        let mut o = observed();
        o.hosts.get_mut("h1").unwrap().instances[0].state = ContainerState::Exited;
        assert_ne!(fingerprint(&o), base);
        let mut o = observed();
        o.hosts.get_mut("h1").unwrap().instances[0].spec_hash = "other".into();
        assert_ne!(fingerprint(&o), base);
        let mut o = observed();
        o.etcd.as_mut().unwrap().keys.insert("/k".into(), "w".into());
        assert_ne!(fingerprint(&o), base);
        let mut o = observed();
        o.lbs.insert("default".into(), None);
        assert_ne!(fingerprint(&o), base);
        let mut o = observed();
        o.lbs.insert("edge".into(), Some("lb".into()));
        assert_ne!(fingerprint(&o), base, "another LB with the same content");
    }

    #[test]
    fn rows_are_the_bytes_the_formatter_wrote() {
        use std::io::Write as _;
        let states = [
            ContainerState::Created,
            ContainerState::Running,
            ContainerState::Paused,
            ContainerState::Restarting,
            ContainerState::Removing,
            ContainerState::Exited,
            ContainerState::Dead,
            ContainerState::Unknown,
        ];
        let ports = [None, Some(0), Some(9), Some(10), Some(20000), Some(65535)];
        let o = observed();
        let mut i = o.hosts.values().flat_map(|h| h.instances.iter()).next().unwrap().clone();
        for (state, port) in states.iter().flat_map(|s| ports.iter().map(move |p| (*s, *p))) {
            (i.state, i.port) = (state, port);
            let mut want = Vec::new();
            write!(want, "{}|{}|{}|{:?}|{}|{:?}", i.container_id, i.app, i.instance, i.state, i.spec_hash, i.port)
                .unwrap();
            let mut got = Vec::new();
            row(&mut got, &i);
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
        }
    }
}
