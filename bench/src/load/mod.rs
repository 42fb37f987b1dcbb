//! The loads, each measuring the broker and the bare server alike and
//! returning its rows of the table; `shipped` runs them against the
//! shipped binary.

pub(crate) mod cold;
pub(crate) mod get;
pub(crate) mod paths;
pub(crate) mod peers;
pub(crate) mod shipped;
pub(crate) mod sidecar;
pub(crate) mod watch;
