//! Prints the sidecar's figures: idle RSS of the release binary while it
//! watches, the time from the broker's answer to the files being written,
//! and the cost of one `..data` swap and of each format.
//!
//! ```text
//! cargo build -p coffer-broker          # any build of the broker will do
//! cargo bench -p coffer-sidecar
//! ```
//!
//! Goals: idle RSS <= 6 MiB; answer-to-file <= 1 ms.

// A benchmark that cannot set up should stop loudly, like a test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use coffer::{Client, SecretBytes, SecretData, TokenSource};
use coffer_sidecar::{
    render::{Format, RenderSpec, render},
    writer::{AtomicDir, FileContent, FileName, Payload},
};
use coffer_tests::{AUDIENCE, ISSUER, Key, POLICY, fixture, mint};
use zeroize::Zeroizing;

const ROTATIONS: u64 = 300;

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    println!("coffer-sidecar benchmark");
    let binary = sidecar_binary();
    if let Ok(meta) = std::fs::metadata(&binary) {
        println!(
            "  binary size            {:>8.2} MiB  ({})",
            meta.len() as f64 / 1048576.0,
            binary.display()
        );
    }
    writer_swap();
    formats();
    match broker_binary() {
        Some(broker) => runtime.block_on(end_to_end(&broker, &binary)),
        None => println!(
            "  (no coffer-broker binary: `cargo build -p coffer-broker` for the end-to-end figures)"
        ),
    }
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!(
        "median {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}

/// One update of three small files, alternating content so each is a swap.
fn writer_swap() {
    let dir = tempfile::Builder::new()
        .prefix("coffer-bench-")
        .tempdir_in("/dev/shm")
        .expect("a tmpfs directory");
    let mut out = AtomicDir::open(dir.path(), false).expect("tmpfs");
    let payload = |n: usize| -> Payload {
        ["a", "b", "c"]
            .iter()
            .map(|name| {
                (
                    FileName::try_from(name.to_string()).expect("a valid name"),
                    FileContent {
                        bytes: Zeroizing::new(
                            format!("{name}-{n}-{}", "x".repeat(64)).into_bytes(),
                        ),
                        mode: 0o400,
                        uid: None,
                        gid: None,
                    },
                )
            })
            .collect()
    };
    let mut swaps = Vec::new();
    let mut unchanged = Vec::new();
    for n in 0..1000 {
        let p = payload(n);
        let start = Instant::now();
        out.write(&p).expect("write");
        swaps.push(start.elapsed());
        let start = Instant::now();
        out.write(&p).expect("write");
        unchanged.push(start.elapsed());
    }
    println!("  ..data swap, 3 files   {}", percentiles(swaps));
    println!("  unchanged check        {}", percentiles(unchanged));
}

fn formats() {
    let data = SecretData::Map(
        (0..10)
            .map(|i| {
                (
                    format!("KEY_{i}"),
                    SecretBytes::from(format!("value \"{i}\"\nwith é and = : #").as_bytes()),
                )
            })
            .collect(),
    );
    for (name, format) in [
        ("json", Format::Json),
        ("dotenv", Format::Dotenv),
        ("properties", Format::Properties),
        ("yaml", Format::Yaml),
        ("template", Format::Template),
    ] {
        let mut spec = RenderSpec::new(format);
        spec.template =
            Some("{% for k, v in secret|dictsort %}{{ k }}={{ v }}\n{% endfor %}".into());
        let start = Instant::now();
        let runs = 2000;
        for _ in 0..runs {
            std::hint::black_box(render(&data, &spec).expect("render"));
        }
        println!(
            "  render {name:<11}     {:>7.1} µs per 10-key secret",
            start.elapsed().as_secs_f64() * 1e6 / runs as f64
        );
    }
}

/// The size-optimised build (`cargo build --profile sidecar -p coffer-sidecar`),
/// which is what pods run, when it exists; otherwise the bench build.
fn sidecar_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_coffer-sidecar"));
    let small = bench
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("sidecar").join("coffer-sidecar"));
    match small {
        Some(small) if small.is_file() => small,
        _ => {
            println!(
                "  (measuring the bench build; `cargo build --profile sidecar -p coffer-sidecar` for the deployed one)"
            );
            bench
        }
    }
}

