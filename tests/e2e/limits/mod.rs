//! Limits: per identity, per connection, per pod, the peer deadline, many watchers.

mod list_secrets;
mod peer_deadline;
mod peer_issuer;
mod per_identity;
mod scale_watchers;
mod watch_per_pod;
