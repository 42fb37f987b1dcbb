//! The three loads, each measuring the broker and the bare server alike
//! and returning its rows of the table.

pub(crate) mod cold;
pub(crate) mod get;
pub(crate) mod watch;