fn broker_binary() -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_BIN_EXE_coffer-sidecar"))
        .parent()?
        .parent()?
        .to_path_buf();
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("coffer-broker"))
        .find(|p| p.is_file())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn vm_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn end_to_end(broker_bin: &Path, sidecar_bin: &Path) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let addr_file = dir.path().join("addr");
    let _broker = Killed(
        Command::new(broker_bin)
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--jwks")
            .arg(fixture("jwks-a.json"))
            .args(["--issuer", ISSUER, "--audience", AUDIENCE])
            .arg("--policy")
            .arg(&policy)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("the broker starts"),
    );
    wait_for("the broker", || addr_file.exists());
    let endpoint = format!(
        "http://{}",
        std::fs::read_to_string(&addr_file).expect("address")
    );
    let admin = Client::builder(endpoint.clone())
        .token(TokenSource::from_static(mint(Key::Rsa, "ops", "admin")))
        .connect()
        .await
        .expect("admin client");
    let put = |n: u64| {
        SecretData::Map(
            [("user", "app".to_string()), ("password", format!("pw-{n}"))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::from(v.as_bytes())))
                .collect(),
        )
    };
    admin
        .put(coffer::operator::Put::new("shop/db", put(0)).content_type("text/plain"))
        .await
        .expect("put");

    let out = tempfile::Builder::new()
        .prefix("coffer-bench-")
        .tempdir_in("/dev/shm")
        .expect("tmpfs");
    let token = dir.path().join("token");
    std::fs::write(&token, mint(Key::Ec, "shop", "web")).expect("token");
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "broker: {endpoint}\ntokenFile: {}\noutputDir: {}\nsecrets:\n  - {{path: shop/db#password, file: password}}\n  - {{path: shop/db, file: db.env, format: dotenv}}\n  - {{path: shop/db, file: db.json, format: json}}\n",
            token.display(),
            out.path().display()
        ),
    )
    .expect("config");
    let log = dir.path().join("sidecar.log");
    let sidecar = Killed(
        Command::new(sidecar_bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("the sidecar starts"),
    );
    let pid = sidecar.0.id();
    wait_for("the first files", || out.path().join("db.json").exists());

    // Idle: connected, watching, nothing changing.
    std::thread::sleep(Duration::from_secs(2));
    let rss = vm_field(pid, "VmRSS:").unwrap_or(0);
    println!(
        "  idle RSS (watching)    {:>8.2} MiB   goal <= 6 MiB; Vault Agent 13-20 MiB",
        rss as f64 / 1024.0
    );

    let mut visible = Vec::new();
    for n in 1..=ROTATIONS {
        let start = Instant::now();
        admin
            .put(coffer::operator::Put::new("shop/db", put(n)).content_type("text/plain"))
            .await
            .expect("put");
        let want = format!("pw-{n}");
        let password = out.path().join("password");
        loop {
            if std::fs::read_to_string(&password).is_ok_and(|s| s == want) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        visible.push(start.elapsed());
    }
    let rss_after = vm_field(pid, "VmRSS:").unwrap_or(0);
    let hwm = vm_field(pid, "VmHWM:").unwrap_or(0);
    drop(sidecar);

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let applied: Vec<Duration> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("apply_us=")? + "apply_us=".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .map(Duration::from_micros)
        .skip(1) // the first write happens at start-up, before the broker is warm
        .collect();
    println!(
        "  answer -> files written {}   goal <= 1 ms",
        percentiles(applied)
    );
    println!(
        "  put -> file visible     {}   (includes the broker's write and push)",
        percentiles(visible)
    );
    println!(
        "  RSS after {ROTATIONS} rotations {:>6.2} MiB  (peak {:.2} MiB)",
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
