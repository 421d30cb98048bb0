//! The pure core stays pure: no module of it may reach for I/O, the clock or a
//! backend crate. (ARCHITECTURE.md, "Boundary".)

#[test]
fn core_modules_do_no_io() {
    let forbidden = [
        "std::fs",
        "std::env",
        "std::process",
        "std::net::Tcp",
        "tokio",
        "bollard",
        "etcd_client",
        "git2",
        "SystemTime",
        "Instant::now",
    ];
    let root = super::root().join("src");
    let mut files =
        vec![root.join("placement.rs"), root.join("model.rs"), root.join("diag.rs"), root.join("secret.rs")];
    for dir in ["spec", "plan", "import"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            files.push(e.path());
        }
    }
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Test modules may use the filesystem (fixtures); only production code is checked.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for word in forbidden {
            if code.contains(word) {
                bad.push(format!("{}: {word}", f.display()));
            }
        }
    }
    assert!(files.len() > 10);
    assert!(bad.is_empty(), "the pure core does I/O: {bad:#?}");
}
