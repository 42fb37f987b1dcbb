//! The policy most tests run under, written once: the workload `shop/web`
//! reads and watches `shop/*`; the operator `ops/admin` manages it.

/// The default test policy: `shop/web` reads `shop/*`; `ops/admin` manages `shop/*`.
pub const POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, rotate, rollback, list, status]
"#;
