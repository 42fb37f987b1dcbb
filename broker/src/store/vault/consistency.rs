//! Read-your-writes on a cluster whose standbys answer reads.
//!
//! OpenBao 2.7 standbys serve reads from their own raft copy, which may lag
//! the active node by a few entries: right after a write a standby can
//! answer the previous version, or "not found" for the version just
//! written. Every OpenBao response carries the storage index it reflects
//! (`X-Vault-Index`); a request that sends back an index with
//! `X-Vault-Inconsistent: forward-active-node` is answered by the standby
//! only once it has applied that index, and forwarded to the active node
//! otherwise (OpenBao RFC "Support client-indicated minimum storage
//! indices"; Vault Enterprise performance standbys take the same headers).
//!
//! The store keeps the newest index any response showed it and sends it
//! with its KV reads and writes, so no read is answered from a state older
//! than one the broker has already seen. An index is opaque to the client:
//! OpenBao's is base64 JSON `{"cluster", "value"}` and the newest is kept by
//! its value; one that does not parse (another server's format) is kept
//! only from a write's answer, the point a read must not go back behind.
//! Servers without index headers ignore them.

use base64::Engine as _;
use http::HeaderValue;
use parking_lot::Mutex;
use rustify::{
    endpoint::{Endpoint, MiddleWare},
    errors::ClientError as RestClientError,
};
use vaultrs::{
    api::EndpointResult,
    client::{Client as _, VaultClient},
    error::ClientError,
};

/// The request and response header of a storage index.
const INDEX: &str = "X-Vault-Index";
/// What a standby behind the index does: forward to the active node.
const INCONSISTENT: &str = "X-Vault-Inconsistent";
const FORWARD: &str = "forward-active-node";

/// The newest storage index the store has seen.
#[derive(Default)]
pub(super) struct Consistency {
    newest: Mutex<Option<Index>>,
}

#[derive(Debug, Clone)]
struct Index {
    header: HeaderValue,
    /// OpenBao's parsed form; `None`: opaque.
    parsed: Option<(String, u64)>,
}

/// What OpenBao's index header holds, base64-encoded.
#[derive(serde::Deserialize)]
struct OpenBaoIndex {
    cluster: String,
    value: String,
}

impl Index {
    fn parse(header: &HeaderValue) -> Self {
        let parsed = header
            .to_str()
            .ok()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .and_then(|json| serde_json::from_slice::<OpenBaoIndex>(&json).ok())
            .and_then(|i| Some((i.cluster, i.value.parse().ok()?)));
        Self {
            header: header.clone(),
            parsed,
        }
    }
}

impl Consistency {
    /// Takes the index of a response: kept if it is newer than the one
    /// held (or, opaque, if it answered a write).
    pub(super) fn observe(&self, headers: &http::HeaderMap, write: bool) {
        let Some(header) = headers.get(INDEX) else {
            return;
        };
        let seen = Index::parse(header);
        let mut newest = self.newest.lock();
        let keep = match (&*newest, &seen.parsed) {
            (None, _) => true,
            (
                Some(Index {
                    parsed: Some((c0, v0)),
                    ..
                }),
                Some((c1, v1)),
            ) => c0 != c1 || v1 > v0,
            (_, _) => write,
        };
        if keep {
            *newest = Some(seen);
        }
    }

    /// The newest index seen, to send with a request.
    pub(super) fn newest(&self) -> Option<HeaderValue> {
        self.newest.lock().as_ref().map(|i| i.header.clone())
    }

    /// The numeric value of the newest index, if OpenBao's (for tests).
    #[cfg(test)]
    fn value(&self) -> Option<u64> {
        self.newest.lock().as_ref()?.parsed.as_ref().map(|p| p.1)
    }
}

/// vaultrs' own middleware (API version, token, namespace), plus the
/// index headers.
struct Indexed<'a> {
    inner: &'a vaultrs::api::EndpointMiddleware,
    index: Option<HeaderValue>,
}

impl MiddleWare for Indexed<'_> {
    fn request<E: Endpoint>(
        &self,
        endpoint: &E,
        req: &mut http::Request<Vec<u8>>,
    ) -> Result<(), RestClientError> {
        self.inner.request(endpoint, req)?;
        if let Some(index) = &self.index {
            let headers = req.headers_mut();
            headers.insert(INDEX, index.clone());
            headers.insert(INCONSISTENT, HeaderValue::from_static(FORWARD));
        }
        Ok(())
    }

    fn response<E: Endpoint>(
        &self,
        endpoint: &E,
        resp: &mut http::Response<Vec<u8>>,
    ) -> Result<(), RestClientError> {
        self.inner.response(endpoint, resp)
    }
}

/// Executes `endpoint` (a KV read, metadata read or write) as
/// `vaultrs::api::exec_with_result` does, sending the newest index and
/// keeping the one the answer shows.
pub(super) async fn exec<E: Endpoint>(
    client: &VaultClient,
    endpoint: E,
    consistency: &Consistency,
    write: bool,
) -> Result<E::Response, ClientError> {
    let middleware = Indexed {
        inner: client.middle(),
        index: consistency.newest(),
    };
    let result = endpoint
        .with_middleware(&middleware)
        .exec(client.http())
        .await
        .map_err(api_error)?;
    consistency.observe(result.response.headers(), write);
    result
        .wrap::<EndpointResult<_>>()
        .map_err(ClientError::from)?
        .data
        .ok_or(ClientError::ResponseDataEmptyError)
}

/// A server's error answer as vaultrs reports it: its status and the
/// `errors` it listed.
fn api_error(error: RestClientError) -> ClientError {
    if let RestClientError::ServerResponseError {
        code,
        content: Some(content),
    } = &error
        && let Ok(body) = serde_json::from_str::<ErrorBody>(content)
    {
        return ClientError::APIError {
            code: *code,
            errors: body.errors,
        };
    }
    ClientError::from(error)
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openbao(cluster: &str, value: u64) -> http::HeaderMap {
        let json = format!(r#"{{"cluster":"{cluster}","value":"{value}"}}"#);
        let text = base64::engine::general_purpose::STANDARD.encode(json);
        let mut headers = http::HeaderMap::new();
        headers.insert(INDEX, HeaderValue::from_str(&text).unwrap());
        headers
    }

    #[test]
    fn the_newest_index_is_kept_and_a_lagging_answer_does_not_lower_it() {
        let c = Consistency::default();
        assert!(c.newest().is_none());
        c.observe(&openbao("a", 40), true);
        c.observe(&openbao("a", 37), false);
        assert_eq!(c.value(), Some(40), "a standby's older index is ignored");
        c.observe(&openbao("a", 41), false);
        assert_eq!(c.value(), Some(41));
        c.observe(&http::HeaderMap::new(), false);
        assert_eq!(
            c.value(),
            Some(41),
            "an answer without an index changes nothing"
        );
        // Another cluster (restored, rebuilt): its index replaces ours.
        c.observe(&openbao("b", 3), false);
        assert_eq!(c.value(), Some(3));
    }

    #[test]
    fn an_opaque_index_is_kept_from_writes_only() {
        let c = Consistency::default();
        c.observe(&openbao("a", 40), true);
        let mut opaque = http::HeaderMap::new();
        opaque.insert(INDEX, HeaderValue::from_static("AAAA-opaque"));
        c.observe(&opaque, false);
        assert_eq!(c.value(), Some(40));
        c.observe(&opaque, true);
        assert_eq!(c.newest().unwrap(), "AAAA-opaque");
    }
}
