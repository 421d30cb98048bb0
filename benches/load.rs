#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark may panic on setup errors

//! Load + validate a generated config repo: 500 apps in 3 environments
//! (staging; production extends staging and overrides a fifth of the apps;
//! production-dr extends production onto other hosts). Every app has env
//! templates, a health check, resources and placement; a tenth are LB-backed
//! with a rendered file. Target (README): under 200 ms on the 2-core machine.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use reconcile::spec::{self, RepoSnapshot};

const APPS: usize = 500;

fn repo() -> RepoSnapshot {
    let mut files = BTreeMap::new();
    let mut put = |p: String, s: String| {
        files.insert(p, s.into_bytes());
    };
    let hosts = |prefix: &str, n: usize, net: u8| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "  - name: {prefix}-{i}\n    docker: ssh://deploy@10.{net}.0.{}\n    address: 10.{net}.0.{}\n    labels: {{zone: z{}}}\n    ports: 20000-29999\n",
                    i + 10,
                    i + 10,
                    i % 3
                )
            })
            .collect()
    };
    put(
        "environments/staging/environment.yaml".into(),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: staging\nvars:\n  log_level: info\n  region: eu\nsecrets:\n  db: {{from_env: DB}}\nhosts:\n{}etcd: {{endpoints: [http://127.0.0.1:2379]}}\nlb:\n  template: templates/lb.j2\n  path: /etc/nginx/conf.d/r.conf\n  reload: [nginx, -s, reload]\n",
            hosts("stg", 20, 20)
        ),
    );
    put(
        "environments/production/environment.yaml".into(),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: production\nextends: staging\nvars:\n  log_level: warn\nhosts:\n{}",
            hosts("prod", 40, 10)
        ),
    );
    put(
        "environments/production-dr/environment.yaml".into(),
        format!(
            "apiVersion: reconcile/v1\nkind: Environment\nname: production-dr\nextends: production\nhosts:\n{}",
            hosts("dr", 40, 30)
        ),
    );
    put(
        "environments/staging/templates/lb.j2".into(),
        "{% for app in apps %}upstream {{ app.name }} {\n{% for i in app.instances %}  server {{ i.address }}:{{ i.port }};\n{% endfor %}}\n{% endfor %}".into(),
    );
    put(
        "environments/staging/templates/app.conf.j2".into(),
        "name={{ app.name }}\nenv={{ env.name }}\nport={{ instance.port }}\nlevel={{ vars.log_level }}\n".into(),
    );
    for i in 0..APPS {
        let deps = if i > 0 && i % 7 == 0 { format!("depends_on: [app-{}]\n", i - 1) } else { String::new() };
        let lb = if i % 10 == 0 {
            format!(
                "lb: {{host: app-{i}.internal}}\nfiles:\n  - template: templates/app.conf.j2\n    path: /etc/app.conf\n"
            )
        } else {
            String::new()
        };
        put(
            format!("environments/staging/apps/app-{i}.yaml"),
            format!(
                "apiVersion: reconcile/v1\nkind: App\nname: app-{i}\nimage: registry.example/team/app-{i}:1.{i}.0\ncommand: [/app, --region, \"{{{{ vars.region }}}}\"]\nenv:\n  LOG_LEVEL: \"{{{{ vars.log_level }}}}\"\n  DB_PASSWORD: \"{{{{ secrets.db }}}}\"\n  INSTANCE: \"{{{{ instance.name }}}}\"\nreplicas: {}\nplacement: {{labels: {{zone: z{}}}}}\nport: 8080\nhealth: {{http: /healthz, interval: 1s, timeout: 2s}}\nresources: {{cpus: 0.5, memory: 256Mi}}\nregistry: true\n{deps}{lb}",
                1 + i % 3,
                i % 3
            ),
        );
        if i % 5 == 0 {
            put(
                format!("environments/production/apps/app-{i}.yaml"),
                format!(
                    "apiVersion: reconcile/v1\nkind: App\nname: app-{i}\nimage: registry.example/team/app-{i}:2.0.0\nreplicas: 4\nresources: {{memory: 512Mi}}\n"
                ),
            );
        }
    }
    RepoSnapshot { files, origin: Default::default() }
}

fn bench(c: &mut Criterion) {
    let snap = repo();
    let (loaded, diags) = spec::validate(&snap, None).expect("validate");
    assert_eq!(loaded.envs.len(), 3);
    assert!(diags.iter().all(|d| !d.is_error()), "generated repo must be valid: {:?}", &diags[..diags.len().min(3)]);
    assert!(loaded.envs.values().all(|e| e.apps.len() == APPS));
    let mut g = c.benchmark_group("load");
    g.sample_size(20);
    g.bench_function("load+validate 500 apps x 3 envs", |b| b.iter(|| spec::validate(&snap, None).expect("validate")));
    g.bench_function("load only 500 apps x 3 envs", |b| b.iter(|| spec::load(&snap)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
