//! The pure planner at fleet scale: 10,000 instances over 500 hosts (1,000 apps ×
//! 10 replicas, templated env and a rendered file, registry and LB on a tenth), and
//! 100,000 instances over 5,000 hosts (10,000 apps, the same shape).
//! Measured: a no-op plan against the converged state, and a plan after one app's
//! env var changed. Targets (README): under 100 ms for 10k, under 1 s for 100k, on
//! the 2-core machine. `cargo bench --bench plan -- 100k` runs only the large fleet.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark may panic on setup errors

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use reconcile::model::{EtcdObservation, HostObservation, ObservedState};
use reconcile::plan::{self, Desired, simulate::simulate};
use reconcile::secret::Secret;
use reconcile::spec::{self, RepoSnapshot};

const REPLICAS: usize = 10;

fn repo(hosts_n: usize, apps: usize, marker: &str) -> RepoSnapshot {
    let mut files = BTreeMap::new();
    let mut hosts = String::new();
    for i in 0..hosts_n {
        hosts.push_str(&format!(
            "  - {{name: h{i:04}, docker: 'ssh://d@10.1.{}.{}', address: 10.1.{}.{}, labels: {{zone: z{}}}, ports: 20000-29999}}\n",
            i / 250,
            i % 250,
            i / 250,
            i % 250,
            i % 5
        ));
    }
    files.insert(
        "environments/big/environment.yaml".to_string(),
        format!("apiVersion: reconcile/v1\nkind: Environment\nname: big\nvars: {{level: info}}\nsecrets: {{pw: {{from_env: PW}}}}\nhosts:\n{hosts}etcd: {{endpoints: ['http://127.0.0.1:2379']}}\nlb: {{template: lb.j2, path: /tmp/lb.conf, reload: [nginx, -s, reload]}}\n").into_bytes(),
    );
    files.insert("environments/big/lb.j2".into(), b"{% for app in apps %}upstream {{ app.name }} {\n{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};\n{% endfor %}}\n{% endfor %}".to_vec());
    files.insert(
        "environments/big/f.j2".into(),
        b"app={{ app.name }}\ninstance={{ instance.name }}\nlevel={{ vars.level }}\n".to_vec(),
    );
    for a in 0..apps {
        let extra =
            if a % 10 == 0 { format!("lb: {{host: app{a}.internal}}\nregistry: true\n") } else { String::new() };
        let v = if a == 7 { marker } else { "v" };
        files.insert(
            format!("environments/big/apps/app{a}.yaml"),
            format!("apiVersion: reconcile/v1\nkind: App\nname: app{a}\nimage: r.example/app{a}:1.0.{a}\nreplicas: {REPLICAS}\nplacement: {{labels: {{zone: z{}}}}}\nport: 8080\nenv: {{LEVEL: '{{{{ vars.level }}}}', V: {v}, PW: '{{{{ secrets.pw }}}}'}}\nfiles: [{{template: f.j2, path: /etc/app.conf}}]\nconfig: {{k: v}}\n{extra}", a % 5).into_bytes(),
        );
    }
    RepoSnapshot { files, origin: Default::default() }
}

/// Benchmark a no-op plan and a one-app change on `apps` × 10 instances over `hosts` hosts.
fn fleet(c: &mut Criterion, hosts: usize, apps: usize, label: &str) {
    let secrets: BTreeMap<String, Secret> = [("pw".to_string(), Secret::new("s3cret".into()))].into();
    let base = repo(hosts, apps, "v");
    let loaded = spec::load(&base);
    assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
    let env = &loaded.envs["big"];
    let empty = ObservedState {
        env: "big".into(),
        hosts: env.spec.hosts.iter().map(|h| (h.name.clone(), HostObservation::default())).collect(),
        etcd: Some(EtcdObservation::default()),
        lb: Some(None),
    };
    let origin = Default::default();
    let files = Arc::new(base.files.clone());
    let d = Desired { env, files: Arc::clone(&files), origin: &origin, secrets: &secrets };
    let first = plan::plan(&d, &empty).unwrap();
    assert_eq!(first.summary.add, apps * REPLICAS);
    let converged = simulate(&first, &empty, "c");
    assert!(plan::plan(&d, &converged).unwrap().actions.is_empty(), "the converged state plans nothing");

    let changed = repo(hosts, apps, "changed");
    let loaded2 = spec::load(&changed);
    let env2 = &loaded2.envs["big"];
    let d2 = Desired { env: env2, files: Arc::new(changed.files.clone()), origin: &origin, secrets: &secrets };
    assert_eq!(plan::plan(&d2, &converged).unwrap().summary.replace, REPLICAS);

    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    g.bench_function(format!("no-op plan, {label}"), |b| b.iter(|| plan::plan(&d, &converged).unwrap()));
    g.bench_function(format!("one app changed, {label}"), |b| b.iter(|| plan::plan(&d2, &converged).unwrap()));
    g.finish();
}

fn bench(c: &mut Criterion) {
    fleet(c, 500, 1_000, "10k instances / 500 hosts");
    fleet(c, 5_000, 10_000, "100k instances / 5000 hosts");
}

criterion_group!(benches, bench);
criterion_main!(benches);
