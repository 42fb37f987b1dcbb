//! A Unix socket listener: real `psql` reaches PostgreSQL through
//! `host=<dir> port=5432`, which libpq opens as `<dir>/.s.PGSQL.5432`, the
//! name `listen` must have. The socket is made with the asked mode and
//! owner (a stale one of an earlier run replaced): its owner's uid
//! connects, another uid is refused by the kernel.

use std::{
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::Path,
};

use coffer_tests::{
    get_page,
    postgres::{ROOT_PASSWORD, run_as_owner},
};

use super::{assert_nowhere, pg_command, put_credential, setup, start_proxies};

const CANARY: &str = "canary-sock-pw-3b8e1d";

/// `select` through the socket in `dir`, run as `uid`/`gid` when given.
fn psql_socket(dir: &Path, as_user: Option<(u32, u32)>, sql: &str) -> Result<String, String> {
    let mut command = pg_command("psql");
    command
        .arg(format!(
            "host={} port=5432 user=app dbname=postgres",
            dir.display()
        ))
        .args(["-X", "-w", "-tAc", sql]);
    if let Some((uid, gid)) = as_user {
        command.uid(uid).gid(gid);
    }
    let out = command.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn psql_through_the_unix_socket_connects_as_its_owner_and_no_other_uid() {
    let s = setup("30s", "120s", "5s");
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        &format!("CREATE ROLE app_sock LOGIN PASSWORD '{CANARY}'"),
    )
    .unwrap();
    put_credential(&s.bao, "shop/pgsock", "app_sock", CANARY);
    let broker = s.broker();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join(".s.PGSQL.5432");
    // What a killed sidecar leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    // As root, the socket goes to the `postgres` user (standing for the
    // app's uid); otherwise it stays the test's own.
    let owner = run_as_owner();
    let owner_yaml = owner.map_or(String::new(), |(uid, gid)| {
        format!(", uid: {uid}, gid: {gid}")
    });
    let sidecar = start_proxies(
        &broker,
        &format!(
            "  - {{name: shop-sock, protocol: postgres, listen: {}, upstream: 127.0.0.1:{}, path: shop/pgsock, mode: \"0600\"{owner_yaml}}}\n",
            socket.display(),
            s.pg.port
        ),
    );

    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600);
    if let Some((uid, gid)) = owner {
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [".s.PGSQL.5432"],
        "the private bind directory is gone"
    );

    let user = psql_socket(dir.path(), owner, "select current_user").unwrap();
    assert_eq!(user, "app_sock");
    if owner.is_some() {
        // `nobody`: not the owner, not in the group, mode 0600.
        let error = psql_socket(dir.path(), Some((65534, 65534)), "select 1").unwrap_err();
        assert!(error.contains("Permission denied"), "{error}");
    }

    let metrics = get_page(&sidecar.admin_addr(), "/metrics");
    assert!(
        metrics.contains("coffer_sidecar_proxy_connections_total{proxy=\"shop-sock\"} 1"),
        "{metrics}"
    );
    assert_nowhere(
        CANARY,
        &[
            ("sidecar log", &sidecar.process.output()),
            ("broker log", &broker.process.output()),
            ("metrics", &metrics),
        ],
    );
}
