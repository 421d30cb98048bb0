//! The physical floor of a no-op `reconcile plan`: the same I/O with nothing else —
//! read every file of the config repo, one container list call per Docker host (all
//! hosts at once, filtered on the environment's label, as `observe` does) and one etcd
//! range over the prefix given (the benchmark keeps the environment's records and its
//! registry under one prefix). No parsing of the repo, no planning, no Docker API
//! version negotiation. `bench/noop-floor.sh` times it against `reconcile plan`.
//!
//! ```text
//! cargo run --release --example noop_floor -- REPO ENV ETCD_ENDPOINT|- ETCD_PREFIX DOCKER_SOCKET...
//! ```
//! Prints what it read (files, bytes, containers, etcd keys) so a run can be checked.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // a measurement of raw I/O (clippy.toml)

use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn read_tree(dir: &Path, files: &mut usize, bytes: &mut usize) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                read_tree(&entry.path(), files, bytes)?;
            }
        } else if kind.is_file() {
            *files += 1;
            *bytes += std::fs::read(entry.path())?.len();
        }
    }
    Ok(())
}

async fn list(socket: String, env: String) -> Result<usize, Error> {
    let path = socket.trim_start_matches("unix://");
    let docker = Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)?;
    let label = format!("reconcile.env={env}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    Ok(docker.list_containers(Some(options)).await?.len())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo, env, etcd, prefix, sockets @ ..] = args.as_slice() else {
        return Err("usage: noop_floor REPO ENV ETCD_ENDPOINT|- ETCD_PREFIX DOCKER_SOCKET...".into());
    };
    let (mut files, mut bytes) = (0, 0);
    read_tree(&Path::new(repo).join("environments"), &mut files, &mut bytes)?;
    let lists = futures::future::join_all(sockets.iter().map(|s| tokio::spawn(list(s.clone(), env.clone()))));
    let keys = async {
        if etcd == "-" {
            return Ok::<usize, Error>(0);
        }
        let mut c = etcd_client::Client::connect([etcd.as_str()], None).await?;
        let range = c.get(prefix.as_str(), Some(etcd_client::GetOptions::new().with_prefix())).await?;
        Ok(range.kvs().len())
    };
    let (lists, keys) = tokio::join!(lists, keys);
    let mut containers = 0;
    for l in lists {
        containers += l??;
    }
    println!("files={files} bytes={bytes} hosts={} containers={containers} etcd_keys={}", sockets.len(), keys?);
    Ok(())
}
