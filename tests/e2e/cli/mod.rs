//! `cofferctl` as a tool: `get` on a terminal, completions and manual pages, versions.

mod get_tty;
mod migrate;
mod tools;
mod versions;
