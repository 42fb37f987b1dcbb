//! The calls broker replicas make to each other (`coffer-broker --peer`):
//! neither a workload's nor an operator's, so they sit behind the
//! non-default feature `replica`, which only the broker (and the tests of
//! its replicas) turn on.
//!
//! A broker refuses `NotifyChanged` from anyone it does not name as a peer
//! (`--peer-identity`), so calling these from elsewhere gains nothing.

use coffer_proto::v1;

use crate::{Client, Error};

/// Tells the replica `client` is connected to that `path` changed, so its
/// watchers get the new version now rather than at its next poll.
pub async fn notify_changed(client: &Client, path: &str) -> Result<(), Error> {
    let request = client.request(v1::NotifyChangedRequest {
        path: path.to_string(),
    })?;
    client
        .operator()
        .notify_changed(request)
        .await
        .map_err(Error::status)?;
    Ok(())
}

/// The rotation status of `path` on the one replica `client` is connected
/// to, without asking its peers; in the wire form, which the asking
/// replica merges with its own (capability `status`, retried as reads are).
pub async fn status_local(
    client: &Client,
    path: &str,
) -> Result<v1::RotationStatusResponse, Error> {
    client.rotation_status(path, true).await
}
