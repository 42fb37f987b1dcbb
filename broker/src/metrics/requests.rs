//! The `rpc` label and the per-request series: a request costs two atomic
//! updates, and a caller cannot mint label values.

use std::{
    sync::{LazyLock, OnceLock},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::families::{METRICS, RpcLabel};

/// The `rpc` label of a request path: `Service/Method` when the method is
/// one this process implements (read from the compiled-in descriptors) and
/// the answer is not `UNIMPLEMENTED`, else `unknown`. A caller cannot mint
/// label values, whatever code its request is answered with.
pub fn rpc_label(path: &str, code: tonic::Code) -> String {
    rpc_name(rpc_index(path), code).to_string()
}

/// The methods the `rpc` label may name, as `Service/Method`: every method
/// of the broker's, health's and reflection's services. Built once.
static KNOWN_METHODS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    use prost::Message;
    let mut methods = Vec::new();
    for set in [
        coffer_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        // Compiled in: a set that does not parse is a build bug, and its
        // methods are then counted as `unknown`.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let name = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    // A fixed, small set, made once for the process's life.
                    methods.push(&*Box::leak(name.into_boxed_str()));
                }
            }
        }
    }
    methods
});

/// The index of `path`'s method in [`KNOWN_METHODS`], or one past the end
/// for `unknown`.
pub fn rpc_index(path: &str) -> usize {
    let name = path.strip_prefix('/').unwrap_or(path);
    let known = &*KNOWN_METHODS;
    known.iter().position(|m| *m == name).unwrap_or(known.len())
}

fn rpc_name(index: usize, code: tonic::Code) -> &'static str {
    match KNOWN_METHODS.get(index) {
        Some(name) if code != tonic::Code::Unimplemented => name,
        _ => "unknown",
    }
}

/// The request counter and histogram of one (method, code), resolved on
/// first use so that a request costs two atomic updates, not two label
/// lookups with an owned label.
struct RequestSeries {
    count: Counter,
    seconds: Histogram,
}

/// By method index (the last is `unknown`), then by code.
static REQUEST_SERIES: LazyLock<Box<[[OnceLock<RequestSeries>; 17]]>> = LazyLock::new(|| {
    (0..=KNOWN_METHODS.len())
        .map(|_| std::array::from_fn(|_| OnceLock::new()))
        .collect()
});

/// The Prometheus-style name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts one answered gRPC request and its time to the response headers.
pub fn request(path: &str, code: tonic::Code, elapsed: Duration) {
    request_at(rpc_index(path), code, elapsed);
}

/// [`request`] for a path already looked up with [`rpc_index`].
pub fn request_at(rpc: usize, code: tonic::Code, elapsed: Duration) {
    let name = rpc_name(rpc, code);
    let rpc = if name == "unknown" {
        KNOWN_METHODS.len()
    } else {
        rpc
    };
    let by_code = &REQUEST_SERIES[rpc.min(KNOWN_METHODS.len())];
    // `Code` is 0..=16; anything else would be counted as UNKNOWN.
    let slot = usize::try_from(code as i32)
        .ok()
        .filter(|&i| i < by_code.len())
        .unwrap_or(tonic::Code::Unknown as usize);
    let series = by_code[slot].get_or_init(|| {
        let label = RpcLabel {
            rpc: name.to_string(),
            code: code_name(code),
        };
        RequestSeries {
            count: METRICS.requests.get_or_create(&label).clone(),
            seconds: METRICS.request_seconds.get_or_create(&label).clone(),
        }
    });
    series.count.inc();
    series.seconds.observe(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimplemented_paths_share_one_label() {
        assert_eq!(
            rpc_label("/x.Y/Z123", tonic::Code::Unimplemented),
            "unknown"
        );
        // Whatever the code, a path the broker does not serve names no
        // series of its own.
        assert_eq!(
            rpc_label("/x.Y/Z123", tonic::Code::ResourceExhausted),
            "unknown"
        );
        for served in [
            "/coffer.v1.SecretOperator/PutSecret",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(rpc_label(served, tonic::Code::Ok), &served[1..]);
        }
        assert_eq!(
            rpc_label(
                "/coffer.v1.SecretBroker/GetSecret",
                tonic::Code::PermissionDenied
            ),
            "coffer.v1.SecretBroker/GetSecret"
        );
    }
}
