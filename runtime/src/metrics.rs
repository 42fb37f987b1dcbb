//! The one rendering of a Prometheus registry, and the `/metrics` answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use prometheus_client::{encoding::text::encode, registry::Registry};

use crate::http::{Body, text};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// The `200` answer to `GET /metrics` carrying `page` (from [`render`]).
pub fn response(page: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(page)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

/// A handler for [`crate::http::serve`] serving `GET /metrics` from `page`
/// and 404 for everything else: an endpoint with metrics alone.
pub fn metrics_only(
    page: fn() -> String,
) -> impl Fn(&Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static {
    move |request| {
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            response(page())
        } else {
            text(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn a_registry_renders_as_openmetrics_text() {
        let mut registry = Registry::with_prefix("coffer_test");
        let counter: Counter = Counter::default();
        registry.register("things", "Things counted", counter.clone());
        counter.inc_by(3);
        let page = render(&registry);
        assert!(page.contains("coffer_test_things_total 3\n"), "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
    }

    #[test]
    fn the_answer_carries_the_openmetrics_content_type() {
        let answer = response("# EOF\n".into());
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
    }
}
