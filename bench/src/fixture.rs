//! The bench's fixed world, the same in both processes: the issuer and
//! audience of its tokens, the one secret path, the policy, and the RSA
//! fixture key the cold tokens are signed with.

pub(crate) const ISSUER: &str = "https://coffer-bench.local";
pub(crate) const AUDIENCE: &str = "coffer";
pub(crate) const PATH: &str = "bench/secret";
pub(crate) const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/rsa-a.pem");
pub(crate) const RSA_JWKS: &[u8] = include_bytes!("../../tests/fixtures/jwks-a.json");
pub(crate) const RSA_KID: &str = "rsa-a";
pub(crate) const POLICY: &str = r#"
rules:
  - name: bench-app-reads
    subjects: [{namespace: bench, serviceAccount: app}]
    paths: ["bench/*"]
    capabilities: [read, watch]
"#;
/// The name of the server runtime's threads, whose CPU time is the server's.
pub(crate) const SERVER_THREAD: &str = "bench-server";
pub(crate) const EC_PEM: &[u8] = include_bytes!("../../tests/fixtures/ec-a.pem");
/// The policy of the shipped broker: the bench workload reads, the bench
/// operator writes (the bench seeds and rotates the secret over gRPC).
pub(crate) const SHIPPED_POLICY: &str = r#"
rules:
  - name: bench-app-reads
    subjects: [{namespace: bench, serviceAccount: app}]
    paths: ["bench/*"]
    capabilities: [read, watch]
  - name: bench-operator-writes
    subjects: [{namespace: bench, serviceAccount: operator}]
    paths: ["bench/*"]
    capabilities: [write]
"#;
